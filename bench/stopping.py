"""Does OmniOPD's target teach a real student not to stop? (issue #26: the real pair's loops)

    pip install -r requirements-real.txt
    python bench/stopping.py [--teacher smollm2-privileged] [--batches 8]   # -> bench/results/stopping-<teacher>.md

Trained from SmolLM2 with the answer in its prompt, the student's rollouts grow to the token cap and 95 % of its
answers end in a loop (bench/results/real_pair-smollm2-privileged.md). A text-only teacher can say "stop here"
only with an empty continuation (teachers.teacher_answer: "" is a vote for ending, which a draft that ends at EOS
matches). This runs OmniOPD's steps 1-6 without an update on the untrained student, with bench/real_lm.py's
student, data, prompt and teacher, and at every fork sorts the K drafts into those that stop (the chunk ends at a
stop token) and those that go on. It reports, at forks with both kinds, the mean p̂ and mean similarity S of each
kind against the uniform 1/K, and how often the teacher's continuations there are empty.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
from real_lm import KEY, api_teacher, write_data  # noqa: E402
from omniopd_lib import data  # noqa: E402
from omniopd_lib.generation import stop_token_ids  # noqa: E402
from omniopd_tools.real_models import REAL_TEACHERS, LlamaServer, smollm2_folder  # noqa: E402
from omniopd_lib.data import batch_rows
from omniopd_lib.runs import setup


def fork_census(run, rows, cfg, batches) -> list[dict]:
    """Per fork: which drafts stop, their p̂ and mean S, and the teacher's continuations."""
    stops = set(stop_token_ids(run.student, run.tokenizer))
    forks = []
    for step in range(batches):
        batch = omniopd.omniopd_collect(run, batch_rows(rows, step, cfg), cfg)
        for f, (drafts, teacher_texts, similarity_K_M) in enumerate(batch.fork_texts):
            chunks = batch.drafts.chunk_ids[f]
            prefix = run.tokenizer.decode(batch.drafts.prefix_ids[f], skip_special_tokens=True)
            forks.append({"stops": [bool(c) and c[-1] in stops for c in chunks], "drafts": drafts,
                          "repeats": [len(d.strip()) >= 8 and d.strip()[:16] in prefix for d in drafts],
                          "target": batch.target_F_K[f].tolist(), "similarity": similarity_K_M.mean(1).tolist(),
                          "teacher": teacher_texts})
        print(f"batch {step + 1}/{batches}: {len(forks)} forks so far", flush=True)
    return forks


def mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def report(forks, args, seconds) -> list[str]:
    mixed = [f for f in forks if any(f["stops"]) and not all(f["stops"])]
    kinds = {"drafts that stop": lambda stops, text: stops, "… of them, at once (no text)": lambda stops, text: stops
             and not text.strip(), "drafts that go on": lambda stops, text: not stops}
    lines = [f"# Does OmniOPD's target teach SmolLM2 not to stop? (teacher `{args.teacher}`)", "",
             f"Made by `{shlex.join(['python', 'bench/stopping.py', *sys.argv[1:]])}` ({seconds / 60:.0f} minutes): OmniOPD's "
             f"steps 1-6 without an update on {'the student ' + args.student if args.student else 'the untrained student'}, "
             f"{args.batches} batches of 8 rollouts, bench/real_lm.py's data and prompt; K = 4 drafts per fork.", "",
             f"Forks: {len(forks)}; with a draft that stops: {sum(any(f['stops']) for f in forks)}; with drafts "
             f"that stop and drafts that go on: {len(mixed)}. Of the teacher's continuations at those mixed forks, "
             f"{mean(t == '' for f in mixed for t in f['teacher']):.1%} are empty (a vote for stopping); at every "
             f"fork, {mean(t == '' for f in forks for t in f['teacher']):.1%}.", "",
             "| at the mixed forks | drafts | mean p̂ (uniform: 0.25) | mean S |", "|---|---|---|---|"]
    for name, chosen in kinds.items():
        targets = [p for f in mixed for p, s, d in zip(f["target"], f["stops"], f["drafts"]) if chosen(s, d)]
        similarity = [x for f in mixed for x, s, d in zip(f["similarity"], f["stops"], f["drafts"]) if chosen(s, d)]
        lines.append(f"| {name} | {len(targets)} | {mean(targets):.3f} | {mean(similarity):.3f} |")
    repeating = [f for f in forks if any(f["repeats"]) and not all(f["repeats"])]
    lines += ["", f"Forks with drafts that repeat the answer so far (their first 16 characters already in the prefix) "
              f"and drafts that do not: {len(repeating)}. There, mean p̂ of a repeating draft "
              f"{mean(p for f in repeating for p, r in zip(f['target'], f['repeats']) if r):.3f}, of the others "
              f"{mean(p for f in repeating for p, r in zip(f['target'], f['repeats']) if not r):.3f}."]
    lines += ["", "Mixed forks, the first three (stop/go on, p̂, the draft; then the teacher's continuations):", ""]
    for f in mixed[:3]:
        lines.append("```")
        lines += [f"{'stop ' if s else 'go on'}  p̂ {p:.2f}  {d!r}" for s, p, d in zip(f["stops"], f["target"], f["drafts"])]
        lines += [f"teacher         {t[:80]!r}" for t in f["teacher"]]
        lines.append("```")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=list(REAL_TEACHERS), default="smollm2-privileged")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", default="", help="a checkpoint folder (default: the untrained SmolLM2)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    runs = ROOT / "bench" / "runs" / "stopping" / args.teacher
    train, _ = write_data(runs / "data", 2000, 200)
    gguf, teacher = api_teacher(args.teacher, runs)
    started = time.time()
    with LlamaServer(gguf, KEY, alias="teacher", threads=max(1, (os.cpu_count() or 2) // 2)) as server, \
            tempfile.TemporaryDirectory() as out:
        cfg = omniopd.Config(student=args.student or str(smollm2_folder()), data=train, eval_data=train, batch_size=8,
                             max_new_tokens=48, prompt_template="plain", teacher="openai:teacher",
                             teacher_base_url=server.url, seed=args.seed, out=out, **teacher).resolved()
        torch.manual_seed(args.seed)
        run = setup(cfg)
        forks = fork_census(run, data.load_rows(cfg.data, "train", cfg.seed), cfg, args.batches)
    lines = report(forks, args, time.time() - started)
    name = f"stopping-{args.teacher}" + ("-trained" if args.student else "")
    Path(args.results, f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
