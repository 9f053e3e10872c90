"""Every method on a real pretrained LLM, offline (issue #11): SmolLM2-135M-Instruct as the student.

    pip install -r requirements-real.txt
    python bench/real_lm.py                    # CPU, 2 cores: about an hour -> bench/results/real_lm.md
    python bench/real_lm.py --device cuda      # on a GPU machine

The task is reasoning-gym's chain_sum with two or three terms of one or two digits
("State the final answer to the following arithmetic problem: 41 + 7 - 19 ="), which the
student partly solves. Its API teacher is the same GGUF behind llama.cpp's OpenAI-compatible
server (chat mode: the question inside the model's chat template with the continuation
instruction, while the student sees the plain prompt). There is no second real model here,
so teacher and student share weights: OmniOPD and SFT can gain only from the teacher's other
conditioning and its own sampling; OPD, whose teacher must share the tokenizer, gets a loss
of exactly 0 (advantage log π_T − log π_θ = 0) and is the control that nothing else moves the
weights. Every method gets the same steps, rollouts per step and learning rate.
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.compare import run_name, run_row  # noqa: E402
from toyworld.real import LlamaServer, smollm2_folder, smollm2_gguf  # noqa: E402

KEY = "sk-bench-real-lm"
ROWS = [
    ("student (untrained)", {"steps": 0}),
    ("SFT (API teacher)", {"method": "sft", "teacher": "openai:smollm2"}),
    ("OPD, sampled-token (teacher = student)", {"method": "opd", "teacher": "STUDENT"}),
    ("GRPO", {"method": "grpo"}),
    ("OmniOPD (API teacher)", {"teacher": "openai:smollm2"}),
    # responses here are at most --max-new-tokens (48) long, where the public 50-token chunks never fit: the
    # offline worlds' scaling (C = 8, M = 4; N, α, β and φ the public defaults)
    ("OmniOPD, audit reading (API teacher)", {"teacher": "openai:smollm2", "objective": "audit", "chunk_len": 8,
                                              "audit_budget": 4}),
]


def write_data(folder: Path, train_size: int, test_size: int):
    """chain_sum problems as JSONL rows {question, answer}; the test rows come from another seed."""
    import reasoning_gym
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
    for split, size, seed in (("train", train_size, 0), ("test", test_size, 1_000_003)):
        rows = reasoning_gym.create_dataset("chain_sum", size=size, seed=seed, **settings)
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": r["question"], "answer": str(r["answer"])}) + "\n" for r in rows))
    return str(folder / "train.jsonl"), str(folder / "test.jsonl")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--points", type=int, default=3, help="evaluations along the curve")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs" / "real_lm"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--rows", nargs="+", default=[], choices=[name for name, _ in ROWS], metavar="ROW",
                        help="run only these rows (and the untrained student); the others are read from the "
                             "stored real_lm.json, which must have been made with the same settings")
    args = parser.parse_args()
    stored = {}
    if args.rows:
        stored = json.loads((Path(args.results) / "real_lm.json").read_text())
        same = ("steps", "batch_size", "lr", "max_new_tokens", "eval_size", "seed")
        if any(stored["args"].get(key) != getattr(args, key) for key in same):
            parser.error(f"the stored real_lm.json was made with other settings: {stored['args']}")
    student = str(smollm2_folder())
    train, test = write_data(Path(args.runs) / "data", 2000, args.eval_size)
    common = {"student": student, "data": train, "eval_data": test, "eval_size": args.eval_size,
              "batch_size": args.batch_size, "lr": args.lr,
              "max_new_tokens": args.max_new_tokens, "device": args.device,
              "prompt_template": "plain"}   # as measured in bench/results/real_lm.md (an instruct student's default is chat)
    os.environ["OPENAI_API_KEY"] = KEY
    results, started = {}, time.time()
    selected = {ROWS[0][0], *args.rows} if args.rows else {name for name, _ in ROWS}
    measured = stored.get("measured", {})
    with LlamaServer(smollm2_gguf(), KEY, threads=max(1, (os.cpu_count() or 2) // 2)) as server:
        for name, overrides in ROWS:
            if name not in selected:
                results[name] = stored["results"][name]
                measured.setdefault(name, "earlier (590d5bf, 2026-11-25)")
                continue
            measured[name] = f"this run ({time.strftime('%Y-%m-%d')})"
            options = {**common, **overrides}
            if options.get("teacher") == "STUDENT":
                options["teacher"] = student
            options.setdefault("teacher", student)
            if options["teacher"].startswith("openai:"):
                options["teacher_base_url"] = server.url
            results[name] = run_row(name, options, args.seed, Path(args.runs), args.steps, args.points)
            print(f"{name:<40} {results[name]['accuracy']:.1%} ({results[name]['seconds']:.0f} s, "
                  f"{time.time() - started:.0f} s in all)", flush=True)
    if args.rows:   # the rows read from the file are compared with the untrained student measured with them
        earlier = stored["results"].get(EARLIER_UNTRAINED) or stored["results"][ROWS[0][0]]
        results[EARLIER_UNTRAINED] = earlier
        measured[EARLIER_UNTRAINED] = measured.get(EARLIER_UNTRAINED) or stored.get("measured", {}).get(
            ROWS[0][0], "earlier (590d5bf, 2026-11-25)")
    write_report(results, args, measured)


EARLIER_UNTRAINED = "student (untrained), as measured with the earlier rows"


def write_report(results, args, measured):
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "real_lm.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "rows"},
                                                     "results": results, "measured": measured}, indent=1))
    first_eval = Path(args.runs) / run_name("student (untrained)", args.seed, args.lr) / "eval-step-000000.jsonl"
    evaluated = len(first_eval.read_text().splitlines()) if first_eval.exists() else args.eval_size
    lines = [f"# SmolLM2-135M-Instruct as student: every method, {args.steps} steps × {args.batch_size} rollouts, "
             f"lr {args.lr:g}, seed {args.seed}", "",
             f"Made by `python bench/real_lm.py {shlex.join(sys.argv[1:])}` (device {args.device}). reasoning-gym "
             "chain_sum (2-3 terms, 1-2 "
             f"digits), greedy pass@1 on {evaluated} held-out problems ({args.eval_size} generated, those also in the "
             "training data left out; one standard error is about 3 points). The API teacher is the same GGUF behind "
             "llama.cpp's server; see the script's docstring for what that means for each row. Each row's gain is "
             "against its own step-0 evaluation (the same model, problems, code and grading).", "",
             "| method | accuracy | vs untrained | curve (step: accuracy) | wall time (s) | teacher calls | measured |",
             "|---|---|---|---|---|---|---|"]
    for name in [n for n, _ in ROWS] + [n for n in results if n not in dict(ROWS)]:
        r = results[name]
        base = r["curve"][0][1]
        curve = ", ".join(f"{step}: {accuracy:.0%}" for step, accuracy in r["curve"])
        lines.append(f"| {name} | {r['accuracy']:.1%} | {r['accuracy'] - base:+.1%} | {curve} | {r['seconds']:.0f} | "
                     f"{r['teacher_calls']:,} | {measured.get(name, '')} |")
    (folder / "real_lm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
