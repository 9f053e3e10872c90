"""The code world: the story world's recipe for Python functions with unit tests (`--task code` offline).

Each problem asks for a three-step function on a list of small integers: keep some items, change each,
then reduce. The docstring says each step in words; the body says it in code, so the student's choices
are the meaning of each phrase ("the multiples of 3" is `x % 3 == 0`), never a copy of it:

    def solve(xs):
        \"\"\"Keep the multiples of 3, add 2 to each, then return the largest.\"\"\"
        ys = [x for x in xs if x % 3 == 0]
        ys = [x + 2 for x in ys]
        return max(ys)

As in the story world:
- tokens are words and code symbols: Qwen2's byte-level BPE retrained on the world's text;
- the teacher writes each solution in one of three styles (comprehensions, a loop, one line) with varied
  variable names and docstrings in three phrasings, so its samples differ in text and agree in meaning;
- the phrases follow a Zipf law in both models' corpora: exponent 1 for the teacher (every phrase seen
  often), STUDENT_ZIPF_EXPONENT for the smaller student (the rarer phrases seen a few times or never).
  Training prompts and held-out problems draw every phrase equally often.

Rows have HumanEval's shape (task_id, prompt, canonical_solution, test, entry_point): the same path as
`--data human-eval` reads and checks them, four asserts per problem computed from the canonical solution.
Splits are disjoint by a hash of the prompt.
"""

import hashlib
import random

from toyworld import MODELS_DIR

TEACHER_DIR = MODELS_DIR / "code-teacher"
STUDENT_DIR = MODELS_DIR / "code-student"

# each step's phrases, most frequent first: (words in the docstring, code with {v} the item and {k} a number)
FILTERS = [("the even items", "{v} % 2 == 0"), ("the items above {k}", "{v} > {k}"), ("the odd items", "{v} % 2 == 1"),
           ("the items below {k}", "{v} < {k}"), ("the items other than {k}", "{v} != {k}"),
           ("the multiples of {k}", "{v} % {k} == 0"), ("the items of at least {k}", "{v} >= {k}"),
           ("the items of at most {k}", "{v} <= {k}"), ("the items that are not multiples of {k}", "{v} % {k} != 0"),
           ("the items equal to {k}", "{v} == {k}"), ("the items between 2 and {k}", "2 <= {v} <= {k}"),
           ("the nonzero items", "{v} != 0")]
MAPS = [("add {k} to each", "{v} + {k}"), ("double each", "{v} * 2"), ("subtract {k} from each", "{v} - {k}"),
        ("square each", "{v} * {v}"), ("multiply each by {k}", "{v} * {k}"), ("negate each", "-{v}"),
        ("triple each", "{v} * 3"), ("halve each, rounding down", "{v} // 2"), ("take each modulo {k}", "{v} % {k}"),
        ("replace each by its distance from {k}", "abs({v} - {k})"), ("cube each", "{v} ** 3"),
        ("increment each", "{v} + 1")]
REDUCTIONS = [("return their sum", "sum({ys})"), ("return the largest", "max({ys})"),
              ("return how many there are", "len({ys})"), ("return the smallest", "min({ys})"),
              ("return the first", "{ys}[0]"), ("return the last", "{ys}[-1]"), ("return them sorted", "sorted({ys})"),
              ("return them in reverse order", "{ys}[::-1]"), ("return the largest minus the smallest",
                                                                "max({ys}) - min({ys})"),
              ("return them sorted from largest to smallest", "sorted({ys}, reverse=True)"),
              ("return the sum of their squares", "sum(y * y for y in {ys})"), ("return them as a list", "list({ys})")]
ZIPF_EXPONENT = 1.0           # the teacher's corpus
# the student's corpus: exponent 4 (the story world's) left the student at 10 % on held-out problems (three
# steps, each a choice among 12 phrases, all must be right); 3 leaves it at 31 %, with room to learn
STUDENT_ZIPF_EXPONENT = 3.0
DOCSTRINGS = ["Keep {f}, {m}, then {r}.", "From xs take {f}; {m}; finally {r}.", "Select {f} of xs. Next, {m}. "
              "Then {r}."]
