"""The story world (toyworld/stories.py): its problems, its tokenizer and its shipped models."""

import json
import re

import pytest
import torch

import omniopd
from omniopd_lib import models
from omniopd_lib import grading
from toyworld import stories


def true_total(question: str) -> int:
    """The answer worked out from the question's words alone: the start, then each verb's meaning."""
    start = int(re.search(r" has (\d+) ", question).group(1))
    total = start
    verbs = sorted(stories.GAIN_VERBS + stories.LOSS_VERBS, key=len, reverse=True)
    for sentence in question.split(". ")[1:1 + stories.STEPS]:
        verb = next(v for v in verbs if f" {v} " in f" {sentence} ")
        amount = int(re.search(rf" {verb} (\d+) ", f" {sentence} ").group(1))
        total += amount if verb in stories.GAIN_VERBS else -amount
    return total


def test_every_solution_adds_up_and_the_splits_are_disjoint():
    train, test = stories.make_problems(400, "train", 0), stories.make_problems(400, "test", 0)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for row in train + test:
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", row["answer"])
        assert len(equations) == stories.STEPS, row
        for a, sign, b, result in equations:
            assert int(result) == (int(a) + int(b) if sign == "+" else int(a) - int(b)) >= 0, row
        assert grading.extract_answer(row["answer"]) == equations[-1][3] == str(true_total(row["question"])), row


def test_one_problem_has_solutions_in_three_styles_and_every_verb_is_a_task():
    rows = stories.make_problems(600, "train", 1)
    openings = {row["answer"].split(" ")[0] for row in rows}   # "Ann ...", "At ...", "We ..."
    assert {"At", "We"} <= openings and len(openings) > 2
    used = " ".join(row["question"] for row in rows)
    assert all(f" {verb} " in used for verb in stories.GAIN_VERBS + stories.LOSS_VERBS)
    skewed = " ".join(r["question"] for r in stories.make_problems(600, "train", 1, distribution="zipf:3"))
    assert skewed.count(" buys ") > 20 * max(1, skewed.count(" is sent "))   # the student's corpus: a long tail


def test_the_shipped_tokenizer_writes_words_and_round_trips():
    _, tokenizer = models.load_model("stories", "student", torch.device("cpu"))
    row = stories.make_problems(1, "test", 3)[0]
    ids = tokenizer(row["answer"])["input_ids"]
    assert tokenizer.decode(ids) == row["answer"]
    words = row["answer"].split()
    assert len(ids) < 2 * len(words)             # a word is one token, a digit one, punctuation one
    assert tokenizer.convert_ids_to_tokens(tokenizer(". She donates 3. Then we take away 3")["input_ids"]) == \
        [".", "ĠShe", "Ġdonates", "Ġ", "3", ".", "ĠThen", "Ġwe", "Ġtake", "Ġaway", "Ġ", "3"]


@pytest.mark.parametrize("role,low,high", [("teacher", 0.95, 1.0), ("student", 0.3, 0.85)])
def test_the_shipped_models_are_what_their_build_reports_say(role, low, high):
    model, tokenizer = models.load_model("stories", role, torch.device("cpu"))
    report = json.loads((stories.TEACHER_DIR if role == "teacher" else stories.STUDENT_DIR)
                        .joinpath("build_report.json").read_text())
    assert low <= report["test_accuracy"] <= high
    cfg = omniopd.Config(student="stories").resolved()
    accuracy, _ = grading.evaluate(model, tokenizer, stories.make_problems(48, "test", 0), cfg)
    assert low - 0.1 <= accuracy <= high, accuracy


def test_the_default_command_trains_on_the_story_world(tmp_path, capsys):
    out = tmp_path / "run"
    code = omniopd.main(["--steps", "2", "--batch-size", "4", "--eval-size", "8", "--out", str(out)])   # no world named
    assert code == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss/chunk" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["forks/count"] > 0 and torch.isfinite(torch.tensor(m["loss/total"])) for m in steps), steps
    config = json.loads((out / "config.json").read_text())
    assert [config[k] for k in ("student", "teacher", "data", "eval_data", "max_new_tokens")] == ["stories"] * 4 + [96]
