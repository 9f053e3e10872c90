"""scale/teachers.py against real HTTP servers on 127.0.0.1 that misbehave on purpose (omniopd_tools/serve.py)."""

import asyncio
import time

import pytest

from scale.teachers import AnswerCache, Endpoint, RateLimiter, TeacherPool
from omniopd_tools.serve import FaultPlan
from omniopd_lib.common import OmniOPDError

KEY = "sk-pool-test-0123456789"


def pool_for(url, tmp_path=None, teachers=("openai:toy",), **options):
    settings = dict(mode="completion", timeout=0.5, retries=4, concurrency=8, backoff=0.02,
                    cache_path=tmp_path / "cache.sqlite" if tmp_path else None)
    return TeacherPool(list(teachers), url, "POOL_TEST_KEY", **{**settings, **options})


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("POOL_TEST_KEY", KEY)


PREFIXES = [f"Question: item {i}\nAnswer: " for i in range(30)]


def test_every_request_ends_answered_or_skipped_under_faults(serve, tmp_path):
    """30 % of requests fail in every way the server knows; each of the 200 samples ends answered or counted."""
    server, url = serve(faults=FaultPlan(rate=0.3, retry_after=0.05, hang_seconds=1.5, seed=1))
    pool = pool_for(url, tmp_path)
    prefixes = [f"Question: item {i}\nAnswer: " for i in range(100)]
    answers = pool.continuations(prefixes, n=2, max_tokens=8)
    answered = sum(len(row) for row in answers if row)
    assert answered + pool.failures == 200
    assert answered >= 185  # with 4 retries a request fails only if 5 attempts in a row do (≈ 0.3^5)
    assert set(server.faults_injected) == {"429", "500", "timeout", "malformed", "empty", "refusal"}
    # one request per prefix for both samples, a single one for a sample that came back unusable, and retries
    assert 100 + pool.retried <= pool.calls <= 300 + pool.retried
    assert server.requests_received <= pool.calls  # a request that timed out may never have reached a handler
    assert all(isinstance(t, str) and t.strip() for row in answers if row for t in row)
    assert pool.max_in_flight <= 8


def test_a_request_failing_every_attempt_is_skipped_and_counted(serve):
    server, url = serve(faults=FaultPlan(rate=1.0, kinds=("500",)))
    pool = pool_for(url, retries=2)
    assert pool.continuations(PREFIXES[:3], n=2, max_tokens=8) == [None, None, None]
    # one request per prefix carries both samples; it fails three times and is skipped, not asked for one by one
    assert pool.failures == 6 and pool.calls == server.requests_received == 9


def test_retry_after_is_honoured(serve):
    server, url = serve(faults=FaultPlan(rate=1.0, kinds=("429",), retry_after=0.8))
    pool = pool_for(url, retries=1, backoff=0.01)
    started = time.monotonic()
    assert pool.continuations(PREFIXES[:1], n=1, max_tokens=8) == [None]
    assert time.monotonic() - started >= 0.8   # the backoff alone would have waited ~0.01 s
    assert server.requests_received == 2


def test_concurrency_never_exceeds_the_bound(serve):
    server, url = serve(latency=0.05)
    pool = pool_for(url, concurrency=4)
    pool.continuations(PREFIXES, n=2, max_tokens=8)
    assert server.max_in_flight == pool.max_in_flight == 4


def test_a_second_identical_run_makes_no_http_calls(serve, tmp_path):
    server, url = serve(faults=FaultPlan(rate=0.2, kinds=("500", "empty"), seed=3))
    first = pool_for(url, tmp_path).continuations(PREFIXES, n=3, max_tokens=8)
    received = server.requests_received
    again = pool_for(url, tmp_path)  # a new process would open the same file: a resumed run
    assert again.continuations(PREFIXES, n=3, max_tokens=8) == first
    assert server.requests_received == received and again.calls == 0 and again.cached == 90
    assert len(AnswerCache(tmp_path / "cache.sqlite")) == 90


def test_cache_key_separates_teacher_request_draw_and_sample():
    request = {"model": "m", "prompt": "p", "max_tokens": 16, "temperature": 1.0}
    base = ("m@u", request, "seed 0 step 0", 0)
    keys = {AnswerCache.key(*base), AnswerCache.key("m@u", dict(reversed(request.items())), "seed 0 step 0", 0)}
    assert len(keys) == 1   # the same request, whatever the order of its fields
    changed_requests = [{**request, field: value} for field, value in
                        [("model", "n"), ("prompt", "p!"), ("max_tokens", 17), ("temperature", 0.7)]]
    changed_requests.append({k: v for k, v in request.items() if k != "prompt"} | {"messages": "p"})
    for changed in ["m@v", *changed_requests, "seed 0 step 1", 1]:
        position = 0 if changed == "m@v" else 1 if isinstance(changed, dict) else 2 if isinstance(changed, str) else 3
        keys.add(AnswerCache.key(*base[:position], changed, *base[position + 1:]))
    assert len(keys) == 9


def test_several_teachers_pool_their_answers(serve):
    _, url_a = serve()
    server_b, url_b = serve(latency=0.01)
    pool = pool_for(url_a, teachers=("openai:toy", f"openai:other@{url_b}"))
    answers = pool.continuations(PREFIXES[:5], n=2, max_tokens=8)
    assert [len(row) for row in answers] == [4] * 5
    assert server_b.requests_received == 5   # one request per prefix, n = 2


