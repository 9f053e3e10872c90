"""The story world: the toy world rebuilt to look like the paper's setting, in miniature.

The arithmetic world (`toyworld/__init__.py`) has one phrasing, 16-character chunks and errors in
digits, which a sentence encoder barely sees. Here, as with the paper's LLMs:

- tokens are words: a byte-level BPE tokenizer trained on the world's own text, so a chunk of
  L = 16 tokens is a clause, not a few characters;
- the same reasoning is written in three styles, with connectives drawn at random, so a teacher's
  samples differ in wording and agree in substance;
- the forks are reasoning choices: whether a verb such as "donates" adds or takes away. Verbs follow a
  Zipf law in both models' corpora; the teacher's is broad (exponent 1: every verb seen hundreds of
  times), the smaller student's narrow (exponent 4: the rarer half seen a few times or never), so the
  teacher knows every verb and the student guesses the rare ones;
- a solution never repeats a verb, it says what the verb does, so the student's choice is the reasoning
  ("we add 3" or "we take away 3"), not copying a rare word; its mistake shows in words as well as digits
  ("we add 3: 12 + 3 = 15" against "we take away 3: 12 - 3 = 9").

Training prompts and held-out problems draw every verb equally often: the task covers the long tail
the corpus under-represents. A problem, with one of its solutions:

    Question: Ann has 7 coins. She buys 5 coins. Then she donates 3 coins. Then she finds 2 coins.
    How many coins does Ann have now?
    Answer: Ann starts with 7 coins. First we add 5: 7 + 5 = 12. Then we take away 3: 12 - 3 = 9. Next
    we add 2: 9 + 2 = 11.
    #### 11

Splits are disjoint by a hash of the question, as in the arithmetic world.
"""

import hashlib
import random
import re

from toyworld import MODELS_DIR, NAMES, build_char_tokenizer

TEACHER_DIR = MODELS_DIR / "stories-teacher"
STUDENT_DIR = MODELS_DIR / "stories-student"
FOREIGN_TEACHER_DIR = MODELS_DIR / "stories-foreign-teacher"         # the foreign dialect, its own tokenizer
FOREIGN_SHARED_DIR = MODELS_DIR / "stories-foreign-shared-teacher"   # the same dialect, the student's tokenizer

OBJECTS = ["coins", "cards", "shells", "stamps", "marbles", "books", "pens", "apples"]
# most frequent first; the corpus draws rank r with weight 1 / r^ZIPF_EXPONENT
GAIN_VERBS = ["buys", "finds", "gets", "wins", "collects", "receives", "earns", "gathers", "picks up", "is given",
              "inherits", "harvests", "catches", "digs up", "orders", "borrows", "adopts", "rescues", "unpacks",
              "wins back", "makes", "builds", "trades for", "is sent"]
LOSS_VERBS = ["gives away", "loses", "sells", "drops", "donates", "misplaces", "trades away", "discards", "throws away",
              "breaks", "lends", "spends", "mails", "gives back", "gives up", "leaves behind", "hands out", "shares",
              "burns", "recycles", "sends away", "forgets", "throws out", "pawns"]
ZIPF_EXPONENT = 1.0          # the teacher's corpus
# The student's corpus is narrower: in its 20,000 problems a verb of rank 6 occurs 20-30 times, of rank 12-13 0-4
# times, of rank 18 and beyond almost never, so the student must learn most of the rare half from a teacher. Measured at the add/take-away decision of held-out solutions (bench/stories_decisions.py, rare half = ranks
# 13-24): exponent 3 -> the student knows every verb (P(right) 0.96, test 92.5 %); 3.5 -> P(right) 0.75, 15.5 % of
# those decisions uncertain (0.1 < P < 0.9), test 58 %; 4 -> P(right) 0.62, 22.7 % uncertain, test 46 %; 5 -> P(right)
# 0.68 but only 3.8 % uncertain (confidently right or wrong), test 26 %. 4 leaves the student most unsure where it is
# wrong, as an LLM student is at a real fork, and room to improve; it was chosen before any method ran on it.
STUDENT_ZIPF_EXPONENT = 4.0
STEPS = 3
CONNECTIVES = ["Then", "Next", "After that", "Later"]


