"""The story world with a foreign teacher (issue #26): the same problems and decisions written in another dialect,
a teacher with a tokenizer of its own (and a twin in the student's tokenizer for token-level OPD), and the
degenerate-pattern measures bench/compare.py reports."""

import json
import math
import re

import pytest
import torch

import omniopd
from conftest import ROOT
from omniopd_lib import grading, models
import toyworld
from omniopd_lib.common import OmniOPDError
from toyworld import stories


@pytest.fixture
def bench(monkeypatch):
    """bench/ holds scripts, not a package: each imports its neighbours as a script run from there would."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))


def test_the_foreign_dialect_solves_the_same_problems_with_the_same_decisions():
    ours = stories.make_problems(300, "train", 7)
    theirs = stories.make_problems(300, "train", 7, dialect="foreign")
    for mine, foreign in zip(ours, theirs, strict=True):
        assert mine["question"] == foreign["question"]
        # the same chain of totals, one step at a time, each operation in words instead of signs
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", mine["answer"])
        worded = re.findall(r"(\d+) (plus|minus) (\d+) (?:makes|gives|equals) (\d+)", foreign["answer"])
        assert [(a, "+" if op == "plus" else "-", b, c) for a, op, b, c in worded] == equations
        assert grading.extract_answer(foreign["answer"]) == grading.extract_answer(mine["answer"])
        assert "####" not in foreign["answer"]


def test_the_foreign_dialect_shares_none_of_the_students_own_words():
    theirs = " ".join(r["answer"] for r in stories.make_problems(600, "train", 8, dialect="foreign"))
    for word in ["First", *stories.CONNECTIVES, "we add", "take away", "starts with", "We begin", "####",
                 *[f" {thing}" for thing in stories.OBJECTS]]:
        assert word not in theirs, word
    for word in [*stories.FOREIGN_CONNECTIVES, "To begin", "plus", "minus", "The final count is"]:
        assert word in theirs, word


def test_the_foreign_world_is_the_story_world_with_another_teacher():
    assert toyworld.world_options("stories-foreign") == {"student": "stories", "teacher": "stories-foreign",
                                                         "data": "stories", "eval_data": "stories"}
    assert models.resolve_model_path("stories-foreign", "teacher") == str(stories.FOREIGN_TEACHER_DIR)
    assert models.resolve_model_path("stories-foreign-shared", "teacher") == str(stories.FOREIGN_SHARED_DIR)
    # the cap fits the foreign dialect's solutions (160 student tokens at most); the story world keeps its own
    assert omniopd.Config(**toyworld.world_options("stories-foreign")).resolved().max_new_tokens == 176
    assert omniopd.Config(**toyworld.world_options("stories")).resolved().max_new_tokens == 96
    assert omniopd.Config(student="stories", teacher="stories-foreign-shared").resolved().max_new_tokens == 176


def test_answer_patterns_count_loops_missing_answer_lines_and_length(bench):
    from compare import answer_patterns
    solution = "Ann starts with 7 coins. First we add 5: 7 + 5 = 12. Then we add 2: 12 + 2 = 14.\n#### 14"
    loop = "Ann starts with 7 coins. " + "Then we add 5 coins. " * 3
    patterns = answer_patterns([solution, loop, "The final count is 14."])
    assert patterns["loops"] == pytest.approx(1 / 3) and patterns["no_answer_line"] == pytest.approx(2 / 3)
    assert patterns["words"] == pytest.approx((len(solution.split()) + len(loop.split()) + 5) / 3)
    # no correct solution of the story world, in either dialect, counts as a loop
    rows = stories.make_problems(300, "test", 0) + stories.make_problems(300, "test", 0, dialect="foreign")
    assert answer_patterns([r["answer"] for r in rows])["loops"] == 0


@pytest.mark.parametrize("name", ["stories-foreign", "stories-foreign-shared"])
def test_the_shipped_foreign_teachers_are_strong_in_their_own_dialect(name):
    model, tokenizer = models.load_model(name, "teacher", torch.device("cpu"))
    folder = toyworld.world_model_dir(name, "teacher")
    report = json.loads((folder / "build_report.json").read_text())
    assert report["test_accuracy"] >= 0.9, report
    student_tokenizer = models.load_model("stories", "student", torch.device("cpu"))[1]
    assert (tokenizer.get_vocab() == student_tokenizer.get_vocab()) == name.endswith("-shared")
    # evaluated under the foreign world's own cap, as every row of its comparison is: a student that writes exactly
    # like its teacher (the twin in the student's tokenizer is one) is not cut before its answer (issue #32)
    cfg = omniopd.Config(**toyworld.world_options("stories-foreign")).resolved()
    accuracy, records = grading.evaluate(model, tokenizer, stories.make_problems(32, "test", 0), cfg)
    assert accuracy >= 0.9, accuracy
    assert all("####" not in r["output"] for r in records)   # it answers in its own layout


def test_an_offline_model_not_built_here_is_one_line_that_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(toyworld, "world_model_dir", lambda name, role: tmp_path / "missing")
    with pytest.raises(OmniOPDError, match=r"not built here .* python -m omniopd_tools.build_world --world stories-foreign$"):
        models.load_model("stories-foreign", "teacher", torch.device("cpu"))


def test_the_real_pairs_test_problems_are_never_training_problems(tmp_path, bench):
    """bench/real_lm.py scores every row on exactly --eval-size held-out problems: none is also a training
    problem (chain_sum at this difficulty repeats: about a fifth of a plain second seed's problems would be)."""
    from real_lm import write_data
    train, test = write_data(tmp_path, 2000, 200)
    seen = {json.loads(line)["question"] for line in open(train)}
    held_out = [json.loads(line) for line in open(test)]
    assert len(seen) > 1000 and len(held_out) == 200
    assert not seen & {row["question"] for row in held_out}
    assert all(row["answer"].lstrip("-").isdigit() for row in held_out)


def test_the_privileged_teacher_prompt_gives_the_teacher_the_rows_answer(tmp_path):
    """--teacher smollm2-privileged: the prompt file passes --teacher-prompt's checks and carries the reference
    answer and the prefix to the teacher."""
    from omniopd_lib.teachers import read_teacher_prompt
    from omniopd_tools.real_models import PRIVILEGED_PROMPT, REAL_TEACHERS
    assert REAL_TEACHERS["smollm2-privileged"][2] == PRIVILEGED_PROMPT and REAL_TEACHERS["gemma"][1] == "completion"
    path = tmp_path / "prompt.txt"
    path.write_text(PRIVILEGED_PROMPT)
    text = read_teacher_prompt(str(path)).format(answer="42", prefix="Question: 40 + 2 =\nAnswer: ", question="")
    assert "Correct final answer: 42" in text and text.endswith("Answer: ")


def test_the_census_labels_a_draft_by_the_answer_the_students_dialect_reaches_from_it(bench):
    """bench/diagnose.py --census: a draft is right when the story world's teacher, continuing prefix + draft
    greedily, reaches the right answer; a wrong operation or a wrong sum leads it to a wrong one."""
    from diagnose import drafts_reach_answer
    from omniopd_lib.teachers import HFTeacher
    cfg = omniopd.Config(**toyworld.world_options("stories-foreign")).resolved()
    row = stories.make_problems(1, "test", 0)[0]
    assert "First he has 7 more: 3 + 7 = 10. After that he has 3 more: 10 + 3 = 13." in row["answer"]
    prefix = (cfg.prompt_template.format(question=row["question"])
              + "At first Cal has 3 books. First he has 7 more: 3 + 7 = 10. After that he has 3 ")
    drafts = ["more: 10 + 3 = 13.", "fewer: 10 - 3 = 7.", "more: 10 + 3 = 14."]
    assert drafts_reach_answer(HFTeacher("stories", "cpu"), [row], [prefix], [drafts], 96) == [[True, False, False]]


def test_the_census_labels_a_code_draft_by_whether_the_worlds_teacher_completes_it_to_a_passing_program(bench):
    """bench/census.py --world code: a draft is right when the code world's teacher, continuing prefix + draft
    greedily, writes a program that passes the row's tests in the sandbox; a draft that keeps the wrong items
    leads it to one that fails. The teacher's own continuations are judged the same way."""
    from census import drafts_pass_tests, solutions_pass
    from omniopd_lib import data
    from omniopd_lib.teachers import HFTeacher
    cfg = omniopd.Config(**toyworld.world_options("code")).resolved()
    row = data.load_rows(cfg.data, "test", 0, task="code")[0]
    assert "Keep the items of at most 3, take each modulo 4, then return them sorted." in row["question"]
    prompt = cfg.prompt_template.format(question=row["question"])
    written = "    ys = [x for x in xs if x"
    drafts = [" <= 3]\n", " > 3]\n"]
    labels = drafts_pass_tests(HFTeacher("code", "cpu"), [row], [prompt + written], [written], [drafts],
                               cfg.max_new_tokens, cfg)
    assert labels == [[True, False]]
    assert solutions_pass([(row, row["answer"]), (row, "    return xs\n")], cfg) == [True, False]


def test_the_sweep_tries_past_an_edge_where_a_methods_best_rate_lands(monkeypatch, tmp_path, bench):
    """bench/compare.py: a method whose best validation score is at the grid's lowest rate is tried at half of it,
    again while the new rate is best (so the best has a worse rate on each side); a method best inside the grid is not extended (issue #32: on the foreign
    world every method but SFT chose the lowest rate). The trainings are replaced by a score per rate: what is
    tested is which rates the sweep asks for and which it keeps."""
    import argparse
    import compare
    peak = {"OmniOPD": 1.25e-5, "SFT": 2e-4}   # OmniOPD's best lies two halvings below the grid, SFT's inside it
    asked = []

    def scored(jobs, args, started):
        asked.extend((name, lr) for name, _, _, lr, _, _ in jobs)
        return [{"row": name, "lr": lr, "accuracy": 1 / (1 + abs(math.log2(lr / peak.get(name, 2e-4))))}
                for name, _, _, lr, _, _ in jobs]
    monkeypatch.setattr(compare, "run_all", scored)
    args = argparse.Namespace(lrs=[5e-5, 1e-4, 2e-4, 4e-4, 8e-4], selected={"OmniOPD", "SFT"}, sweep_extend=3,
                              sweep_seed=100, runs=str(tmp_path), world="stories", valid_size=4)
    chosen, results = compare.sweep(args, 0.0, {})
    assert chosen == {"OmniOPD": 1.25e-5, "SFT": 2e-4}
    assert sorted(lr for name, lr in asked if name == "OmniOPD") == [6.25e-6, 1.25e-5, 2.5e-5, 5e-5, 1e-4, 2e-4,
                                                                        4e-4, 8e-4]
    assert sorted(lr for name, lr in asked if name == "SFT") == args.lrs
    assert compare.best_rate({1e-4: 0.5, 2e-4: 0.5, 4e-4: 0.5}) == 2e-4   # a tie: the middle of what was tried


def test_the_foreign_teacher_reads_a_solution_the_student_began(bench):
    """Issue #32: an LLM teacher reads whatever prefix it is given; the foreign teacher learned to (stories.
    read_on_lesson), so continuing the student's-dialect reference solution cut after k sentences it reaches the
    right answer (the teacher that never read the student's dialect: 27 % at k = 1, 5.5 % at k = 2, 4 % at k = 3),
    and from a bare "Answer:" it still writes its own dialect."""
    from teacher_reads_student import continued_right
    from omniopd_lib.teachers import HFTeacher
    teacher = HFTeacher("stories-foreign", "cpu")
    rows = stories.make_problems(48, "test", 0)
    template = omniopd.Config().resolved().prompt_template
    shares = [continued_right(teacher, rows, k, template) for k in (1, 2, 3)]
    assert min(shares) >= 0.8, shares
    model, tokenizer = teacher.model, teacher.tokenizer
    cfg = omniopd.Config(**toyworld.world_options("stories-foreign")).resolved()
    _, records = grading.evaluate(model, tokenizer, rows[:16], cfg)
    assert not any("####" in r["output"] or " we add " in r["output"] for r in records)


def test_clean_end_counts_answers_that_stop_at_their_final_line(bench, tmp_path, capsys, monkeypatch):
    """bench/clean_end.py: an answer that writes on after "#### N" (a student that learned not to stop) is not a
    clean end; a sweep's validation run (seed 100) is left out."""
    import clean_end
    outputs = ["A. First we add 2: 1 + 2 = 3.\n#### 3", "A. First we add 2: 1 + 2 = 3.\n#### 3900 989: 1 - 2",
               "A. First we add 2: 1 + 2 = 3.\n#### 3\n#### 3", "A. First we add 2: 1 + 2 = 3.\n#### 3\n"]
    for name in ("OmniOPD-seed0-lr0.0001", "OmniOPD-seed100-lr0.0001"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval-step-000060.jsonl").write_text(
            "".join(json.dumps({"output": o, "correct": i == 0}) + "\n" for i, o in enumerate(outputs)))
    monkeypatch.setattr("sys.argv", ["clean_end.py", str(tmp_path)])
    clean_end.main()
    table = capsys.readouterr().out
    assert "| OmniOPD | 0.0001 | 60 | 0 | 25.0% | 50.0% |" in table and "seed100" not in table and table.count("| OmniOPD") == 1
