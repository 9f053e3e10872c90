"""How far apart the story world's two dialects are (issue #26), before any method runs on them.

    python bench/foreign_dialect.py        # about a minute on 2 CPU cores -> bench/results/stories-foreign-dialect.md

For the same held-out problems, each with a solution in the student's dialect and one in the foreign teacher's
(toyworld/stories.py: write_solution and write_foreign_solution, the same steps and totals):
1. the student's per-token negative log-likelihood of each, given the question (nats per token, in the student's
   tokenizer), and how many of its tokens each takes;
2. the sentence-embedding cosine (all-MiniLM-L6-v2, the similarity step 5 uses) of a problem's two solutions,
   against that of two solutions in the student's own dialect (drawn in different styles) and of two different
   problems' solutions in the student's dialect;
3. each shipped teacher's greedy accuracy on the held-out problems, and how often its answers carry '####'.
"""

import argparse
import os
import random
import re
import statistics
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
from omniopd_lib import grading, models  # noqa: E402
from omniopd_lib.generation import PLAIN_TEMPLATE  # noqa: E402
from omniopd_lib.similarity import Similarity  # noqa: E402
import toyworld  # noqa: E402
from toyworld import stories  # noqa: E402
from omniopd_lib.common import OmniOPDError
from omniopd_lib.generation import completion_nll


def mean_nll(model, tokenizer, rows, batch_size=50) -> float:
    """Per-token NLL of the rows' answers given their questions, over all their tokens."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            count = sum(len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) + 1 for r in chunk)
            total += completion_nll(model, tokenizer, [r["question"] for r in chunk],
                                            [r["answer"] for r in chunk], PLAIN_TEMPLATE, num_tokens=1).item()
            tokens += count
    return total / tokens


def answers(first, second) -> list[tuple[str, str]]:
    return [(a["answer"], b["answer"]) for a, b in zip(first, second, strict=True)]


def cosines(similarity, pairs) -> float:
    return statistics.mean(similarity.matrices([[a]], [[b]])[0].item() for a, b in pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "stories-foreign-dialect.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = stories.make_problems(args.problems, "test", 0)
    theirs = stories.make_problems(args.problems, "test", 0, dialect="foreign")
    # the same problems in the student's dialect again, in other styles and connectives
    rng = random.Random(1)
    again = [{**row, "answer": stories.write_solution(*redraw(row, rng))} for row in ours]
    student, tokenizer = models.load_model("stories", "student", torch.device("cpu"))
    student.eval()
    lines = [f"# The story world's two dialects ({args.problems} held-out problems)", "",
             "Made by `python bench/foreign_dialect.py`. Both dialects solve the same problems with the same steps "
             "and totals; only the words differ (toyworld/stories.py).", "",
             "| solutions | student's NLL (nats per token) | student's tokens per solution |", "|---|---|---|"]
    for name, rows in (("the student's dialect", ours), ("the foreign teacher's dialect", theirs)):
        length = statistics.mean(len(tokenizer(r["answer"])["input_ids"]) for r in rows)
        lines.append(f"| {name} | {mean_nll(student, tokenizer, rows):.3f} | {length:.1f} |")
    similarity = Similarity("embed")
    shuffled = ours[1:] + ours[:1]
    lines += ["", "| pair of solutions | embedding cosine (mean) |", "|---|---|",
              f"| one problem: student's dialect, foreign dialect | {cosines(similarity, answers(ours, theirs)):.3f} |",
              f"| one problem: student's dialect, twice (other styles) | {cosines(similarity, answers(ours, again)):.3f} |",
              f"| two problems: student's dialect | {cosines(similarity, answers(ours, shuffled)):.3f} |"]
    lines += ["", "| teacher | tokenizer | greedy accuracy | answers with '####' |", "|---|---|---|---|"]
    for name, tokenizer_name in (("stories", "the student's"), ("stories-foreign", "its own"),
                                 ("stories-foreign-shared", "the student's")):
        try:
            teacher, teacher_tokenizer = models.load_model(name, "teacher", torch.device("cpu"))
        except OmniOPDError as error:
            lines.append(f"| {name} | {tokenizer_name} | not built ({error}) | |")
            continue
        cfg = omniopd.Config(student="stories", max_new_tokens=176).resolved()
        accuracy, records = grading.evaluate(teacher, teacher_tokenizer, ours, cfg)
        hashes = sum("####" in r["output"] for r in records) / len(records)
        lines.append(f"| {name} | {tokenizer_name} | {accuracy:.1%} | {hashes:.0%} |")
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def redraw(row, rng):
    """write_solution's arguments for a row, read back from its question: name, pronoun, object, start, steps."""
    question = row["question"]
    name = question.split(" has ")[0]
    pronoun = next(p for n, p in toyworld.NAMES if n == name)
    obj = next(o for o in stories.OBJECTS if f" {o}." in question)
    start = int(re.search(r" has (\d+) ", question).group(1))
    verbs = sorted(stories.GAIN_VERBS + stories.LOSS_VERBS, key=len, reverse=True)
    steps = []
    for sentence in question.split(". ")[1:1 + stories.STEPS]:
        verb = next(v for v in verbs if f" {v} " in f" {sentence} ")
        amount = int(re.search(rf" {verb} (\d+) ", f" {sentence} ").group(1))
        steps.append((verb, amount, verb in stories.GAIN_VERBS))
    return name, pronoun, obj, start, steps, rng


if __name__ == "__main__":
    main()