def verb_weights(distribution: str, verbs: int = 0) -> list[float]:
    """'zipf' (or 'zipf:S' with exponent S): the corpus's skewed verb frequencies; 'uniform': the task's, every
    verb alike. verbs = n: only the n most frequent of each kind (0 = all)."""
    ranks = range(1, len(GAIN_VERBS) + 1)
    exponent = float(distribution.split(":")[1]) if ":" in distribution else ZIPF_EXPONENT
    weights = [1.0 for _ in ranks] if distribution == "uniform" else [1 / r ** exponent for r in ranks]
    return [w if not verbs or r <= verbs else 0.0 for r, w in zip(ranks, weights)]


def write_solution(name, pronoun, obj, start, steps, rng) -> str:
    """One worked solution in one of three styles; the connectives between steps vary at random. A step does
    not repeat its verb: the solution must say what the verb means (add or take away, more or fewer), which is
    the reasoning choice, not copy the word."""
    style = rng.randrange(3)
    lines, total = [], start
    lines.append([f"{name} starts with {start} {obj}.", f"At first {name} has {start} {obj}.",
                  f"We begin with {start} {obj}."][style])
    for i, (verb, amount, gain) in enumerate(steps):
        new_total = total + amount if gain else total - amount
        sign, words, more = ("+", "add", "more") if gain else ("-", "take away", "fewer")
        opener = "First" if i == 0 else rng.choice(CONNECTIVES)
        lines.append([
            f"{opener} we {words} {amount}: {total} {sign} {amount} = {new_total}.",
            f"{opener} {pronoun.lower()} has {amount} {more}: {total} {sign} {amount} = {new_total}.",
            f"{opener}, {amount} {obj} {more}, so {total} {sign} {amount} = {new_total}."][style])
        total = new_total
    return " ".join(lines) + f"\n#### {total}"


# The foreign teacher's dialect (issue #26): the same reasoning written as another community writes it. Its own
# openers and connectives, English synonyms for the objects, the operations in words ("plus", "minus", "makes")
# and another final line ("The final count is 11." where the student writes "#### 11"). Nothing of this is in
# the student's corpus; the grader reads the last number when a solution has no "####", so both dialects grade.
FOREIGN_CONNECTIVES = ["Afterwards", "Subsequently", "Following that", "After this"]
FOREIGN_OBJECTS = {"coins": "pennies", "cards": "tickets", "shells": "seashells", "stamps": "postage labels",
                   "marbles": "glass beads", "books": "volumes", "pens": "ballpoints", "apples": "pieces of fruit"}


def write_foreign_solution(name, pronoun, obj, start, steps, rng) -> str:
    """One worked solution in the foreign dialect: the same steps and totals as write_solution, other words."""
    style = rng.randrange(3)
    thing, total = FOREIGN_OBJECTS[obj], start
    lines = [[f"Initially {name} holds {start} {thing}.", f"{name} owns {start} {thing} at the outset.",
              f"Count at the start: {start} {thing}."][style]]
    for i, (verb, amount, gain) in enumerate(steps):
        new_total = total + amount if gain else total - amount
        operation, change, direction = ("plus", "gains", "up") if gain else ("minus", "is down", "down")
        opener = "To begin" if i == 0 else rng.choice(FOREIGN_CONNECTIVES)
        lines.append([
            f"{opener} {pronoun.lower()} {change} {amount}, so {total} {operation} {amount} makes {new_total}.",
            f"{opener} the count goes {direction} by {amount}: {total} {operation} {amount} gives {new_total}.",
            f"{opener}, {'increase' if gain else 'decrease'} by {amount} ({total} {operation} {amount} equals "
            f"{new_total})."][style])
        total = new_total
    ending = [f"The final count is {total}.", f"Answer: {total}", f"So {name} ends up with {total}."][style]
    return " ".join(lines) + f"\n{ending}"


