"""Can a teacher continue a solution the student began? (issue #32)

    python bench/teacher_reads_student.py   # -> bench/results/teacher_reads_student.md

OmniOPD asks the teacher to continue the student's prefix. An LLM teacher reads any dialect; the offline foreign
teacher learned only its own. Here each world's teacher continues held-out problems' reference solutions in the
student's dialect, cut after k of their sentences (k = 0: from the bare "Answer:"), greedily to its end; the
table gives the share whose final answer is right. The story world's own teacher (the student's dialect) is the
control.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
from omniopd_lib import grading  # noqa: E402
from omniopd_lib.teachers import HFTeacher  # noqa: E402
from toyworld import stories  # noqa: E402
from omniopd_lib.generation import generate


def continued_right(teacher, rows, sentences: int, template: str) -> float:
    """The share of rows whose reference solution, cut after `sentences` sentences, the teacher continues greedily
    (96 of its tokens at most) to the right final answer."""
    prefixes = []
    for row in rows:
        kept = ". ".join(row["answer"].split(". ")[:sentences]) + ("." if sentences else "")
        prefixes.append(template.format(question=row["question"]) + kept)   # no trailing space: words carry theirs
    right = 0
    for start in range(0, len(prefixes), 64):
        batch = teacher.tokenizer(prefixes[start:start + 64], return_tensors="pt", padding=True,
                                  add_special_tokens=False)
        new_ids = generate(teacher.model, teacher.tokenizer, batch.input_ids, batch.attention_mask, 96, 0.0)
        for row, prefix, text in zip(rows[start:], prefixes[start:],
                                     teacher.tokenizer.batch_decode(new_ids, skip_special_tokens=True)):
            answer = grading.extract_answer(prefix.split("Answer:", 1)[1] + text)
            right += grading.answers_match(answer, grading.gold_answer(row["answer"]))
    return right / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 2)))
    rows = stories.make_problems(args.problems, "test", 0)
    template = omniopd.Config().resolved().prompt_template
    lines = ["# Can the teacher continue a solution the student began?", "",
             f"Made by `python bench/teacher_reads_student.py --problems {args.problems}`: {args.problems} held-out "
             "story problems; each reference solution in the student's dialect, cut after k sentences, continued "
             "greedily by the teacher (96 tokens at most); the share whose final answer is right.", "",
             "| teacher | k = 0 (from \"Answer:\") | k = 1 (after the opening) | k = 2 (after step 1) | k = 3 (after step 2) |",
             "|---|---|---|---|---|"]
    for name in ("stories", "stories-foreign"):
        teacher = HFTeacher(name, "cpu")
        shares = [continued_right(teacher, rows, k, template) for k in range(4)]
        lines.append(f"| {name} | " + " | ".join(f"{s:.1%}" for s in shares) + " |")
        print(lines[-1], flush=True)
    Path(args.results, "teacher_reads_student.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
