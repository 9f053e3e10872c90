"""The teacher's bill (#25): M continuations in one request where the server honours `n`, single requests where it
refuses or ignores it, a rollout's nested prefixes sent in ascending order, and a meter that equals the server's
own usage figures, and requests in flight while the student drafts, all against the loopback OpenAI-compatible
server (omniopd_tools/serve.py) on 127.0.0.1."""

import json
import time

import pytest
import torch

import omniopd
from omniopd_lib.common import OmniOPDError, StageClock
from omniopd_lib.teachers import HFTeacher, OpenAITeacher, dollars, nested_chains, parse_price
import toyworld

KEY_ENV = "OMNIOPD_BILL_TEST_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "loopback-no-key-needed")


def teacher_for(url, **options):
    return OpenAITeacher("echo", url, KEY_ENV, mode="completion", retries=0, **options)


def rollout_prefixes():
    """Two rollouts' forks in (rollout, t) order, as omniopd.py passes them: each rollout's prefixes nested."""
    first = "Question: Ann has 3 pens. She buys 4 more. How many now?\nAnswer: Ann has"
    second = "Question: Ben has 12 cats. 5 run off. How many are left?\nAnswer: Ben"
    prefixes = [first, first + " 3 pens and buys", first + " 3 pens and buys 4 more, so she has",
                second, second + " starts with 12 cats and", second + " starts with 12 cats and 5 run off,"]
    rows = [{"question": "ann"}] * 3 + [{"question": "ben"}] * 3
    return prefixes, rows


def test_one_request_carries_all_m_continuations_where_the_server_honours_n(serve):
    server, url = serve("echo")
    teacher = teacher_for(url)
    prefixes, rows = rollout_prefixes()
    answers = teacher.continuations(prefixes, 4, 8, rows=rows)
    assert [len(a) for a in answers] == [4] * 6
    assert server.requests_received == 6 and teacher.requests == 6
    assert all(body["n"] == 4 for body in server.bodies)
    assert teacher.calls == 24 and teacher.failures == 0


@pytest.mark.parametrize("policy", ["refuse", "ignore"])
def test_a_server_that_refuses_or_ignores_n_gets_single_requests_and_says_so_once(serve, capsys, policy):
    server, url = serve("echo", n_policy=policy)
    teacher = teacher_for(url)
    prefixes, rows = rollout_prefixes()
    answers = teacher.continuations(prefixes, 4, 8, rows=rows)
    assert [len(a) for a in answers] == [4] * 6 and teacher.failures == 0
    assert not teacher.n_per_request
    # 24 answers, each but the ignored requests' one choice by a single request; the two rollouts' first requests
    # go out together, so one or both ask for n = 4 before the answer that shows the server's policy
    refused = teacher.requests - 24
    assert server.requests_received == teacher.requests and refused in ((1, 2) if policy == "refuse" else (0,))
    assert capsys.readouterr().err.count("does not honour n") == 1
    assert teacher.continuations(prefixes[:1], 3, 8, rows=rows[:1]) == [[answers[0][0]] * 3]   # singles from now on


def test_a_rollouts_prefixes_go_out_in_ascending_order_one_after_another(serve):
    server, url = serve("echo", latency=0.05)
    teacher = teacher_for(url, concurrency=8)
    prefixes, rows = rollout_prefixes()
    teacher.continuations(prefixes, 4, 8, rows=rows)
    sent = [body["prompt"] for body in server.bodies]
    for rollout in (prefixes[:3], prefixes[3:]):
        assert [p for p in sent if p in rollout] == rollout
    # one chain per rollout: never more requests in flight than rollouts (before: every request at once)
    assert server.max_in_flight <= 2
    # each later prefix extends one the server has seen: it reports the shared words as cached
    assert teacher.cached_tokens == server.usage["cached_tokens"] > 0


