"""Which real model can teach SmolLM2-135M-Instruct (issue #26, item 3): each candidate teacher's own accuracy on
the task, asked through llama.cpp's OpenAI-compatible server exactly as a run asks its API teacher.

    pip install -r requirements-real.txt -r bench/requirements.txt
    python bench/teacher_strength.py            # 2 CPU cores: about an hour -> bench/results/teacher_strength.md

Tasks: reasoning-gym chain_sum at bench/real_lm.py's difficulty (2-3 terms of 1-2 digits) and a harder setting
(4-5 terms of 2-3 digits), --problems held-out problems each. Candidates, each greedy, up to 64 new tokens:
- Gemma-3-270M (base, Q4_K_M), completion mode: the raw prompt "Question: ...\\nAnswer: " (another family and
  tokenizer than the student's);
- SmolLM2-135M-Instruct, chat mode with the continuation instruction (the teacher of bench/real_lm.py);
- SmolLM2-135M-Instruct with privileged information: the reference answer in its --teacher-prompt (a known way
  to make a model a stronger teacher of itself);
- the student itself, SmolLM2-135M-Instruct as the student sees the task (completion mode, the plain prompt),
  the bar a teacher must clear.
The three teachers are omniopd_tools.real_models.REAL_TEACHERS (`bench/real_lm.py --teacher smollm2|smollm2-privileged|gemma`).
Accuracy is greedy pass@1 by the run's grader (the final answer: \\boxed, '####' or the last number); ± is one
binomial standard error.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
from omniopd_lib import grading, teachers  # noqa: E402
from omniopd_lib.generation import PLAIN_TEMPLATE  # noqa: E402
from omniopd_tools.real_models import REAL_TEACHERS, LlamaServer, smollm2_gguf  # noqa: E402

KEY = "sk-teacher-strength"
TASKS = {"bench (2-3 terms, 1-2 digits)": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
         "harder (4-5 terms, 2-3 digits)": dict(min_terms=4, max_terms=5, min_digits=2, max_digits=3)}


def problems(settings: dict, size: int) -> list[dict]:
    import reasoning_gym
    rows = reasoning_gym.create_dataset("chain_sum", size=size, seed=1_000_003, **settings)
    return [{"question": r["question"], "answer": str(r["answer"])} for r in rows]


def accuracy(teacher, rows) -> tuple[float, float, list]:
    """Greedy pass@1 of the teacher's answers from the plain prompt, and its binomial standard error."""
    prefixes = [PLAIN_TEMPLATE.format(question=r["question"]) for r in rows]
    answers = teacher.continuations(prefixes, 1, 64, rows=rows)
    texts = [a[0] if a else "" for a in answers]
    correct = [grading.answers_match(grading.extract_answer(text), r["answer"]) for text, r in zip(texts, rows)]
    share = sum(correct) / len(rows)
    return share, (share * (1 - share) / len(rows)) ** 0.5, texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "teacher_strength.md"))
    args = parser.parse_args()
    os.environ["TEACHER_STRENGTH_KEY"] = KEY
    tasks = {name: problems(settings, args.problems) for name, settings in TASKS.items()}
    names = {"smollm2": "SmolLM2-135M-Instruct, chat (bench/real_lm.py's teacher)",
             "smollm2-privileged": "SmolLM2-135M-Instruct, chat, privileged (the answer in its prompt)",
             "gemma": "Gemma-3-270M base, completion"}
    candidates = [("the student: SmolLM2-135M-Instruct, plain prompt (the bar)", smollm2_gguf(), "completion", "")]
    candidates += [(names[key], gguf(), mode, prompt)
                   for key, (gguf, mode, prompt) in REAL_TEACHERS.items()]
    lines = [f"# Candidate teachers' own accuracy (reasoning-gym chain_sum, {args.problems} problems per task)", "",
             "Made by `python bench/teacher_strength.py`: each model behind llama.cpp's server, asked as a run asks "
             "its API teacher (OmniOPD's continuation of the bare prompt), greedy, up to 64 tokens. ± is one "
             "binomial standard error.", "",
             "| candidate | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    examples = []
    for name, gguf, mode, prompt in candidates:
        with LlamaServer(gguf, KEY, alias="model", threads=max(1, os.cpu_count() or 2)) as server:
            teacher = teachers.OpenAITeacher("model", server.url, "TEACHER_STRENGTH_KEY", mode=mode,
                                             temperature=0.0, concurrency=1)
            teacher.prompt = prompt
            cells = []
            for task, rows in tasks.items():
                share, error, texts = accuracy(teacher, rows)
                cells.append(f"{share:.1%} ± {error:.1%}")
                examples.append(f"- {name}, {task}: {rows[0]['question']} → {texts[0][:160]!r} (gold {rows[0]['answer']})")
                print(name, task, cells[-1], flush=True)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "One answer of each (the first problem):", "", *examples]
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
