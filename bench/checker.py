"""Checker throughput: sandboxed programs checked per second, by the number of workers.

    python bench/checker.py [--workers 1 2 4] [--repeats 3]   -> bench/results/checker.md

Checks the 164 canonical HumanEval solutions (all pass), the same with every return value wrapped (all
fail on an assert), and 200 problems of the offline code world, each `--repeats` times; reports the median
candidates per second and the speed-up over one worker measured in the same run.
"""

import argparse
import os
import platform
import re
import statistics
import time
from pathlib import Path

from omniopd_lib import codetask
from toyworld import code


def candidate_sets():
    human_eval = codetask.human_eval_rows("all")
    world = [codetask.code_row(r, r["task_id"]) for r in code.make_problems(200, "test", 0)]
    wrapped = [re.sub(r"\breturn (.+)$", r"return ('corrupted', \1)", r["answer"], flags=re.M) for r in human_eval]
    return {"HumanEval canonical (164, pass)": (human_eval, [r["answer"] for r in human_eval]),
            "HumanEval corrupted (164, fail)": (human_eval, wrapped),
            "code world canonical (200, pass)": (world, [r["answer"] for r in world])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "checker.md"))
    args = parser.parse_args()
    lines = [f"# Checker throughput ({os.cpu_count()} CPU cores, {platform.python_implementation()} "
             f"{platform.python_version()}, {'root: namespaces and a sandbox user' if os.geteuid() == 0 else 'not root'})",
             "", "`python bench/checker.py`: candidates checked per second (median of "
             f"{args.repeats}), and the speed-up over 1 worker in the same run.", "",
             "| candidates | " + " | ".join(f"{w} worker{'s' * (w > 1)}" for w in args.workers) + " |",
             "|---|" + "---|" * len(args.workers)]
    for name, (rows, answers) in candidate_sets().items():
        programs = [codetask.program_of(row, answer) for row, answer in zip(rows, answers)]
        tests = [row["tests"] for row in rows]
        rates = []
        for workers in args.workers:
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                verdicts = codetask.check_many(programs, tests, workers=workers)
                seconds.append(time.perf_counter() - started)
            passed = sum(v.passed for v in verdicts)
            rates.append(len(programs) / statistics.median(seconds))
            print(f"{name}, {workers} workers: {rates[-1]:.1f}/s ({passed}/{len(programs)} passed)", flush=True)
        lines.append(f"| {name} | " + " | ".join(f"{r:.1f}/s ({r / rates[0]:.2f}×)" for r in rates) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
