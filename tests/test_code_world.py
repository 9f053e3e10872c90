"""The code world (toyworld/code.py): its problems and tests, its tokenizer, its shipped models, and every
method running on code through the CLI."""

import collections
import json
import re

import pytest
import torch

from omniopd_lib import codetask
import omniopd
from omniopd_lib import grading
from omniopd_lib import data
from omniopd_lib import models
import toyworld
from toyworld import code


def rows(n, split, seed=0):
    return [codetask.code_row(r, r["task_id"]) for r in code.make_problems(n, split, seed)]


def test_every_canonical_solution_passes_its_tests_and_the_splits_are_disjoint():
    train, test = rows(150, "train"), rows(150, "test")
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    verdicts = codetask.check_many([codetask.program_of(r, r["answer"]) for r in train + test],
                                   [r["tests"] for r in train + test], workers=2)
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts if not v.passed][:3]
    assert all(len(r["tests"]["asserts"][0].split("assert candidate(")) == 5 for r in train + test)   # 4 asserts


def test_the_task_draws_every_phrase_and_the_student_corpus_has_a_zipf_tail():
    task = code.make_problems(600, "train", 5)
    corpus = code.make_problems(4000, "train", 1000, distribution=f"zipf:{code.STUDENT_ZIPF_EXPONENT}", distinct=False)

    patterns = sorted(((re.escape(words).replace(r"\{k\}", r"\d"), rank) for rank, (words, _) in enumerate(code.FILTERS)),
                      key=lambda pattern: -len(pattern[0]))   # the longest phrase first

    def filter_counts(problems):
        return collections.Counter(next(rank for pattern, rank in patterns if re.search(pattern, p["prompt"]))
                                   for p in problems)
    uniform, skewed = filter_counts(task), filter_counts(corpus)
    assert len(uniform) == len(code.FILTERS) and min(uniform.values()) > 25   # 50 expected
    assert skewed[0] > 0.75 * len(corpus) and sum(skewed[i] for i in range(6, len(code.FILTERS))) < 0.01 * len(corpus)


def test_one_prompt_has_solutions_in_three_styles():
    rng_rows = [code.make_problem(__import__("random").Random(i)) for i in range(60)]
    bodies = [r["canonical_solution"] for r in rng_rows]
    assert any("for " in b and ".append(" in b for b in bodies)                # a loop
    assert any(b.count("\n") == 1 for b in bodies)                               # one line
    assert any(b.count("\n") == 3 and "append" not in b for b in bodies)         # comprehensions


@pytest.mark.parametrize("role,low,high", [("teacher", 0.9, 1.0), ("student", 0.2, 0.8)])
def test_the_shipped_models_are_what_their_build_reports_say(role, low, high):
    model, tokenizer = models.load_model("code", role, torch.device("cpu"))
    report = json.loads(toyworld.world_model_dir("code", role).joinpath("build_report.json").read_text())
    assert low <= report["test_accuracy"] <= high
    cfg = omniopd.Config(**toyworld.world_options("code")).resolved()
    accuracy, records = grading.evaluate(model, tokenizer, data.load_rows("code", "test", 0, 48, task="code"), cfg)
    assert low - 0.1 <= accuracy <= high, accuracy
    assert all(r["reason"] for r in records)


def test_the_shipped_tokenizer_writes_code_symbols_and_round_trips():
    _, tokenizer = models.load_model("code", "student", torch.device("cpu"))
    row = rows(1, "test", 3)[0]
    text = row["question"] + row["answer"]
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text and len(ids) < 0.5 * len(text)


@pytest.mark.parametrize("method", [["omniopd"], ["opd", "--opd-kl", "full"], ["sft"], ["grpo"]])
def test_every_method_runs_on_the_code_world(tmp_path, capsys, method):
    out = tmp_path / "run"
    status = omniopd.main([*toyworld.world_args("code"), "--method", *method, "--steps", "2", "--batch-size", "4",
                           "--eval-size", "8", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss/total"])) for m in steps)
    config = json.loads((out / "config.json").read_text())
    assert (config["task"], config["prompt_template"], config["max_new_tokens"]) == ("code", "{question}", 64)
    records = [json.loads(line) for line in (out / "eval-step-000002.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all("def solve(xs)" in r["program"] for r in records)
    # the run's page (#35): each recorded step's programs were graded by the sandbox, and the page draws them
    from omniopd_tools import view
    recorded = [json.loads(line) for line in (out / "view.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recorded] == [1, 2]
    assert all(r["correct"] in (True, False) for step in recorded for r in step["rollouts"])
    assert view.page(out).count('class="forkbox"') == sum(len(step["forks"]) for step in recorded)


def test_mean_at_n_checks_every_sampled_program():
    """--eval-samples n: each record's sampled_correct is the share of its n sampled programs that pass."""
    model, tokenizer = models.load_model("code", "teacher", torch.device("cpu"))
    cfg = omniopd.Config(**toyworld.world_options("code")).resolved()
    problems = data.load_rows("code", "test", 0, 6, task="code")
    torch.manual_seed(0)
    greedy, records = grading.evaluate(model, tokenizer, problems, cfg, samples=3)
    assert all(r["sampled_correct"] in (0.0, 1 / 3, 2 / 3, 1.0) for r in records)
    assert greedy >= 5 / 6 and sum(r["sampled_correct"] for r in records) / len(records) > 0.5   # a 97 % teacher


def test_scale_trains_on_the_code_world(tmp_path):
    """scale/train.py imports the same grade(): GRPO's reward and the evaluation run programs there too."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(ROOT / "scale" / "train.py"), *toyworld.world_args("code"), "--method", "grpo", "--steps", "2",
               "--batch-size", "8", "--eval-size", "8", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]
    assert [m["step"] for m in steps] == [1, 2] and all(0.0 <= m["grpo/reward"] <= 1.0 for m in steps)
    records = [json.loads(line) for line in (out / "eval-step-000002.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["reason"] for r in records)