def test_chains_are_runs_of_nested_prefixes_of_one_row():
    row_a, row_b = {"q": 1}, {"q": 2}
    assert nested_chains(["ab", "abc", "abcd", "x", "xy", "ab"], [row_a] * 3 + [row_b] * 2 + [row_a]) == [
        [0, 1, 2], [3, 4], [5]]
    assert nested_chains(["ab", "abc"], [row_a, row_b]) == [[0], [1]]   # another rollout's row: not a chain


def test_the_meter_equals_the_servers_own_usage_figures(serve):
    server, url = serve("toy")
    teacher = OpenAITeacher("toy", url, KEY_ENV, mode="completion", retries=0)
    prompts = toyworld.make_problems(3, "test", seed=1)
    prefixes = [f"Question: {p['question']}\nAnswer: " for p in prompts]
    prefixes = [prefixes[0], prefixes[0] + "3", prefixes[1], prefixes[2]]
    teacher.continuations(prefixes, 3, 12, rows=[prompts[0], prompts[0], prompts[1], prompts[2]])
    assert teacher.requests == server.usage["requests"] == 4
    assert teacher.prompt_tokens == server.usage["prompt_tokens"] > 0
    assert teacher.tokens == server.usage["completion_tokens"] > 0
    assert teacher.cached_tokens == server.usage["cached_tokens"] > 0


def test_price_arithmetic():
    assert dollars((2.5, 10.0), 1_000_000, 0, 500_000) == pytest.approx(2.5 + 5.0)
    # cached prompt tokens at their own price: 600k at 2.5, 400k at 1.25
    assert dollars((2.5, 10.0, 1.25), 1_000_000, 400_000, 0) == pytest.approx(1.5 + 0.5)
    assert dollars((2.5, 10.0), 1_000_000, 400_000, 0) == pytest.approx(2.5)   # no cached price: full price
    assert parse_price("2.5,10") == (2.5, 10.0) and parse_price("2.5,10,1.25") == (2.5, 10.0, 1.25)
    assert parse_price("") == ()
    for bad in ("abc", "1", "-1,2", "1,2,3,4"):
        with pytest.raises(OmniOPDError, match="--teacher-price"):
            parse_price(bad)


