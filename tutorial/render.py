"""Run every tutorial page and write its Markdown twin: `python tutorial/render.py [page.py ...]`.

Pages are Python in jupytext's py:percent format: `# %% [markdown]` cells hold the
text (each line starts with "# "), `# %%` cells hold code. Rendering executes the
code cells in order, in one namespace, and writes PAGE.md beside PAGE.py with each
cell's code, what it printed, and the figures it saved (tutorial/figures/). A call
to `show(function)` prints that function's source from omniopd.py as it is now, so
the rendered page can never drift from the code. The tests run every page.
"""

import contextlib
import io
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CELL = re.compile(r"^# %%(.*)$", re.MULTILINE)


def cells(source: str):
    """(kind, text) for each cell: kind is 'markdown' or 'code'."""
    marks = list(CELL.finditer(source))
    for i, mark in enumerate(marks):
        body = source[mark.end():marks[i + 1].start() if i + 1 < len(marks) else len(source)].strip("\n")
        if "[markdown]" in mark.group(1):
            yield "markdown", "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
        elif body.strip():
            yield "code", body


def render(page: Path) -> Path:
    namespace = {"__name__": "__tutorial__", "__file__": str(page)}
    parts = [f"<!-- made by `python tutorial/render.py` from {page.name}; edit that file, not this one -->\n"]
    for kind, text in cells(page.read_text()):
        if kind == "markdown":
            parts.append(text + "\n")
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(text, str(page), "exec"), namespace)
        parts.append("```python\n" + text + "\n```\n")
        output = printed.getvalue().rstrip()
        # show() output arrives already fenced as python; everything else is plain output
        for block in re.split(r"(<<<source>>>.*?<<<end>>>)", output, flags=re.DOTALL):
            if block.startswith("<<<source>>>"):
                parts.append("```python\n" + block[len("<<<source>>>"):-len("<<<end>>>")].strip("\n") + "\n```\n")
            elif block.strip():
                parts.append("```text\n" + block.strip("\n") + "\n```\n")
    target = page.with_suffix(".md")
    target.write_text("\n".join(parts))
    return target


def main():
    pages = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("[0-9][0-9]_*.py"))
    for page in pages:
        print("rendered", render(page.resolve()).relative_to(HERE.parent))


if __name__ == "__main__":
    main()
