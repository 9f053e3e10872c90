"""Where does a run's target come from? Step by step from a run folder (finished or stopped): the rollouts' mean
length and the forks' entropy (metrics.jsonl), and at each step the run's page recorded (view.jsonl) the share of
forks where no draft agrees with any teacher continuation (every S_km = 0, so p̂ is the prior's: uniform over the
drafts; with --vote-threshold such forks abstain and are not in the loss, so the recorded forks are fewer) and the share of teacher continuations that end at once (a vote to stop).

    python bench/fork_votes.py RUN_FOLDER > bench/results/fork-votes-NAME.md

Issue #32: on the real pair a student that learns not to stop writes to the token cap; this says whether the
target it learned from was the teacher's or a uniform one.
"""

import argparse
import json
import sys
from pathlib import Path


def records(path: Path):
    """The JSON lines of a log, skipping a last line a kill cut short."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (metrics.jsonl, view.jsonl)")
    args = parser.parse_args()
    run = Path(args.run)
    steps = {m["step"]: m for m in records(run / "metrics.jsonl") if "loss/total" in m}
    views = {v["step"]: v for v in records(run / "view.jsonl") if v.get("forks")}
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    print(f"Made by `python bench/fork_votes.py {' '.join(sys.argv[1:])}`: horizon {config.get('horizon')}, "
          f"similarity {config.get('similarity')}, vote threshold {config.get('vote_threshold')}, "
          f"{config.get('max_new_tokens')}-token cap, {len(steps)} steps logged.\n")
    print("| step | rollout length (mean tokens) | forks | H_t at forks | forks in the loss (recorded) | forks with "
          "every S = 0 | teacher continuations that end at once |")
    print("|---|---|---|---|---|---|---|")
    for step, m in sorted(steps.items()):
        view = views.get(step)
        silent = teacher_ends = kept = ""
        if view:
            kept = str(len(view["forks"]))
            forks = view["forks"]
            silent = f"{sum(all(s == 0 for row in f['S'] for s in row) for f in forks) / len(forks):.0%}"
            texts = [t for f in forks for t in f["teacher"]]
            teacher_ends = f"{sum(not t.strip() for t in texts) / max(len(texts), 1):.0%}"
        print(f"| {step} | {m.get('rollout/length', float('nan')):.1f} | {m.get('forks/count', 0):.0f} | "
              f"{m.get('forks/entropy', float('nan')):.2f} | {kept} | {silent} | {teacher_ends} |")


if __name__ == "__main__":
    main()
