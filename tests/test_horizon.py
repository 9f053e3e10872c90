"""Issue #32: how far the compared texts run (--horizon, --draft-rollouts), the similarities that read content
(numbers, answer), and the decision to stop (a text that ends at once agrees only with one that does; a chat teacher
says [END]). Hand-computed values on tiny inputs, then the real story-world models."""

import dataclasses
import json

import pytest
import torch

import omniopd
import toyworld
from omniopd_lib import codetask, models
from omniopd_lib.similarity import Similarity, answer_agreement, numbers_f1
from omniopd_lib.teachers import CHAT_CONTINUE_PROMPT, END_MARK, HFTeacher, OpenAITeacher, teacher_answer
from toyworld import stories
from omniopd_lib.common import OmniOPDError
from omniopd_lib.generation import stop_token_ids


# ── the horizon's cut ─────────────────────────────────────────────────────────────────────────────────────────────

FOREIGN_STEP = " she is down 3, so 12 minus 3 makes 9. Afterwards she gains 2, so 9 plus 2 makes 11.\nAnswer: 11"


def test_step_horizon_ends_at_the_first_sentence_or_line_end_and_end_keeps_everything():
    assert omniopd.horizon_text(FOREIGN_STEP, "step") == " she is down 3, so 12 minus 3 makes 9."
    assert omniopd.horizon_text(" 2.5 more, so 3 + 2.5 = 5.5\nThen", "step") == " 2.5 more, so 3 + 2.5 = 5.5\n"
    assert omniopd.horizon_text(" and on", "step") == " and on"          # no boundary: all of it
    assert omniopd.horizon_text("", "step") == ""
    assert omniopd.horizon_text(FOREIGN_STEP, "end") == FOREIGN_STEP


@pytest.mark.parametrize("world", ["stories", "stories-foreign"])
def test_chunk_horizon_cuts_at_L_student_tokens_whatever_the_teachers_tokenizer(world):
    """The chunk cut counts the student's tokens: the foreign dialect costs the student's tokenizer more of them,
    so the same L keeps less of it; the step cut counts none (a sentence in either tokenizer)."""
    student_tokenizer = models.load_model("stories", "student", torch.device("cpu"))[1]
    teacher_tokenizer = models.load_model(world, "teacher", torch.device("cpu"))[1]
    text = FOREIGN_STEP if world == "stories-foreign" else " we take away 3: 12 - 3 = 9. Next we add 2: 9 + 2 = 11."
    cut = omniopd.horizon_text(text, "chunk", student_tokenizer, 8)
    assert len(student_tokenizer(cut, add_special_tokens=False)["input_ids"]) == 8 and text.startswith(cut)
    step = omniopd.horizon_text(text, "step", teacher_tokenizer, 8)
    assert step.endswith(".") and step.count(".") == 1
    assert len(student_tokenizer(step, add_special_tokens=False)["input_ids"]) > 8   # past L: to the step's end


def test_teacher_rollouts_run_to_the_horizon_with_a_real_foreign_teacher():
    student_tokenizer = models.load_model("stories", "student", torch.device("cpu"))[1]
    teacher = HFTeacher("stories-foreign", "cpu")
    row = stories.make_problems(1, "test", 3)[0]
    prefix = omniopd.Config().resolved().prompt_template.format(question=row["question"])
    torch.manual_seed(0)
    steps = omniopd.teacher_rollouts(teacher, [prefix], 3, 16, student_tokenizer, horizon="step").wait()[0]
    torch.manual_seed(0)
    ends = omniopd.teacher_rollouts(teacher, [prefix], 3, 16, student_tokenizer, horizon="end",
                                    max_new_tokens=176).wait()[0]
    for step, end in zip(steps, ends):
        assert end.startswith(step) and step.rstrip().endswith(".") and step.count(". ") == 0
    assert all(text.strip().endswith(stories.make_problems(1, "test", 3, dialect="foreign")[0]["answer"].split()[-1])
               or text.strip().split()[-1].rstrip(".").isdigit() for text in ends)   # it finishes its solution


def test_drafts_are_carried_on_by_the_students_own_rollouts_to_the_horizon():
    student, tokenizer = models.load_model("stories", "student", torch.device("cpu"))
    cfg = omniopd.Config(max_new_tokens=96, batch_size=2).resolved()
    rows = stories.make_problems(2, "test", 0)
    torch.manual_seed(0)
    rollout = omniopd.sample_rollouts(student, tokenizer, [r["question"] for r in rows], cfg)
    forks = [(0, 3), (1, 10)]
    drafts = omniopd.draft_chunks(student, tokenizer, rollout, forks, 3, 4, 1.0)
    stop = set(stop_token_ids(student, tokenizer))
    chunk_texts, chunk_ended = omniopd.drafts_to_horizon(student, tokenizer, drafts, "chunk", 2, 96, 1.0)
    assert [len(t) for t in chunk_texts] == [3, 3]   # the chunk horizon compares the drafts themselves
    for horizon in ("step", "end"):
        texts, finished = omniopd.drafts_to_horizon(student, tokenizer, drafts, horizon, 2, 96, 1.0)
        assert [len(t) for t in texts] == [6, 6]   # K · R, draft k's R rollouts in a row
        for f in range(2):
            for k in range(3):
                for r in range(2):
                    text = texts[f][2 * k + r]
                    own = chunk_texts[f][k]
                    assert text.startswith(own) or own.startswith(text)   # the step may end inside the draft
                    if horizon == "end":
                        assert finished[f][2 * k + r] == ("#### " in text)   # the story student always ends so
                    else:
                        assert text.rstrip().endswith((".", "\n")) or "\n" in text or not finished[f][2 * k + r]
        assert all(isinstance(done, bool) for row in finished for done in row)
    assert stop   # the world's student has a stop token: an unfinished rollout is one cut by the budget