def test_rate_limit_paces_requests():
    limiter = RateLimiter(requests_per_minute=600, burst_seconds=0.1)  # 10 per second, a bucket of one

    async def eleven():
        for _ in range(11):
            await limiter.acquire(tokens=1)
    started = time.monotonic()
    asyncio.run(eleven())
    assert time.monotonic() - started >= 0.9


def test_token_meter_and_dollars(serve):
    _, url = serve()
    pool = pool_for(url, price_per_million=(1.0, 4.0))
    pool.continuations(PREFIXES[:4], n=2, max_tokens=8)
    assert pool.prompt_tokens > 0 and pool.tokens > 0
    assert pool.dollars == pytest.approx((pool.prompt_tokens * 1.0 + pool.tokens * 4.0) / 1e6)


def test_wrong_key_stops_with_one_line_that_hides_the_key(serve, monkeypatch):
    _, url = serve(api_key="sk-the-right-one")
    pool = pool_for(url)
    with pytest.raises(OmniOPDError) as caught:
        pool.continuations(PREFIXES[:3], n=2, max_tokens=8)
    message = str(caught.value)
    assert "rejected the API key" in message and "POOL_TEST_KEY" in message
    assert KEY not in message and "\n" not in message


def test_unknown_model_is_one_line(serve):
    _, url = serve(served_models={"toy"})
    with pytest.raises(OmniOPDError, match="does not know model 'nope'"):
        pool_for(url, teachers=("openai:nope",)).continuations(PREFIXES[:1], n=1, max_tokens=8)


def test_teacher_spec_parsing():
    assert Endpoint.parse("openai:m", "http://x/v1") == Endpoint("m", "http://x/v1", "OPENAI_API_KEY")
    assert Endpoint.parse("openai:m@http://y/v1@MY_KEY") == Endpoint("m", "http://y/v1", "MY_KEY")
    with pytest.raises(OmniOPDError, match="openai:MODEL"):
        Endpoint.parse("toy")


def rollouts():
    """Two rollouts' nested prefixes in ascending order, with their rows, as omniopd passes them."""
    first, second = "Question: item 1\nAnswer: one", "Question: item 2\nAnswer: two"
    prefixes = [first, first + " two", first + " two three", second, second + " three"]
    return prefixes, [{"question": "1"}] * 3 + [{"question": "2"}] * 2


def test_one_request_per_prefix_carries_its_n_samples_and_the_meter_equals_the_servers(serve, tmp_path):
    server, url = serve("echo", latency=0.05)
    pool = pool_for(url, tmp_path, teachers=("openai:echo",), price_per_million=(2.0, 8.0, 1.0))
    prefixes, rows = rollouts()
    answers = pool.continuations(prefixes, n=4, max_tokens=8, draw="seed 0 step 0", rows=rows)
    assert [len(row) for row in answers] == [4] * 5
    assert pool.calls == server.usage["requests"] == 5 and all(body["n"] == 4 for body in server.bodies)
    assert pool.prompt_tokens == server.usage["prompt_tokens"] and pool.tokens == server.usage["completion_tokens"]
    assert pool.cached_tokens == server.usage["cached_tokens"] > 0   # each later prefix extends an earlier one
    assert pool.dollars == pytest.approx(((pool.prompt_tokens - pool.cached_tokens) * 2.0 + pool.cached_tokens * 1.0
                                          + pool.tokens * 8.0) / 1e6)
    sent = [body["prompt"] for body in server.bodies]
    for rollout in (prefixes[:3], prefixes[3:]):
        assert [p for p in sent if p in rollout] == rollout   # ascending, each after the last answered
    assert server.max_in_flight <= 2   # one chain per rollout
    assert len(AnswerCache(tmp_path / "cache.sqlite")) == 20   # each sample keyed apart


@pytest.mark.parametrize("policy", ["refuse", "ignore"])
def test_an_endpoint_that_refuses_or_ignores_n_gets_single_requests_and_says_so_once(serve, capsys, policy):
    server, url = serve("echo", n_policy=policy)
    pool = pool_for(url, teachers=("openai:echo",))
    prefixes, rows = rollouts()
    answers = pool.continuations(prefixes, n=3, max_tokens=8, rows=rows)
    assert [len(row) for row in answers] == [3] * 5 and pool.failures == 0
    assert capsys.readouterr().err.count("does not honour n") == 1
    assert pool.calls == server.requests_received
    # the two rollouts' first requests ask for n together; the rest are singles: 15 answers, less the ignored
    # requests' one choice each
    assert pool.calls - 15 in ((1, 2) if policy == "refuse" else (0,))


def test_a_resumed_draw_asks_only_for_the_samples_it_lacks(serve, tmp_path):
    server, url = serve("echo")
    pool = pool_for(url, tmp_path, teachers=("openai:echo",))
    first = pool.continuations(["Question: item 1\nAnswer: "], n=2, max_tokens=8, draw="seed 0 step 3")
    more = pool_for(url, tmp_path, teachers=("openai:echo",))
    assert more.continuations(["Question: item 1\nAnswer: "], n=5, max_tokens=8, draw="seed 0 step 3")[0][:2] == first[0]
    assert more.cached == 2 and more.calls == 1 and server.bodies[-1]["n"] == 3


def test_a_hostile_endpoint_sending_more_choices_than_asked_gets_no_extra_votes(serve, tmp_path):
    _, url = serve("echo", n_policy="double")
    pool = pool_for(url, tmp_path, teachers=("openai:echo",))
    prefixes, rows = rollouts()
    assert [len(row) for row in pool.continuations(prefixes, n=3, max_tokens=8, rows=rows)] == [3] * 5
    assert len(AnswerCache(tmp_path / "cache.sqlite")) == 15 and not pool.singles_only
