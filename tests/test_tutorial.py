"""Every tutorial page runs, and its worked examples' assertions hold against today's omniopd.py."""

import re
import runpy
import sys

import pytest

from pathlib import Path

from conftest import ROOT

TUTORIAL = ROOT / "tutorial"
PAGES = sorted(TUTORIAL.glob("[0-9][0-9]_*.py"))


def test_every_page_is_in_the_tutorials_table_and_every_row_has_its_page():
    """tutorial/README.md lists each page (steps 1-9, the baselines, the audit reading, the horizon) once."""
    import re
    listed = re.findall(r"^\| \[(\d\d_\w+)\.md\]", (TUTORIAL / "README.md").read_text(), flags=re.MULTILINE)
    assert listed == [p.stem for p in PAGES]
    assert all(p.with_suffix(".md").exists() for p in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs(page, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(TUTORIAL))
    monkeypatch.setattr("helpers.FIGURES", tmp_path)   # figures go to a scratch folder, not the repo
    runpy.run_path(str(page), run_name="__tutorial__")


def test_render_writes_markdown_with_the_real_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TUTORIAL))
    import render
    page = tmp_path / "07_chunk_loss.py"
    page.write_text((TUTORIAL / "07_chunk_loss.py").read_text())
    monkeypatch.setattr("helpers.FIGURES", tmp_path)
    text = render.render(page).read_text()
    assert "def chunk_loss(" in text and "```python" in text and "KL = 0.4458" in text
    assert sys.modules["omniopd"].chunk_loss.__doc__.splitlines()[0] in text


def shown_sources(page_md: Path) -> list[tuple[str, str]]:
    """(name, source) of every function or class a rendered page shows (a python block that is a definition)."""
    blocks = re.findall(r"```python\n(.*?)\n```", page_md.read_text(), flags=re.DOTALL)
    found = []
    for block in blocks:
        match = re.match(r"(?:@[^\n]*\n)*(?:def|class) (\w+)", block)
        if match:
            found.append((match.group(1), block))
    return found


def current_source(name: str) -> list[str]:
    """The source of every definition with this name in the project's modules today."""
    import importlib
    import inspect
    import pkgutil
    import omniopd_lib
    modules = ["omniopd", "omniopd_audit", "omniopd_baselines", *[f"omniopd_lib.{m.name}" for m in pkgutil.iter_modules(omniopd_lib.__path__)]]
    sources = []
    for module_name in modules:
        thing = getattr(importlib.import_module(module_name), name, None)
        if thing is not None and (inspect.isfunction(thing) or inspect.isclass(thing)):
            sources.append(inspect.getsource(thing).rstrip("\n"))
    return sources


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_function_a_committed_page_shows_is_its_source_today(page):
    """#34: render.py promises a page cannot drift; the tests ran the .py pages and never read the .md a reader
    opens. Every definition a committed page shows must equal that definition in the code today (re-render with
    `python tutorial/render.py tutorial/NN_page.py` after changing it)."""
    own_code = page.read_text() + (TUTORIAL / "helpers.py").read_text()   # a page's own definitions, or its helpers'
    stale = [name for name, shown in shown_sources(page.with_suffix(".md"))
             if shown.rstrip("\n") not in current_source(name) and shown not in own_code]
    assert not stale, f"{page.with_suffix('.md').name} shows an old {', '.join(stale)}: re-render it"