# ── similarities that read content ────────────────────────────────────────────────────────────────────────────────

def test_numbers_similarity_by_hand():
    assert numbers_f1(" we add 3: 12 + 3 = 15.", " she gains 3, so 12 plus 3 makes 15.") == 1.0
    # {12, 3, 9} against {12, 3, 15}: 2 shared of 3 and 3 -> F1 2/3
    assert numbers_f1(" 12 - 3 = 9.", " 12 plus 3 makes 15.") == pytest.approx(2 / 3)
    # {3, 12, 3, 9} against {12, 3, 15}: 2 shared, precision 2/4, recall 2/3 -> F1 4/7
    assert numbers_f1(" we take away 3: 12 - 3 = 9.", " 12 plus 3 makes 15.") == pytest.approx(4 / 7)
    assert numbers_f1("7 7", "7") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))   # multiplicity counts
    assert numbers_f1(" more", " 12 plus 3") == 0.5   # no number on one side: undecided
    assert numbers_f1("", "") == 1.0 and numbers_f1("", " 12") == 0.0   # the stop rule


def test_answer_agreement_by_hand():
    context = "Ann starts with 7 coins. First we add 5: 7 + 5 = 12."
    drafts = [" Then we take away 3: 12 - 3 = 9.\n#### 9",      # reaches 9
              " Then we add 3: 12 + 3 = 15.\n#### 15",           # reaches 15
              " Then we take away 3: 12 - 3 = 9. Then we take away 3: 12 - 3 = 9",   # cut by the budget
              ""]                                                # ends here: its answer is the context's (12)
    teacher = [" Afterwards she is down 3, so 12 minus 3 makes 9. The final count is 9.", " The final count is 9.0.",
               ""]
    S = answer_agreement(drafts, teacher, context, [True, True, False, True])
    assert S.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]]


ADD_ROW = {"text": "Write a function add(a, b) that returns their sum.",
           "test_list": ["assert add(0, 0) == 0", "assert add(1, 2) == 3"]}


def test_answer_on_code_compares_the_shares_of_tests_the_programs_pass_by_hand():
    """answer on code: S_km = 1 − |f_k − f_m|, f the share of the row's two tests a program passes, each run in the
    sandbox: a right draft (f = 1), a product (f = ½: add(0, 0) passes), a draft that ends at once (no function,
    f = 0); the teacher writes a right program in other words (f = 1) and a constant 0 (f = ½)."""
    row = codetask.code_row(ADD_ROW, "row 1")
    drafts = ["def add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a * b\n```", ""]
    teacher = ["def add(x, y):\n    total = y + x\n    return total\n```", "def add(a, b):\n    return 0\n```"]
    similarity = Similarity("answer", checker=(codetask.Limits(), 2))
    S = omniopd.similarity_matrices(similarity, [drafts], [teacher], [""], [[True] * 3], rows_F=[row])[0]
    assert S.tolist() == [[1.0, 0.5], [0.5, 1.0], [0.0, 0.5]]
    with pytest.raises(OmniOPDError, match="rows are needed"):
        similarity.matrices([drafts], [teacher])


def test_answer_similarity_needs_the_end_horizon_and_rollouts_must_be_positive():
    with pytest.raises(OmniOPDError, match="needs --horizon end"):
        omniopd.check_config(omniopd.Config(similarity="answer", horizon="step").resolved())
    with pytest.raises(OmniOPDError, match="--draft-rollouts"):
        omniopd.check_config(omniopd.Config(horizon="end", draft_rollouts=0).resolved())
    omniopd.check_config(omniopd.Config(similarity="answer", horizon="end").resolved())


def test_similarity_averages_over_a_drafts_rollouts():
    """S_km = (1/R) Σ_r sim(c^k ⊕ e^kr, r^m): draft 1's two rollouts reach 9 and 15, draft 2's both 15."""
    S = omniopd.similarity_matrices(Similarity("answer"), [["\n#### 9", "\n#### 15", "\n#### 15", "\n#### 15"]],
                                    [[" 9.", " 9.", " 15."]], [""], [[True] * 4], num_rollouts=2)[0]
    assert S.tolist() == [[0.5, 0.5, 0.5], [0.0, 0.0, 1.0]]