def test_a_run_logs_the_bill_every_step_and_prints_it(serve, tmp_path, capsys, monkeypatch):
    server, url = serve("stories")
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-no-key-needed")
    out = tmp_path / "run"
    assert omniopd.main([*toyworld.world_args("stories"), "--teacher", "openai:stories", "--teacher-base-url", url,
                         "--teacher-mode", "completion", "--teacher-price", "2.5,10,1.25", "--steps", "2",
                         "--batch-size", "4", "--eval-size", "4", "--no-eval-teacher", "--similarity", "lexical",
                         "--out", str(out)]) == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss/total" in s]
    assert steps[0]["bill/requests"] == steps[0]["forks/count"]   # one request per fork
    for key in ("requests", "prompt_tokens", "cached_tokens", "tokens", "dollars"):   # each step's bill adds up
        assert steps[0][f"bill/{key}"] + steps[1][f"bill/{key}"] == pytest.approx(steps[1][f"teacher/{key}"])
    step = steps[-1]
    assert step["teacher/requests"] == server.usage["requests"]
    assert step["teacher/prompt_tokens"] == server.usage["prompt_tokens"]
    assert step["teacher/cached_tokens"] == server.usage["cached_tokens"]
    assert step["teacher/tokens"] == server.usage["completion_tokens"]
    expected = dollars((2.5, 10.0, 1.25), server.usage["prompt_tokens"], server.usage["cached_tokens"],
                       server.usage["completion_tokens"])
    assert step["teacher/dollars"] == pytest.approx(expected)
    assert f"teacher's bill: {server.usage['requests']:,} requests" in capsys.readouterr().out
    # resumed, the next step is billed from the restored meter, not from zero
    assert omniopd.main([*toyworld.world_args("stories"), "--teacher", "openai:stories", "--teacher-base-url", url,
                         "--teacher-mode", "completion", "--steps", "3", "--batch-size", "4", "--eval-size", "4",
                         "--no-eval-teacher", "--similarity", "lexical", "--resume",
                         str(out / "checkpoints/step-000002"), "--out", str(tmp_path / "resumed")]) == 0
    third = json.loads((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()[0])
    assert third["bill/requests"] == third["forks/count"] and third["teacher/requests"] == server.usage["requests"]


def test_a_server_sending_more_choices_than_asked_gets_no_extra_votes(serve):
    _, url = serve("echo", n_policy="double")
    teacher = teacher_for(url)
    prefixes, rows = rollout_prefixes()
    assert [len(a) for a in teacher.continuations(prefixes, 4, 8, rows=rows)] == [4] * 6
    assert teacher.n_per_request   # more is not less: n is still honoured


def echo_run(url, out, steps=2, model="echo"):
    return omniopd.main([*toyworld.world_args("stories"), "--teacher", f"openai:{model}", "--teacher-base-url", url,
                         "--teacher-mode", "completion", "--steps", str(steps), "--batch-size", "4", "--eval-size", "2",
                         "--no-eval-teacher", "--similarity", "lexical", "--out", str(out)])


def test_the_teachers_requests_are_in_flight_while_the_student_drafts(serve, tmp_path, monkeypatch):
    server, url = serve("echo", latency=0.2)
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-no-key-needed")
    drafting, seen = omniopd.draft_chunks, []

    def draft_chunks(*args, **options):   # the student starts drafting, then looks whether the server has a request
        before = server.requests_received
        deadline = time.monotonic() + 20
        while server.requests_received == before and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(server.requests_received > before)
        return drafting(*args, **options)
    monkeypatch.setattr(omniopd, "draft_chunks", draft_chunks)
    assert echo_run(url, tmp_path / "run") == 0
    assert seen == [True, True]   # each step's requests reached the server before its drafts were written
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for step in [s for s in steps if "loss/total" in s]:
        assert step["time/teacher"] >= 0.2 and step["time/teacher_wait"] >= 0   # the teacher's own time; the wait


def test_the_overlap_changes_no_result_and_a_sampling_teacher_repeats_by_seed(serve, tmp_path, monkeypatch):
    """A sampling server (the story world's teacher, in this process, on its own thread): two identical runs, and
    a third whose requests go out in turn instead of while the student drafts, log the same figures. Before #33
    item 19 the server sampled from torch's global random state, which the trainer draws from at the same time,
    and two identical runs differed at step 1."""
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-no-key-needed")
    assert echo_run(serve("stories")[1], tmp_path / "overlapped", model="stories") == 0
    assert echo_run(serve("stories")[1], tmp_path / "again", model="stories") == 0   # a fresh server each run
    monkeypatch.setattr(OpenAITeacher, "overlaps", False)
    assert echo_run(serve("stories")[1], tmp_path / "in_turn", model="stories") == 0
    figures = []
    for name in ("overlapped", "again", "in_turn"):
        steps = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        figures.append([{k: v for k, v in step.items() if not k.startswith(("time/", "throughput/"))} for step in steps])
    assert figures[0] == figures[1] == figures[2] and sum("loss/total" in step for step in figures[0]) == 2


def test_a_local_teacher_answers_only_when_waited_for():
    teacher = HFTeacher(str(toyworld.world_model_dir("toy", "teacher")), torch.device("cpu"))
    characters = teacher.tokenizer
    in_flight = omniopd.teacher_rollouts(teacher, ["Question: What is 2+3?\nAnswer: "], 2, 4, characters)
    assert teacher.calls == 0 and in_flight.future is None   # it shares torch's random state: it runs in turn
    clock = StageClock()
    assert [len(texts) for texts in in_flight.wait(clock)] == [2] and teacher.calls == 2
    figures = clock.take()
    assert figures["time/teacher_wait"] >= figures["time/teacher"] > 0   # nothing of it overlapped