def make_problem(rng: random.Random, distribution: str = "uniform", verbs: int = 0, dialect: str = "student") -> dict:
    """One three-step problem as a dataset row {"question", "answer"}; the answer is one solution of many, in the
    student's dialect (write_solution) or the foreign teacher's (write_foreign_solution). dialect "reading": a
    lesson of the foreign teacher's reading (read_on_lesson), a row with a "prefix" as well."""
    question, facts = draw_problem(rng, distribution, verbs)
    if dialect == "reading":
        return {"question": question, **read_on_lesson(facts, rng)}
    writer = write_foreign_solution if dialect == "foreign" else write_solution
    return {"question": question, "answer": writer(*facts, rng)}


def draw_problem(rng: random.Random, distribution: str, verbs: int) -> tuple[str, tuple]:
    """The question of a three-step problem and its facts (name, pronoun, object, start, steps) that a solution
    writer takes."""
    name, pronoun = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    start = rng.randint(2, 9)
    steps, total, sentences = [], start, []
    weights = verb_weights(distribution, verbs)
    for i in range(STEPS):
        amount = rng.randint(1, 9)
        gain = rng.random() < 0.5 or amount > total   # never below zero
        verb = rng.choices(GAIN_VERBS if gain else LOSS_VERBS, weights)[0]
        steps.append((verb, amount, gain))
        total += amount if gain else -amount
        sentences.append(f"{pronoun if i == 0 else 'Then ' + pronoun.lower()} {verb} {amount} {obj}.")
    question = (f"{name} has {start} {obj}. {' '.join(sentences)} How many {obj} does {name} have now?")
    return question, (name, pronoun, obj, start, steps)


def sentences_of(solution: str) -> tuple[list[str], str]:
    """A solution's sentences (the opening, then one per step) and its final line."""
    body, ending = solution.split("\n")
    return re.split(r"(?<=\.) ", body), ending


def read_on_lesson(facts: tuple, rng: random.Random) -> dict:
    """A lesson in reading the student's dialect (issue #32). An LLM teacher reads any text it is given and answers
    in its own words; the foreign teacher learned only its own dialect, so it could not continue a prefix the student
    wrote (bench/results/teacher_reads_student.md: 5.5 % right after the student's first step). A lesson is the
    student's solution cut after a random word, as {"prefix", "answer"}: the answer finishes the student's sentence
    in the student's words, then writes the remaining steps and the final line in the foreign dialect. The teacher
    learns from the answer alone (the prefix is part of its prompt), so it never learns to begin in the student's
    dialect, only to read it."""
    own, _ = sentences_of(write_solution(*facts, rng))
    foreign, ending = sentences_of(write_foreign_solution(*facts, rng))
    words = " ".join(own).split(" ")
    cut = rng.randint(1, len(words))
    done = sum(word.endswith(".") for word in words[:cut])   # the student's sentences the prefix holds whole
    sentence_end = len(" ".join(own[:done + 1]).split(" "))   # the word after the sentence the cut falls in
    rest_of_sentence = [] if words[cut - 1].endswith(".") else words[cut:sentence_end]
    continuation = " ".join(rest_of_sentence + foreign[done + bool(rest_of_sentence):])
    return {"prefix": " ".join(words[:cut]), "answer": (" " + continuation if continuation else "") + "\n" + ending}


def is_test_problem(question: str) -> bool:
    """The split is a property of the text: 1 problem in 8 is test, whatever the seed."""
    return hashlib.sha256(question.encode()).digest()[0] % 8 == 0


def make_problems(n: int, split: str, seed: int, distribution: str = "uniform", verbs: int = 0,
                  dialect: str = "student") -> list[dict]:
    """n distinct problems from one split ("train" or "test"), reproducible from seed."""
    rng, rows, seen = random.Random(f"stories-{split}-{seed}"), [], set()
    while len(rows) < n:
        row = make_problem(rng, distribution, verbs, dialect)
        if is_test_problem(row["question"]) == (split == "test") and row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def build_word_tokenizer(texts, vocab_size=640):
    """Qwen2's tokenizer, retrained on the world's text: the same byte-level BPE with Qwen2's pre-tokenizer
    (digits one by one, as in Qwen2.5), merges learned here, so every word of this small world becomes one
    token and any text still encodes, byte by byte. Being Qwen2's own class, it loads back unchanged."""
    return build_char_tokenizer().train_new_from_iterator(texts, vocab_size=vocab_size)
