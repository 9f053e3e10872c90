"""Every method on the toy world with the same budget: the paper's comparison, rerun with one command.

    python bench/compare.py            # 3 seeds, the full table (about 60 minutes on 2 CPU cores)
    python bench/compare.py --quick    # 1 seed, a few steps: checks that every row runs (minutes)

Each row trains the shipped toy student for the same number of steps with the same
batch of rollouts per step, learning rate and evaluation set, through omniopd.train().
"OmniOPD (API teacher)" reaches the same toy teacher as a black box over a real
OpenAI-compatible HTTP server on 127.0.0.1 (toyworld/serve.py), in chat mode.
Writes bench/results/toy.md (mean ± std accuracy over seeds, wall time, teacher
calls and tokens), toy.json (every number) and toy.png (accuracy against step).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import omniopd  # noqa: E402
from toyworld.serve import start_in_thread  # noqa: E402

# name, options that differ from omniopd.Config's defaults
ROWS = [
    ("student (untrained)", {"steps": 0}),
    ("SFT", {"method": "sft"}),
    ("OPD, sampled-token", {"method": "opd", "opd_kl": "sampled"}),
    ("OPD, full-vocabulary", {"method": "opd", "opd_kl": "full"}),
    ("GRPO", {"method": "grpo"}),
    ("OmniOPD", {}),
    ("OmniOPD (API teacher)", {"teacher": "openai:toy", "teacher_mode": "chat"}),
    ("ablation: random forks", {"fork_selection": "random"}),
    ("ablation: α = 0", {"dirichlet_alpha": 0.0}),
    ("ablation: β = 0", {"kl_beta": 0.0}),
    ("ablation: hard votes", {"votes": "hard"}),
    ("ablation: lexical similarity", {"similarity": "lexical"}),
]


def run_row(name, overrides, seed, args, server_url):
    """Train one (row, seed) in this process; returns its final accuracy, curve, time and teacher use."""
    out = Path(args.runs) / f"{name.replace(' ', '_').replace(',', '').replace('=', '')}-seed{seed}"
    options = {"steps": args.steps, "seed": seed, "eval_size": args.eval_size, "out": str(out),
               "eval_every": max(1, args.steps // args.points), "eval_teacher": False, **overrides}
    if options.get("teacher", "").startswith("openai:"):
        options["teacher_base_url"] = server_url
    cfg = omniopd.Config(**options).resolved()
    started = time.time()
    summary = omniopd.train(cfg)
    seconds = time.time() - started
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(0, summary["before"]["eval/accuracy"])] + [(m["step"], m["eval/accuracy"]) for m in metrics
                                                        if "eval/accuracy" in m and m["step"] > 0]
    last = [m for m in metrics if "teacher/calls" in m]
    return {"accuracy": summary["after"]["eval/accuracy"], "curve": curve, "seconds": seconds,
            "teacher_calls": last[-1]["teacher/calls"] if last else 0,
            "teacher_tokens": last[-1]["teacher/tokens"] if last else 0}


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(results, args, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    base = statistics.mean(r["accuracy"] for r in results["student (untrained)"])
    lines = [f"# Toy world: every method, the same budget ({args.steps} steps × {omniopd.Config.batch_size} "
             f"rollouts, learning rate {omniopd.Config().resolved().lr:g}, {len(args.seeds)} seed"
             f"{'s' * (len(args.seeds) > 1)}: {', '.join(map(str, args.seeds))})", "",
             f"Made by `python bench/compare.py{' --quick' if args.quick else ''}`. Greedy pass@1 on {args.eval_size} "
             "held-out toy problems; the teacher scores 100 %. Wall time is per run on 2 CPU cores.", "",
             "| method | accuracy (mean ± std) | vs untrained | wall time (s) | teacher calls | teacher tokens |",
             "|---|---|---|---|---|---|"]
    for name, _ in ROWS:
        runs = results[name]
        accuracy, spread = mean_std([r["accuracy"] for r in runs])
        seconds = statistics.mean(r["seconds"] for r in runs)
        calls = statistics.mean(r["teacher_calls"] for r in runs)
        tokens = statistics.mean(r["teacher_tokens"] for r in runs)
        lines.append(f"| {name} | {accuracy:.1%} ± {spread:.1%} | {accuracy - base:+.1%} | {seconds:.0f} | "
                     f"{calls:,.0f} | {tokens:,.0f} |")
    (folder / f"{args.name}.md").write_text("\n".join(lines) + f"\n\n![accuracy against step]({args.name}.png)\n")
    plot(results, folder / f"{args.name}.png")
    print("\n".join(lines))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, _ in ROWS[1:]:
        curves = [r["curve"] for r in results[name]]
        steps = [s for s, _ in curves[0]]
        mean = [statistics.mean(c[i][1] for c in curves) for i in range(len(steps))]
        axis.plot(steps, mean, marker="o", markersize=3, label=name,
                  linestyle="--" if name.startswith("ablation") else "-",
                  linewidth=2.5 if name.startswith("OmniOPD") else 1.2)
    axis.axhline(statistics.mean(r["accuracy"] for r in results["student (untrained)"]), color="gray",
                 linewidth=0.8, label="untrained student")
    axis.set_xlabel("step")
    axis.set_ylabel("held-out accuracy (greedy)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 steps, 32 problems: a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps for every method")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--points", type=int, default=4, help="evaluations along the curve")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="where run folders go")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="toy", help="file name of the results")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.eval_size, args.points = [0], 4, 32, 2
        if args.name == "toy":
            args.name = "toy-quick"
    server = start_in_thread("toy")
    server_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ.setdefault("OPENAI_API_KEY", "loopback-no-key-needed")
    results, started = {}, time.time()
    for name, overrides in ROWS:
        results[name] = []
        for seed in args.seeds:
            results[name].append(run_row(name, overrides, seed, args, server_url))
            print(f"{name:<30} seed {seed}: {results[name][-1]['accuracy']:.1%} "
                  f"({results[name][-1]['seconds']:.0f} s, {time.time() - started:.0f} s in all)", flush=True)
    server.shutdown()
    write_report(results, args, Path(args.results))


if __name__ == "__main__":
    main()
