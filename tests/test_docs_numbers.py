"""The docs' tables say what the committed results say (#33 item 20). A table in docs/results(/*).md or README.md that
copies rows of a results table (bench/results/*.md linked in the same section) must copy them exactly: every row
whose method names a row there, in every column the two tables share. A number a doc quotes by hand that no
committed file says is a number nobody can check."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of a text: (header cells, rows of cells)."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1]):
            header = cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def numbers(cell: str) -> list[float]:
    """The numbers a cell writes, whatever the layout ("3.4 ± 0.5 %" and "3.4% ± 0.5%" say the same; "−" is "-")."""
    return [float(n.replace(",", "")) for n in re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?",
                                                          cell.replace("−", "-"))]


def same(ours: str, theirs: str) -> bool:
    """The doc's cell says what the results' cell says: the same numbers, or the first of them ("46.2 %" of
    "46.2% ± 0.0%")."""
    mine, committed = numbers(ours), numbers(theirs)
    return mine == committed[:len(mine)]


def method(cell: str) -> str:
    """A row's name without the marks a results file adds (†: measured at an earlier commit; bold)."""
    return re.sub(r"[†*]", "", cell).strip()


def sections(text: str) -> list[str]:
    return re.split(r"\n(?=#{1,3} )", text)


def results_rows(names: set[str]) -> dict[str, list[tuple[list[str], list[str]]]]:
    """Each committed results file's rows by method name: (header, row)."""
    rows = {}
    for name in names:
        path = RESULTS / name
        if path.exists():
            for header, body in tables(path.read_text()):
                for row in body:
                    rows.setdefault(method(row[0]), []).append((header, row))
    return rows


def mismatches(doc: Path) -> tuple[list[str], int]:
    """The doc's table cells that differ from the results row they copy, and how many rows were compared."""
    wrong, compared = [], 0
    for section in sections(doc.read_text()):
        linked = set(re.findall(r"bench/results/([\w.-]+\.md)", section))
        linked |= {m for m in re.findall(r"\]\(\.\./bench/results/([\w.-]+\.md)\)", section)}
        linked |= {m for m in re.findall(r"\[([\w.-]+\.md)\]\(", section)}
        known = results_rows(linked)
        for header, body in tables(section):
            for row in body:
                candidates = known.get(method(row[0]), [])
                unique = [h for h in header[1:] if header.count(h) == 1]   # a repeated name is ambiguous
                shared = [[(h, v, their[theirs.index(h)]) for h, v in zip(header, row) if h in unique and h in theirs
                           and numbers(v)] for theirs, their in candidates]
                shared = [s for s in shared if s]
                if not shared:
                    continue
                compared += 1
                if not any(all(same(ours, theirs) for _, ours, theirs in s) for s in shared):
                    best = min(shared, key=lambda s: sum(not same(ours, theirs) for _, ours, theirs in s))
                    wrong += [f"{doc.name}: {row[0]!r} {h}: doc {ours!r}, results {theirs!r}"
                              for h, ours, theirs in best if not same(ours, theirs)]
    return wrong, compared


def test_every_copied_row_of_the_docs_equals_the_committed_results():
    everything, total = [], 0
    for doc in (ROOT / "docs" / "results.md", *sorted((ROOT / "docs" / "results").glob("*.md")), ROOT / "README.md"):
        wrong, compared = mismatches(doc)
        everything += wrong
        total += compared
    assert total >= 20, total   # the check reads the tables it is meant to
    assert not everything, "\n".join(everything)