# ── the decision to stop ──────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("kind", ["embed", "lexical", "ned", "rouge1", "numbers"])
def test_a_teacher_that_ends_votes_for_the_draft_that_ends(kind):
    """A draft that ends at once ("", its [EOS]) and a teacher continuation that ends at once agree (1), and
    neither agrees with text that goes on (0), under every similarity; p̂ then puts the ending votes on it."""
    drafts = ["", " Then we add 2: 9 + 2 = 11.", " Then we take away 2: 9 - 2 = 7."]
    teacher = ["", "", " Then we add 2: 9 + 2 = 11.", ""]
    S = Similarity(kind).matrices([drafts], [teacher])[0]
    assert S[0].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert S[1:, [0, 1, 3]].abs().max() == 0
    target = omniopd.dirichlet_preference(S, alpha=1.0, vote_temperature=0.1)
    assert target[0] > 0.55 and target.argmax() == 0   # three of four continuations end: so does the target


def test_a_chat_teacher_can_say_the_solution_is_complete():
    assert END_MARK in CHAT_CONTINUE_PROMPT
    assert teacher_answer("[END]", stopped=False) == "" and teacher_answer("  [END]\n", stopped=False) == ""
    assert teacher_answer(" = 12.\n#### 12 [END]", stopped=False) == " = 12.\n#### 12"
    assert teacher_answer("", stopped=False) is None   # empty and cut by the budget: a failed request
    from omniopd_tools.real_models import PRIVILEGED_PROMPT
    assert END_MARK in PRIVILEGED_PROMPT


def test_a_chat_teacher_over_http_that_says_end_votes_to_stop(serve, monkeypatch):
    """A real OpenAI-compatible server on loopback answers "[END]": the run's teacher text is "", which agrees with
    the draft that ends."""
    monkeypatch.setenv("OPENAI_API_KEY", "loopback")
    _, url = serve("echo", reply=END_MARK)
    teacher = OpenAITeacher("echo", url, mode="chat", timeout=10, retries=0)
    answers = teacher.continuations(["Question: 1 + 1?\nAnswer: 2.\n#### 2"], 2, 16)
    assert answers == [["", ""]]
    S = Similarity("lexical").matrices([["", " and so on"]], answers)[0]
    assert S.tolist() == [[1.0, 1.0], [0.0, 0.0]]


# ── whole runs ────────────────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("objective,horizon,similarity", [("drafts", "end", "answer"), ("drafts", "step", "numbers"),
                                                           ("audit", "step", "ned"), ("audit", "end", "answer")])
def test_a_run_with_each_horizon_trains_and_logs(tmp_path, objective, horizon, similarity):
    summary = omniopd.train(omniopd.Config(objective=objective, horizon=horizon, similarity=similarity, steps=1,
                                           batch_size=4, eval_size=4, eval_teacher=False, draft_rollouts=2,
                                           out=str(tmp_path / "run")).resolved())
    metrics = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]
    assert len(metrics) == 1 and summary["after"]["eval/accuracy"] >= 0
    saved = (tmp_path / "run" / "config.json").read_text()
    assert f'"horizon": "{horizon}"' in saved and '"draft_rollouts": 2' in saved


def test_a_code_world_run_compares_drafts_by_their_tests(tmp_path):
    """--similarity answer on the code world: each draft, carried on to the end, and each teacher continuation
    become programs that run the row's tests in the sandbox; p̂ follows the shares they pass."""
    out = tmp_path / "run"
    omniopd.train(omniopd.Config(**toyworld.world_options("code"), horizon="end", similarity="answer", steps=1,
                                 batch_size=4, eval_size=4, eval_teacher=False, out=str(out)).resolved())
    records = [json.loads(line) for line in (out / "view.jsonl").read_text().splitlines()]
    forks = [fork for record in records for fork in record.get("forks", [])]
    assert forks, "no fork was recorded"
    for fork in forks:   # S of a draft and a continuation is 1 − the difference of two shares of tests: 0, ½ or 1
        assert all(s in (0.0, 1.0) for row in fork["S"] for s in row), fork["S"]


def test_the_chunk_horizon_draws_nothing_more_so_todays_runs_are_unchanged():
    """Under --horizon chunk, drafts_to_horizon returns the drafts and samples nothing: the random state after
    it is what it was, so a default run draws what it drew before the option existed."""
    student, tokenizer = models.load_model("stories", "student", torch.device("cpu"))
    cfg = omniopd.Config(batch_size=2).resolved()
    torch.manual_seed(1)
    rollout = omniopd.sample_rollouts(student, tokenizer, [r["question"] for r in stories.make_problems(2, "test", 1)],
                                      cfg)
    drafts = omniopd.draft_chunks(student, tokenizer, rollout, [(0, 5)], 3, 8, 1.0)
    state = torch.get_rng_state()
    omniopd.drafts_to_horizon(student, tokenizer, drafts, "chunk", 1, 96, 1.0)
    assert torch.equal(state, torch.get_rng_state())
    assert dataclasses.asdict(omniopd.Config())["horizon"] == "chunk"
