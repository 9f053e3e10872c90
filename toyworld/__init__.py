"""The toy world: arithmetic word problems, a character tokenizer, and tiny models.

It lets `python omniopd.py` run the whole method offline on a CPU in minutes.
Problems are two-step word problems on single-digit numbers with a worked
solution ending in a GSM8K-style `#### n` line, e.g.

    Question: Ann has 7 pens. She gets 5 more, then gives 3 away. How many pens now?
    Answer: 7+5=12. 12-3=9.
    #### 9

Train and test sets are disjoint by construction: a problem belongs to the test
split exactly when a hash of its text says so, so no seed can leak one into the
other. The teacher and student checkpoints in `toyworld/models/` were made by
`python -m omniopd_tools.build_world` (see that file); they are ordinary Hugging Face
folders loaded through the same `from_pretrained` path as hub models.
"""

import hashlib
import importlib
import json
import random
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
TEACHER_DIR = MODELS_DIR / "teacher"
STUDENT_DIR = MODELS_DIR / "student"

NAMES = [("Ann", "She"), ("Ben", "He"), ("Cal", "He"), ("Dee", "She"), ("Eve", "She"),
         ("Fay", "She"), ("Gus", "He"), ("Hal", "He"), ("Ivy", "She"), ("Jon", "He")]
OBJECTS = ["pens", "cats", "eggs", "cups", "hats", "keys", "toys", "bags", "jars", "fish"]
GAIN_VERBS = ["gets {n} more", "buys {n} more", "finds {n} more"]
LOSS_VERBS = ["gives {n} away", "loses {n}", "sells {n}"]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]


def make_problem(rng: random.Random) -> dict:
    """One two-step problem as a dataset row: {"question", "answer"} (GSM8K style)."""
    name, pronoun = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    start = rng.randint(1, 9)
    steps, total, equations = [], start, []
    for _ in range(2):
        amount = rng.randint(1, 9)
        if rng.random() < 0.5 or amount > total:   # never go below zero
            steps.append(rng.choice(GAIN_VERBS).format(n=amount))
            equations.append(f"{total}+{amount}={total + amount}.")
            total += amount
        else:
            steps.append(rng.choice(LOSS_VERBS).format(n=amount))
            equations.append(f"{total}-{amount}={total - amount}.")
            total -= amount
    question = (f"{name} has {start} {obj}. {pronoun} {steps[0]}, then {steps[1]}. "
                f"How many {obj} now?")
    return {"question": question, "answer": " ".join(equations) + f"\n#### {total}"}


def is_test_problem(question: str) -> bool:
    """The split is a property of the text: 1 problem in 8 is test, whatever the seed."""
    return hashlib.sha256(question.encode()).digest()[0] % 8 == 0


def make_problems(n: int, split: str, seed: int) -> list[dict]:
    """n distinct problems from one split ("train" or "test"), reproducible from seed."""
    rng, rows, seen = random.Random(f"{split}-{seed}"), [], set()
    while len(rows) < n:
        row = make_problem(rng)
        if is_test_problem(row["question"]) == (split == "test") and row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_char_tokenizer():
    """A character-level tokenizer that is a real Hugging Face Qwen2 tokenizer: byte-level BPE with
    all 256 byte symbols and no merges, so every byte is one token (ASCII text: one per character).
    Being Qwen2's own class, AutoTokenizer loads it back unchanged next to a Qwen2 config."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + symbols)}
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                          padding_side="left", clean_up_tokenization_spaces=False)


# the names --student, --teacher, --data and --eval-data take for the offline worlds: "toy" (this file's arithmetic),
# "stories" (toyworld/stories.py: word-level, several phrasings, reasoning choices) and "code" (toyworld/code.py:
# Python functions with unit tests, --task code)
OFFLINE_WORLDS = ("toy", "stories", "code")
MATH_WORLDS = ("toy", "stories")
# the story world with a foreign teacher (issue #26): the story world's student, problems and grading, and a teacher
# that learned its solutions in another dialect with a tokenizer of its own ("stories-foreign"), or the same dialect
# in the student's tokenizer ("stories-foreign-shared", for token-level OPD, which must read its logits)
FOREIGN_TEACHERS = ("stories-foreign", "stories-foreign-shared")
VARIANT_WORLDS = {"stories-foreign": "stories"}   # a variant world -> the world whose student and problems it uses


# each world's scale where omniopd.Config leaves 0 (auto): its solutions' length, and the rate its models train at.
# stories-foreign: the foreign dialect's solutions take 130 student tokens on average, 160 at most (2,000 test
# problems), so its rollouts and evaluations run to 176 tokens: a student that learned to write like its teacher
# must not be cut before its answer (at the story world's 96, every foreign solution was cut; issue #32)
WORLD_SETTINGS = {"toy": {"max_new_tokens": 48, "lr": 2e-4}, "stories": {"max_new_tokens": 96, "lr": 2e-4},
                  "code": {"max_new_tokens": 64, "lr": 2e-4}, "stories-foreign": {"max_new_tokens": 176, "lr": 2e-4}}


def world_settings(name: str, teacher: str = "") -> dict:
    """max_new_tokens and lr of an offline world's runs; with a foreign teacher (stories-foreign), its variant
    world's, whose solutions are longer."""
    variant = next((v for v, base in VARIANT_WORLDS.items() if base == name and teacher in (v, f"{v}-shared")), None)
    return WORLD_SETTINGS[variant or name]


def world_options(name: str) -> dict:
    """The Config fields that put a run in one offline world: omniopd.Config(**world_options("toy")). A variant
    world ("stories-foreign") is its base world with another teacher."""
    if name in VARIANT_WORLDS:
        return {**world_options(VARIANT_WORLDS[name]), "teacher": name}
    return {"student": name, "teacher": name, "data": name, "eval_data": name,
            **({"task": "code"} if name == "code" else {})}


def world_args(name: str) -> list[str]:
    """The same on the command line: omniopd.main([*world_args("toy"), "--steps", "2"])."""
    args = []
    for key, value in world_options(name).items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def world_model_dir(name: str, role: str) -> Path:
    """The shipped checkpoint of an offline world: world_model_dir("stories", "teacher"); a foreign teacher's."""
    if name in FOREIGN_TEACHERS:
        from toyworld import stories
        return stories.FOREIGN_SHARED_DIR if name.endswith("-shared") else stories.FOREIGN_TEACHER_DIR
    if name in ("stories", "code"):
        world = importlib.import_module(f"toyworld.{name}")
        return world.TEACHER_DIR if role == "teacher" else world.STUDENT_DIR
    return TEACHER_DIR if role == "teacher" else STUDENT_DIR


def world_problems(name: str, n: int, split: str, seed: int) -> list[dict]:
    """n problems of an offline world's split (the task's distribution); the code world's in HumanEval's shape."""
    name = VARIANT_WORLDS.get(name, name)
    if name in ("stories", "code"):
        return importlib.import_module(f"toyworld.{name}").make_problems(n, split, seed)
    return make_problems(n, split, seed)
