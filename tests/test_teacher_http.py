"""OpenAITeacher through the real openai client against a real HTTP server on 127.0.0.1."""

import pytest
import torch

from omniopd_lib.teachers import HFTeacher
from omniopd_lib import teachers
from omniopd_tools.serve import start_in_thread
from omniopd_lib.common import OmniOPDError

PREFIXES = ["Question: Ann has 3 pens.\nAnswer: 3+", "Question: Ben has 9 cats. He loses 2.\nAnswer: "]


@pytest.fixture(scope="module")
def server(tiny_model_path):
    server = start_in_thread(tiny_model_path)
    yield server
    server.shutdown()


def openai_teacher(server, monkeypatch, mode, **options):
    monkeypatch.setenv("TOY_TEACHER_KEY", "sk-test-not-a-real-key")
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return teachers.OpenAITeacher("toy", url, "TOY_TEACHER_KEY", mode, **options)


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_openai_teacher_matches_the_local_model(server, tiny_model_path, monkeypatch, mode):
    """Greedy continuations over HTTP equal the same model's greedy continuations run locally."""
    teacher = openai_teacher(server, monkeypatch, mode, temperature=0.0)
    served_before = server.requests_served
    answers = teacher.continuations(PREFIXES, n=2, max_tokens=6)
    local = HFTeacher(tiny_model_path, torch.device("cpu"), mode="completion", temperature=0.0)
    expected = local.continuations(PREFIXES, n=1, max_tokens=6)
    # one rule on both sides (teachers.teacher_answer): an empty reply that never stopped is a failure, None
    assert answers == [None if e is None else e * 2 for e in expected]
    assert any(row is not None for row in answers)
    assert server.requests_served - served_before == 2   # one request per prefix, carrying n = 2
    assert teacher.calls == 4 and teacher.failures == 2 * local.failures and teacher.tokens > 0


def test_sampled_continuations_are_text(server, monkeypatch):
    torch.manual_seed(0)
    teacher = openai_teacher(server, monkeypatch, "completion", temperature=1.0, concurrency=4)
    answers = teacher.continuations(PREFIXES, n=3, max_tokens=8)
    assert len(answers) == 2
    assert teacher.failures == 0
    assert [len(row) for row in answers] == [3, 3] and all(isinstance(t, str) for row in answers for t in row)


def test_unreachable_teacher_is_counted_not_raised(monkeypatch):
    monkeypatch.setenv("TOY_TEACHER_KEY", "sk-test")
    teacher = teachers.OpenAITeacher("toy", "http://127.0.0.1:9/v1", "TOY_TEACHER_KEY", "completion",
                                    timeout=2.0, retries=0)
    assert teacher.continuations(PREFIXES, n=2, max_tokens=4) == [None, None]
    assert teacher.failures == 4


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(OmniOPDError, match="NO_SUCH_KEY_VAR"):
        teachers.OpenAITeacher("toy", "http://127.0.0.1:9/v1", "NO_SUCH_KEY_VAR")
