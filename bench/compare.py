"""Every method on an offline world with the same budget and the same learning-rate sweep: the paper's
comparison, rerun with one command.

    python bench/compare.py --world stories   # 5 seeds after a sweep -> bench/results/stories.md (2 CPU cores: hours)
    python bench/compare.py --world toy       # the arithmetic world -> bench/results/toy.md
    python bench/compare.py --quick           # 1 seed, a few steps, no sweep: checks that every row runs (minutes)
    python bench/compare.py --world code --rows OmniOPD "OmniOPD, audit reading"   # some rows; the rest as stored
    python bench/compare.py --world stories-foreign   # the story world taught by a teacher of another dialect (#26)

1. The sweep. Every method (SFT, both OPDs, GRPO, OmniOPD) trains once at each learning rate of the same
   grid (`--lrs`; default ¼×, ½×, 1×, 2× and 4× the world's default) on a sweep seed that is not a reporting seed,
   and is scored on validation problems drawn from the training distribution, never on the test set.
   Each method keeps the rate that scored best there; where that is the grid's lowest (highest) rate, it is
   tried at half (twice) that rate too, up to `--sweep-extend` times, so a chosen rate is never the edge of
   what was tried. The OmniOPD variants (the API teacher and the
   ablations) change one part of OmniOPD and keep its rate.
2. The table. Every row trains the shipped student for the same steps and rollouts per step, at its own
   chosen rate, for each reporting seed, and is scored by greedy pass@1 on the held-out test problems.

`--rows` runs only the rows named (and the untrained student) and reads every other row, with its chosen rate,
from the <world>.json already in `--results` (none there: the other rows are left out); a named row whose rate is
stored keeps it, one without is swept.
The table marks which rows each run measured, with its seeds, test-set size and commit.

Runs go to `--runs`; each writes result.json, and a run whose result.json exists is not run again, so an
interrupted comparison continues where it stopped. `--jobs 2` runs two trainings at a time, each on one
thread (faster than one run on two threads for models this small). "OmniOPD (API teacher)" reaches the same
teacher as a black box over a real OpenAI-compatible HTTP server on 127.0.0.1 (omniopd_tools/serve.py), in chat
mode. Writes <world>.md (mean ± std and standard error over seeds, the binomial standard error of one
evaluation, wall time, teacher calls and tokens, the degenerate patterns of the final answers, the sweep),
<world>.json (every number) and <world>.png.

stories-foreign is the story world (its student, problems and grading) with a teacher that learned its solutions
in another dialect, with a tokenizer of its own (toyworld/stories.py, write_foreign_solution); the OPD rows, which
must read the teacher's logits, get the same teacher trained on the same text in the student's tokenizer.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import shlex
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import omniopd  # noqa: E402
import toyworld  # noqa: E402

# name, options that differ from omniopd.Config's defaults, and whose learning rate the row uses
ROWS = [
    ("student (untrained)", {"steps": 0}, None),
    ("SFT", {"method": "sft"}, "SFT"),
    ("OPD, sampled-token", {"method": "opd", "opd_kl": "sampled"}, "OPD, sampled-token"),
    ("OPD, full-vocabulary", {"method": "opd", "opd_kl": "full"}, "OPD, full-vocabulary"),
    ("GRPO", {"method": "grpo"}, "GRPO"),
    ("OmniOPD", {}, "OmniOPD"),
    ("OmniOPD, audit reading", {"objective": "audit"}, "OmniOPD, audit reading"),
    # issue #32: the teacher continues to the end of the solution (at most 96 of its tokens: the story world's
    # solutions take 80 at most in either dialect), each draft is carried on by the student to its end, and S is
    # the F1 of the numbers the two write (bench/results/census-*.md)
    ("OmniOPD, end horizon, numbers", {"horizon": "end", "similarity": "numbers", "teacher_max_tokens": 96},
     "OmniOPD, end horizon, numbers"),
    ("OmniOPD (API teacher)", {"teacher": "openai:WORLD", "teacher_mode": "chat"}, "OmniOPD"),
    ("ablation: random forks", {"fork_selection": "random"}, "OmniOPD"),
    ("ablation: α = 0", {"dirichlet_alpha": 0.0}, "OmniOPD"),
    ("ablation: β = 0", {"kl_beta": 0.0}, "OmniOPD"),
    ("ablation: hard votes", {"votes": "hard"}, "OmniOPD"),
    ("ablation: lexical similarity", {"similarity": "lexical"}, "OmniOPD"),
]
SWEPT = [name for name, _, lr_of in ROWS if lr_of == name]
# each world's budget; the story world evaluates on 600 problems, so that one evaluation's binomial standard
# error is at most 2 points
WORLDS = {"toy": {"steps": 60, "eval_size": 200}, "stories": {"steps": 60, "eval_size": 600},
          "code": {"steps": 60, "eval_size": 600}, "stories-foreign": {"steps": 60, "eval_size": 600}}
# token-level OPD reads the teacher's logits, so a world whose teacher has its own tokenizer gives OPD's rows the
# same teacher trained on the same text in the student's tokenizer
SHARED_TOKENIZER_TEACHER = {"stories-foreign": "stories-foreign-shared"}


def run_name(name, seed, lr):
    return f"{name.replace(' ', '_').replace(',', '').replace('=', '')}-seed{seed}-lr{lr:g}"


def run_one(job):
    """Train one (row, seed, learning rate) on the world, or read the result it already wrote."""
    name, overrides, seed, lr, eval_data, args = job
    world = toyworld.world_options(args.world)
    options = {**world, "eval_data": eval_data, "lr": lr, "eval_size": args.eval_size, **overrides}
    if options["teacher"] == "openai:WORLD":
        options.update(teacher=f"openai:{world['teacher']}", teacher_base_url=loopback_server(world["teacher"]))
    if options.get("method") == "opd":
        options["teacher"] = SHARED_TOKENIZER_TEACHER.get(args.world, options["teacher"])
    return run_row(name, options, seed, Path(args.runs) / args.world, args.steps, args.points)


def run_row(name, options, seed, runs: Path, steps, points) -> dict:
    """Train one row (omniopd.Config options) for `steps` with `seed` through omniopd.train(), evaluating `points`
    times along the way; its result.json in runs/<row-seed-lr>/, or the one a finished run already wrote there.
    bench/real_lm.py shares it."""
    out = runs / run_name(name, seed, options["lr"])
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if out.exists():   # a run cut off before its result: start it again from nothing
        import shutil
        shutil.rmtree(out)
    options = {"eval_teacher": False, "steps": steps, **options}   # a row may set its own steps (0: untrained)
    cfg = omniopd.Config(**{**options, "seed": seed, "out": str(out),
                            "eval_every": max(1, options["steps"] // points)}).resolved()
    started = time.time()
    summary = omniopd.train(cfg)
    seconds = time.time() - started
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(0, summary["before"]["eval/accuracy"])] + [(m["step"], m["eval/accuracy"]) for m in metrics
                                                        if "eval/accuracy" in m and m["step"] > 0]
    last = [m for m in metrics if "teacher/calls" in m]
    final = sorted(out.glob("eval-step-*.jsonl"))[-1]
    result = {"row": name, "seed": seed, "lr": options["lr"], "accuracy": summary["after"]["eval/accuracy"],
              "curve": curve, "seconds": seconds, "teacher_calls": last[-1]["teacher/calls"] if last else 0,
              "teacher_tokens": last[-1]["teacher/tokens"] if last else 0,
              "patterns": answer_patterns([json.loads(line)["output"] for line in final.read_text().splitlines()])}
    done.write_text(json.dumps(result))
    return result


def answer_patterns(texts: list[str], shortest: int = 4, longest: int = 24) -> dict:
    """The degenerate patterns the paper names, over a run's final greedy answers: the share caught in a repetition
    loop (a span of `shortest` to `longest` words written three times back to back, as "then we add 5 coins. then
    we add 5 coins. then we add 5 coins."; no correct solution of the story world, in either dialect, has one), the
    share that never reaches '####' (the task's answer line), and the mean length in words."""
    def loops(words):
        return any(words[i:i + k] == words[i + k:i + 2 * k] == words[i + 2 * k:i + 3 * k]
                   for i in range(len(words)) for k in range(shortest, min(longest, (len(words) - i) // 3) + 1))
    split = [text.lower().split() for text in texts]
    return {"loops": sum(loops(words) for words in split) / max(len(texts), 1),
            "no_answer_line": sum("####" not in text for text in texts) / max(len(texts), 1),
            "words": statistics.mean(len(words) for words in split) if texts else 0.0}


SERVER = {}


def loopback_server(world):
    """The world's teacher behind a real OpenAI-compatible server on 127.0.0.1, one per worker process."""
    if world not in SERVER:
        from omniopd_tools.serve import start_in_thread
        os.environ.setdefault("OPENAI_API_KEY", "loopback-no-key-needed")
        server = start_in_thread(world)
        SERVER[world] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return SERVER[world]


def one_thread():
    import torch
    torch.set_num_threads(1)


def run_all(jobs, args, started):
    """Every job, `--jobs` at a time; prints each result as it comes."""
    def report(result):
        print(f"{result['row']:<30} seed {result['seed']} lr {result['lr']:g}: {result['accuracy']:.1%} "
              f"({result['seconds']:.0f} s, {time.time() - started:.0f} s in all)", flush=True)
        return result
    if args.jobs == 1:
        return [report(run_one(job)) for job in jobs]
    context = multiprocessing.get_context("spawn")   # no fork after torch has started its threads
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=one_thread) as pool:
        futures = [pool.submit(run_one, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            report(future.result())
        return [future.result() for future in futures]


def validation_file(args) -> str:
    """Problems from the training distribution (not the test split) for choosing learning rates."""
    path = Path(args.runs) / args.world / "validation.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    toyworld.write_jsonl(toyworld.world_problems(args.world, args.valid_size, "train", seed=2000), path)
    return str(path)


def sweep(args, started, stored) -> tuple[dict, list]:
    """Each swept method's learning rate: the best validation accuracy over the same grid. A method whose best rate
    is the grid's lowest (highest) is tried at half (twice) that rate too, up to --sweep-extend times, so no
    chosen rate sits on the edge of what was tried unless the extension ran out. With --rows, a rate already
    stored is kept and only the named rows without one are swept."""
    if len(args.lrs) == 1:
        return {name: args.lrs[0] for name in SWEPT}, []
    chosen = dict(stored.get("chosen_lr", {}))
    to_sweep = [name for name in SWEPT if name in args.selected and name not in chosen]
    kept = [r for r in stored.get("sweep", []) if r["row"] not in to_sweep]
    if not to_sweep:
        return chosen, kept
    eval_data = validation_file(args)
    overrides_of = {name: overrides for name, overrides, _ in ROWS}
    jobs = [(name, overrides_of[name], args.sweep_seed, lr, eval_data, args) for name in to_sweep for lr in args.lrs]
    if not any(r["row"] == ROWS[0][0] for r in kept):
        jobs.append((ROWS[0][0], ROWS[0][1], args.sweep_seed, args.lrs[0], eval_data, args))   # the untrained student
    results = []
    for _ in range(args.sweep_extend + 1):
        results += run_all(jobs, args, started)
        jobs = []
        for name in to_sweep:
            scores = {r["lr"]: r["accuracy"] for r in results if r["row"] == name}
            chosen[name] = best_rate(scores)
            if chosen[name] == min(scores):
                jobs.append((name, overrides_of[name], args.sweep_seed, chosen[name] / 2, eval_data, args))
            elif chosen[name] == max(scores):
                jobs.append((name, overrides_of[name], args.sweep_seed, chosen[name] * 2, eval_data, args))
        if not jobs:
            break
    return chosen, kept + results


def best_rate(scores: dict) -> float:
    """The rate with the best validation accuracy; a tie goes to the rate nearest the middle of those tried."""
    rates = sorted(scores)
    return max(rates, key=lambda lr: (scores[lr], -abs(rates.index(lr) - len(rates) // 2)))


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def this_measurement(args) -> dict:
    """What one invocation measured with: its seeds, test-set size, date and commit."""
    import subprocess
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"seeds": args.seeds, "eval_size": args.eval_size, "date": time.strftime("%Y-%m-%d"),
            "commit": commit.stdout.strip() or "unknown"}


def stored_measurement(stored: dict, row: str, args) -> dict:
    """Where a stored row comes from: as recorded, or for a file written before rows were recorded, its own
    seeds and test-set size and the commit that last changed it."""
    if row in stored.get("measured", {}):
        return stored["measured"][row]
    import subprocess
    path = Path(args.results) / f"{args.name}.json"
    last = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", path.name], cwd=path.parent,
                          capture_output=True, text=True).stdout.split() or ["unknown", "unknown"]
    return {"seeds": stored["args"]["seeds"], "eval_size": stored["args"]["eval_size"], "date": last[1],
            "commit": last[0]}


def write_report(results, chosen, sweep_results, args, folder: Path, measured: dict):
    """<name>.json, <name>.md and <name>.png; measured: row -> the measurement it comes from."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.name}.json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if k != "selected"}, "chosen_lr": chosen,
         "sweep": sweep_results, "results": results, "measured": measured}, indent=1))
    base = statistics.mean(r["accuracy"] for r in results["student (untrained)"])
    # each distinct measurement gets a mark, the first (usually this run's) none
    kinds = list(dict.fromkeys(json.dumps(m, sort_keys=True) for name, m in measured.items() if results[name]))
    marks = {kind: "" if i == 0 else "†" * i for i, kind in enumerate(kinds)}
    first = json.loads(kinds[0])
    n = len(first["seeds"])
    lines = [f"# {args.world} world: every method, the same budget ({args.steps} steps × "
             f"{omniopd.Config.batch_size} rollouts, {n} seed{'s' * (n > 1)}: {', '.join(map(str, first['seeds']))})",
             "", f"Made by `python bench/compare.py {shlex.join(sys.argv[1:])}`. Greedy pass@1 "
             f"on {first['eval_size']} held-out test problems. ± is the standard deviation over seeds; s.e. is that "
             f"over √(seeds). One evaluation's own binomial standard error is at most "
             f"{0.5 / first['eval_size'] ** 0.5:.1%}. Wall time is per run on 2 CPU cores, "
             + (f"{args.jobs} runs at a time (one thread each)." if args.jobs > 1 else "one run at a time.")
             + f" Unmarked rows: commit {first['commit']}, {first['date']}. Loops, no ####, words: over the final "
             "greedy answers, the share caught in a loop (a span of 4-24 words three times back to back), the share "
             "without the '####' answer line, and the mean length in words (— for rows measured before these were "
             "kept)."]
    for kind in kinds[1:]:
        other = json.loads(kind)
        lines[-1] += (f" {marks[kind]}: measured earlier (commit {other['commit']}, {other['date']}) with seeds "
                      f"{', '.join(map(str, other['seeds']))} on {other['eval_size']} test problems.")
    lines += ["", "| method | learning rate | seeds | accuracy (mean ± std) | s.e. | vs untrained | wall time (s) | "
              "teacher calls | teacher tokens | loops | no #### | words |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, _, lr_of in ROWS:
        runs = results[name]
        if not runs:   # --no-ablations
            continue
        accuracy, spread = mean_std([r["accuracy"] for r in runs])
        seconds = statistics.mean(r["seconds"] for r in runs)
        calls = statistics.mean(r["teacher_calls"] for r in runs)
        tokens = statistics.mean(r["teacher_tokens"] for r in runs)
        rate = f"{chosen[lr_of]:g}" if lr_of else "—"
        mark = marks[json.dumps(measured[name], sort_keys=True)]
        patterns = [r["patterns"] for r in runs if "patterns" in r]   # rows stored before #26 have none
        shown = ([f"{statistics.mean(p[key] for p in patterns):{fmt}}" for key, fmt in
                  (("loops", ".1%"), ("no_answer_line", ".1%"), ("words", ".1f"))] if patterns else ["—"] * 3)
        lines.append(f"| {name}{mark} | {rate} | {len(runs)} | {accuracy:.1%} ± {spread:.1%} | "
                     f"{spread / len(runs) ** 0.5:.1%} | {accuracy - base:+.1%} | {seconds:.0f} | {calls:,.0f} | "
                     f"{tokens:,.0f} | " + " | ".join(shown) + " |")
    if sweep_results:
        untrained = next(r["accuracy"] for r in sweep_results if r["row"] == ROWS[0][0])
        rates = sorted({r["lr"] for r in sweep_results if r["row"] != ROWS[0][0]})
        lines += ["", (f"Learning-rate sweep (seed {args.sweep_seed}, {args.valid_size} validation problems from the "
                       f"training distribution, where the untrained student scores {untrained:.1%}; the chosen rate "
                       "in bold; a method whose best rate was the edge of the grid was tried past it, — where it "
                       "was not):"), "",
                  "| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        for name in SWEPT:
            scores = {r["lr"]: r["accuracy"] for r in sweep_results if r["row"] == name}
            if not scores:
                continue
            cells = [("—" if lr not in scores else f"**{scores[lr]:.1%}**" if lr == chosen[name]
                      else f"{scores[lr]:.1%}") for lr in rates]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (folder / f"{args.name}.md").write_text("\n".join(lines) + f"\n\n![accuracy against step]({args.name}.png)\n")
    plot(results, folder / f"{args.name}.png")
    print("\n".join(lines))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, _, _ in ROWS[1:]:
        curves = [r["curve"] for r in results[name]]
        if not curves:
            continue
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
    parser.add_argument("--world", choices=[*toyworld.OFFLINE_WORLDS, *toyworld.VARIANT_WORLDS],
                        default=omniopd.Config.student)
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 steps, 32 problems, no sweep: a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps for every method (0 = the world's)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[],
                        help="the sweep's learning rates, the same for every method (default: ¼× to 4× the world's)")
    parser.add_argument("--sweep-seed", type=int, default=100)
    parser.add_argument("--valid-size", type=int, default=300, help="validation problems for the sweep")
    parser.add_argument("--sweep-extend", type=int, default=3,
                        help="times a method whose best rate is the grid's edge is tried at half (twice) it")
    parser.add_argument("--eval-size", type=int, default=0, help="held-out test problems (0 = the world's)")
    parser.add_argument("--points", type=int, default=4, help="evaluations along the curve")
    parser.add_argument("--no-ablations", action="store_true", help="only the methods, not OmniOPD's ablations")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="where run folders go")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="", help="file name of the results (default: the world's name)")
    parser.add_argument("--rows", nargs="+", default=[], choices=[name for name, _, _ in ROWS], metavar="ROW",
                        help="run only these rows; the others are read from the stored <name>.json, if any")
    args = parser.parse_args()
    world = WORLDS[args.world]
    args.steps = args.steps or world["steps"]
    args.eval_size = args.eval_size or world["eval_size"]
    default_lr = omniopd.Config(**toyworld.world_options(args.world)).resolved().lr
    args.lrs = args.lrs or [default_lr / 4, default_lr / 2, default_lr, default_lr * 2, default_lr * 4]
    args.name = args.name or args.world
    if args.quick:
        args.seeds, args.steps, args.eval_size, args.points, args.lrs = [0], 4, 32, 2, [default_lr]
        args.name += "-quick"
    args.selected = {ROWS[0][0], *args.rows} if args.rows else {name for name, _, _ in ROWS}
    stored = {}
    path = Path(args.results) / f"{args.name}.json"
    if args.rows and path.exists():
        stored = json.loads(path.read_text())
    started = time.time()
    chosen, sweep_results = sweep(args, started, stored)
    eval_data = toyworld.world_options(args.world)["eval_data"]
    jobs = [(name, overrides, seed, chosen[lr_of] if lr_of else default_lr, eval_data, args)
            for name, overrides, lr_of in ROWS for seed in args.seeds
            if name in args.selected and not (args.no_ablations and name.startswith("ablation"))]
    results = {name: ([] if name in args.selected else stored.get("results", {}).get(name, [])) for name, _, _ in ROWS}
    for result in run_all(jobs, args, started):
        results[result["row"]].append(result)
    measured = {name: this_measurement(args) if name in args.selected else stored_measurement(stored, name, args)
                for name, _, _ in ROWS if results[name] or name in args.selected}
    write_report(results, chosen, sweep_results, args, Path(args.results), measured)


if __name__ == "__main__":
    main()
