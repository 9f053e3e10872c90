"""The reference's shape (#23, #34): omniopd.py is the method and readable in one sitting, its second reading and
baselines one file each beside it; layers point one way (the method -> omniopd_lib -> toyworld; omniopd_tools and
scale/ may import all three, nothing imports them but tests, bench and tutorial); no sys.path edits; no name of the
package reached through `omniopd.`; every function the README's step map names is in the method's files; no
import cycle; no link in README.md or docs/ leaves the repository except to a public web page."""

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "omniopd_lib"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (import a.b -> a; from a.b import c -> a.b and a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


METHOD_FILES = (ROOT / "omniopd.py", ROOT / "omniopd_audit.py", ROOT / "omniopd_baselines.py")
# machinery that a step's docstring may name: step 5's backends (one class per similarity, tested by hand values)
MACHINERY_NAMING_A_STEP = {("similarity.py", "Similarity")}


def test_the_method_files_have_no_line_over_120_characters():
    """The old 700-line cap bought density, not clarity (issue #34): what is checked is that every line of the
    method's files reads on one screen, and that the method's steps live there (next test)."""
    for path in (*METHOD_FILES, ROOT / "tests" / "test_horizon.py"):
        lines = path.read_text().splitlines()
        assert not [i for i, line in enumerate(lines, 1) if len(line) > 120], path


def test_no_method_step_lives_in_the_package():
    """A function whose docstring defines one of the method's steps ("Step 2: ...", "Audit step 6: ...") is in the
    method's files, where a reader looks for it: the package holds machinery (models, data, teachers, fast paths)."""
    step = re.compile(r"^(Audit )?[Ss]teps? \d+:")
    in_package = {(path.name, n.name) for path in PACKAGE.glob("*.py") for n in ast.walk(ast.parse(path.read_text()))
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and step.match(ast.get_docstring(n) or "")}
    assert in_package <= MACHINERY_NAMING_A_STEP, in_package - MACHINERY_NAMING_A_STEP
    in_method = {n.name for path in METHOD_FILES for n in ast.parse(path.read_text()).body
                 if isinstance(n, ast.FunctionDef) and step.match(ast.get_docstring(n) or "")}
    assert {"select_forks", "smooth_entropy", "teacher_rollouts", "teacher_prefix_texts", "dirichlet_preference",
            "audit_anchors", "audit_target"} <= in_method


def test_the_second_reading_and_the_baselines_register_themselves_on_import():
    """One file per variant beside omniopd.py (as CleanRL's): importing omniopd registers both, and neither file is
    imported by the package."""
    import omniopd
    assert set(omniopd.OBJECTIVES) >= {"drafts", "audit"} and set(omniopd.METHODS) == {"opd", "sft", "grpo"}
    assert omniopd.OBJECTIVES["audit"].collect.__module__ == "omniopd_audit"
    assert {loss.__module__ for _, loss in omniopd.METHODS.values()} == {"omniopd_baselines"}


def function_sizes(path: Path) -> dict:
    return {n.name: n.end_lineno - n.lineno + 1 for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef)}


def test_setup_train_and_main_stay_short():
    sizes = function_sizes(ROOT / "omniopd.py")
    assert sizes["train"] <= 45 and sizes["main"] <= 10, sizes
    assert function_sizes(PACKAGE / "runs.py")["setup"] <= 25   # what a run loads, shared with scale/


def python_files(*folders):
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


PROJECT = ("omniopd", "omniopd_audit", "omniopd_baselines", "omniopd_lib", "omniopd_tools", "scale", "toyworld")


def project_imports(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(path)} & set(PROJECT)


def test_layers_point_one_way():
    """toyworld/ is the worlds' data and models and imports nothing of the project; omniopd_lib imports only toyworld;
    the method's files import omniopd_lib and each other; only omniopd_tools and scale/ (and tests, bench, tutorial)
    may import the tools."""
    for path in python_files("toyworld"):
        assert project_imports(path) <= {"toyworld"}, path
    for path in python_files("omniopd_lib"):
        assert project_imports(path) <= {"omniopd_lib", "toyworld"}, path
    for path in METHOD_FILES:
        assert project_imports(path) <= {"omniopd", "omniopd_audit", "omniopd_baselines", "omniopd_lib"}, path
    for path in python_files("scale"):
        assert "omniopd_audit" not in project_imports(path) and "omniopd_baselines" not in project_imports(path), path


def test_no_sys_path_edits_and_no_reach_through_omniopd():
    """pyproject.toml (installed by requirements.txt's `-e .`) makes every module importable, so no file edits
    sys.path; and nothing reaches a package name through `omniopd.` (omniopd.OmniOPDError, omniopd.setup): it
    imports it from where it lives."""
    names_in_package = {alias.asname or alias.name for node in ast.parse((ROOT / "omniopd.py").read_text()).body
                        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omniopd_lib")
                        for alias in node.names}
    for path in python_files("omniopd_lib", "omniopd_tools", "scale", "toyworld", "tests", "bench", "tutorial"):
        # run folders hold copies; this file quotes the rule it checks
        if "runs" in path.relative_to(ROOT).parts or path.name == "test_layout.py":
            continue
        text = path.read_text()
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r"\bsys\.path\.(insert|append)\(0?", line)
                    and "sandbox" not in text], path
        reached = {name for line in code for name in re.findall(r"(?<![\w.])omniopd\.(\w+)", line)} & names_in_package
        assert not reached, (path.name, reached)


def test_the_package_never_imports_omniopd_or_scale():
    for path in PACKAGE.glob("*.py"):
        modules = imported_modules(path)
        assert not {m for m in modules if m == "omniopd" or m.startswith(("omniopd.", "scale"))}, path.name


def test_the_package_has_no_import_cycle():
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        graph[name] = {m.split(".")[1] for m in imported_modules(path)
                       if m.startswith("omniopd_lib.") and (PACKAGE / f"{m.split('.')[1]}.py").exists()} - {name}
    seen, on_path = set(), []

    def visit(module):
        assert module not in on_path, " -> ".join(on_path + [module])
        if module in seen:
            return
        on_path.append(module)
        for other in graph[module]:
            visit(other)
        on_path.pop()
        seen.add(module)
    for module in graph:
        visit(module)
    assert graph["sandbox"] == set()   # its child runs it as a script, on the standard library alone


def test_every_function_in_the_readmes_step_map_is_in_the_method_files():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The method, step by step"):readme.index("## Results")]
    names = set(re.findall(r"`(\w+)`", table)) - {"omniopd_lib"}
    defined = {n.name for path in METHOD_FILES for n in ast.parse(path.read_text()).body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert names and names <= defined, names - defined


def test_links_stay_inside_the_repository_or_go_to_public_pages():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*/*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("https://", "http://")):
                assert not re.match(r"https?://(localhost|127\.|10\.|192\.168\.)", target), (page.name, target)
                continue
            path = target.split("#")[0]
            if path:
                assert (page.parent / path).resolve().is_relative_to(ROOT), (page.name, target)
                assert (page.parent / path).exists(), (page.name, target)
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024
