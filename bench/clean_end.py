"""Does a trained student still stop? For each run folder of a math world, its last evaluation's accuracy and the
share of its answers that end at a clean final line ("#### N" and nothing after it), the story worlds' layout
(issue #32: a student that learns not to stop writes on after its answer, "#### 8900 98900…").

    python bench/clean_end.py bench/runs/stories-foreign > bench/results/clean-end-stories-foreign.md

Reads each run's eval-step-*.jsonl (what evaluation wrote); skips the sweep's validation runs (seed 100).
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

CLEAN_END = re.compile(r"[^#]*\n#### -?\d+\s*")


def last_evaluation(run: Path):
    """(step, rows) of the run's last evaluation, or None when it has none yet."""
    files = sorted(run.glob("eval-step-*.jsonl"))
    if not files:
        return None
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return int(files[-1].stem.rsplit("-", 1)[1]), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="a folder of run folders (bench/compare.py's --runs/<world>)")
    args = parser.parse_args()
    by_row = {}
    for run in sorted(Path(args.runs).iterdir()):
        if not run.is_dir() or "-seed100-" in run.name:
            continue
        found = last_evaluation(run)
        if found is None or not found[1]:
            continue
        step, rows = found
        row, _, rate = run.name.rpartition("-lr")
        name = row.rsplit("-seed", 1)[0]
        by_row.setdefault((name, rate, step), []).append(
            (run.name.rsplit("-seed", 1)[1].split("-")[0], statistics.mean(r["correct"] for r in rows),
             statistics.mean(bool(CLEAN_END.fullmatch(r["output"])) for r in rows)))
    print(f"Made by `python bench/clean_end.py {' '.join(sys.argv[1:])}`.\n")
    print("| row | learning rate | evaluated at step | seeds | accuracy per seed | clean final line per seed |")
    print("|---|---|---|---|---|---|")
    for (name, rate, step), seeds in sorted(by_row.items()):
        print(f"| {name.replace('_', ' ')} | {rate} | {step} | {', '.join(s for s, _, _ in seeds)} | "
              f"{', '.join(f'{a:.1%}' for _, a, _ in seeds)} | {', '.join(f'{c:.1%}' for _, _, c in seeds)} |")


if __name__ == "__main__":
    main()
