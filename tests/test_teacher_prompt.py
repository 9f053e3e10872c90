"""--teacher-prompt FILE (#14): the user's text replaces the built-in instruction, with {prefix}, {question}
and {answer} filled in per fork, on every teacher backend; a bad file stops the run before anything loads."""

import re

import pytest
import torch

import omniopd
from omniopd_lib.generation import PLAIN_TEMPLATE
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import data
from omniopd_lib import teachers
import toyworld
from scale.teachers import TeacherPool

KEY_ENV = "TEACHER_PROMPT_TEST_KEY"
PRIVILEGED = "Reference solution: {answer}\nProblem: {question}\nContinue exactly where this stops:\n{prefix}"


@pytest.mark.parametrize("text, says", [
    (None, "cannot read it"),
    ("Continue {prefix} in the style of {author}", "unknown placeholder {author}"),
    ("Here is a problem: {question}", "no {prefix}"),
    ("Continue {prefix} {", "literal braces"),
])
def test_a_bad_prompt_file_is_one_line_before_any_model_loads(tmp_path, capsys, text, says):
    path = tmp_path / "prompt.txt"
    if text is not None:
        path.write_text(text)
    # the student does not exist: had the check come after loading, the error would be about the model
    code = omniopd.main(["--teacher-prompt", str(path), "--student", "no/such-model", "--teacher", "toy", "--data", "toy",
                         "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and says in error[0] and "--teacher-prompt" in error[0], error


def test_literal_braces_and_the_default_prompts():
    assert teachers.teacher_message("{{x}} {prefix}", "abc") == "{x} abc"
    assert teachers.teacher_message(PRIVILEGED, "P", {"question": "Q", "answer": None}).startswith("Reference solution: \n")

    class Chat(teachers.Teacher):
        mode = "chat"

    class Completion(teachers.Teacher):
        mode = "completion"
    assert teachers.teacher_template(Chat()) == teachers.CHAT_CONTINUE_PROMPT
    assert teachers.teacher_template(Completion()) == "{prefix}"


def sent_messages(server) -> list[str]:
    return [body["messages"][0]["content"] for body in server.bodies if "messages" in body]


def test_each_fork_sends_its_own_rows_question_and_answer(serve, tmp_path, monkeypatch):
    """A full OmniOPD step through the real openai client: every message the server received is the template
    filled with one training row's question and reference answer, and a prefix that starts with that same
    question: forks of different prompts are never mixed up."""
    server, url = serve("echo")
    monkeypatch.setenv(KEY_ENV, "not-a-secret")
    prompt = tmp_path / "teacher_prompt.txt"
    prompt.write_text(PRIVILEGED)
    cfg = omniopd.Config(teacher="openai:echo", teacher_base_url=url, teacher_api_key_env=KEY_ENV, teacher_mode="chat",
                         teacher_prompt=str(prompt), steps=1, batch_size=4, similarity="lexical", eval_size=2,
                         eval_teacher=False, out=str(tmp_path / "run"), student="toy", data="toy", eval_data="toy").resolved()
    omniopd.train(cfg)
    answers = {row["question"]: row["answer"] for row in data.load_rows("toy", "train", cfg.seed)}
    messages = sent_messages(server)
    assert messages
    pattern = re.compile(r"Reference solution: (.*)\nProblem: (.*)\nContinue exactly where this stops:\n(.*)", re.S)
    for message in messages:
        answer, question, prefix = pattern.fullmatch(message).groups()
        assert answers[question] == answer
        assert prefix.startswith(PLAIN_TEMPLATE.format(question=question))


def test_the_teacher_pool_renders_the_prompt_and_caches_by_it(serve, tmp_path, monkeypatch):
    """scale/'s pool: the same prefix with two different reference answers is two requests (and two cache
    entries), in completion mode the template is the raw prompt."""
    server, url = serve("echo")
    monkeypatch.setenv(KEY_ENV, "not-a-secret")
    for mode in ("chat", "completion"):
        pool = TeacherPool(["openai:echo"], url, KEY_ENV, mode, cache_path=tmp_path / f"{mode}.sqlite", retries=0)
        pool.prompt = PRIVILEGED
        rows = [{"question": "Q1", "answer": "A1"}, {"question": "Q1", "answer": "A2"}]
        before = len(server.bodies)
        pool.continuations(["same prefix", "same prefix"], n=1, max_tokens=8, draw="d", rows=rows)
        bodies = list(server.bodies)[before:]
        sent = [b["messages"][0]["content"] if mode == "chat" else b["prompt"] for b in bodies]
        assert sorted(sent) == sorted(teachers.teacher_message(PRIVILEGED, "same prefix", r) for r in rows)
        assert pool.calls == 2 and len(pool.cache) == 2


def test_a_local_teacher_continues_the_rendered_text(tiny_model_path):
    """HFTeacher in completion mode with a template: greedy continuations equal those of the rendered text
    sent with the default (raw prefix) prompt."""
    teacher = HFTeacher(tiny_model_path, torch.device("cpu"), "completion", temperature=0.0)
    row = toyworld.make_problems(1, "train", 3)[0]
    prefix = PLAIN_TEMPLATE.format(question=row["question"])
    plain = teacher.continuations([teachers.teacher_message("Hint: {answer}\n{prefix}", prefix, row)], 1, 8)
    teacher.prompt = "Hint: {answer}\n{prefix}"
    assert teacher.continuations([prefix], 1, 8, rows=[row]) == plain