NAMES = ["ys", "kept", "vals", "items"]
ITEM_NAMES = ["x", "v", "n"]
ENTRY_POINT = "solve"


def phrase_weights(distribution: str, count: int) -> list[float]:
    """'zipf' or 'zipf:S': rank r drawn with weight 1 / r^S (S = ZIPF_EXPONENT by default); 'uniform': alike."""
    if distribution == "uniform":
        return [1.0] * count
    exponent = float(distribution.split(":")[1]) if ":" in distribution else ZIPF_EXPONENT
    return [1 / r ** exponent for r in range(1, count + 1)]


def write_solution(condition, change, reduction, rng) -> str:
    """The function's body in one of three styles with random names; each does the same thing."""
    ys, v = rng.choice(NAMES), rng.choice(ITEM_NAMES)
    keep, new = condition.format(v=v), change.format(v=v)
    style = rng.randrange(3)
    if style == 0:
        lines = [f"{ys} = [{v} for {v} in xs if {keep}]", f"{ys} = [{new} for {v} in {ys}]",
                 f"return {reduction.format(ys=ys)}"]
    elif style == 1:
        lines = [f"{ys} = []", f"for {v} in xs:", f"    if {keep}:", f"        {ys}.append({new})",
                 f"return {reduction.format(ys=ys)}"]
    else:
        lines = [f"return {reduction.format(ys=f'[{new} for {v} in xs if {keep}]')}"]
    return "".join(f"    {line}\n" for line in lines)


def make_problem(rng: random.Random, distribution: str = "uniform") -> dict:
    """One problem as a HumanEval row: its prompt (signature and docstring), one canonical solution of the
    many the styles allow, and four asserts whose expected values the canonical solution computes."""
    steps = []
    for table in (FILTERS, MAPS, REDUCTIONS):
        words, code = rng.choices(table, phrase_weights(distribution, len(table)))[0]
        k = rng.randint(2, 5)
        steps.append((words.replace("{k}", str(k)), code.replace("{k}", str(k))))
    (f, condition), (m, change), (r, reduction) = steps
    docstring = rng.choice(DOCSTRINGS).format(f=f, m=m, r=r)
    prompt = f'def {ENTRY_POINT}(xs):\n    """{docstring[0].upper() + docstring[1:]}"""\n'
    solution = write_solution(condition, change, reduction, rng)
    namespace = {}
    exec(prompt + solution, namespace)   # our own generated code: the expected values
    kept = [digit for digit in range(10) if eval(condition.format(v=str(digit)))]
    inputs = []
    for _ in range(4):
        xs = [rng.randint(0, 9) for _ in range(rng.randint(4, 7))]
        if not any(x in kept for x in xs):   # one item at least is kept, so nothing empty is reduced
            xs[rng.randrange(len(xs))] = rng.choice(kept)
        inputs.append(xs)
    asserts = "".join(f"    assert candidate({xs}) == {namespace[ENTRY_POINT](xs)!r}\n" for xs in inputs)
    return {"task_id": f"code/{hashlib.sha256(prompt.encode()).hexdigest()[:8]}", "prompt": prompt,
            "canonical_solution": solution, "test": f"def check(candidate):\n{asserts}", "entry_point": ENTRY_POINT}


def is_test_problem(prompt: str) -> bool:
    """The split is a property of the text: 1 problem in 8 is test, whatever the seed."""
    return hashlib.sha256(prompt.encode()).digest()[0] % 8 == 0


def make_problems(n: int, split: str, seed: int, distribution: str = "uniform", distinct: bool = True) -> list[dict]:
    """n problems from one split ("train" or "test"), reproducible from seed; distinct prompts unless a corpus
    asks otherwise (a Zipf-skewed corpus repeats its common prompts, with other solutions)."""
    rng, rows, seen = random.Random(f"code-{split}-{seed}"), [], set()
    while len(rows) < n:
        row = make_problem(rng, distribution)
        if is_test_problem(row["prompt"]) == (split == "test") and not (distinct and row["prompt"] in seen):
            seen.add(row["prompt"])
            rows.append(row)
    return rows
