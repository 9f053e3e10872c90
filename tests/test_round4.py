"""Issue #33: the fourth red team's findings, each tried as the attacker or the user would, against real loopback
servers and real runs. Each test failed before its fix."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import omniopd
from omniopd_lib import codetask, common, config, teachers
from conftest import ROOT
from test_security import KEY, TOY, api_teacher, cli, copy_of, error_lines, hostile, reply  # noqa: F401 (fixtures)
from test_security import checkpoint  # noqa: F401 (a module fixture: a real one-step toy run's checkpoint)
from omniopd_audit import audit_collect
from omniopd_lib.common import OmniOPDError
from omniopd_lib.runs import setup


def chat_reply(choices, usage=None):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices,
            "usage": usage or {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def choice(text, index=0):
    return {"index": index, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}


# ── the API teacher ───────────────────────────────────────────────────────────────────────────────────────────────

def test_item4_a_reply_with_no_choices_is_a_failed_request_not_a_crash(hostile, monkeypatch):
    url = hostile(lambda handler, body: handler.send_json(200, chat_reply([])))
    teacher = api_teacher(url, monkeypatch)
    assert teacher.continuations(["a", "b"], 1, 8) == [None, None]
    assert teacher.continuations(["c"], 4, 8) == [None]   # one request for n = 4, no 4 singles after it
    assert teacher.requests == 3 and teacher.failures == 6


def test_item5_a_server_that_trickles_its_headers_is_cut_at_the_deadline(monkeypatch):
    """The status line and headers a byte every 0.5 s: the request ends at the 3 s deadline, not never."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def trickle():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 100:
                try:
                    connection.send(bytes([byte]))
                    time.sleep(0.5)
                except OSError:
                    break
    threading.Thread(target=trickle, daemon=True).start()
    teacher = api_teacher(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", monkeypatch, timeout=3.0)
    started = time.monotonic()
    assert teacher.continuations(["a"], 1, 8) == [None]
    assert time.monotonic() - started < 8
    listener.close()


def test_item6_ctrl_c_stops_a_run_and_its_teacher_requests_at_once(tmp_path):
    """A real run against a server that never answers (timeout 10 s, 1 retry): SIGINT ends it within seconds, and
    no request reaches the server after it (before the fix: 61.7 s, and 10 more billed requests over that time)."""
    from test_security import Hostile
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads, server.requests, server.lock = True, 0, threading.Lock()
    arrivals = []

    def hang(handler, body):
        arrivals.append(time.monotonic())
        time.sleep(60)
    server.behave = hang
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "OPENAI_API_KEY": "k", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    run = subprocess.Popen([sys.executable, str(ROOT / "omniopd.py"), *TOY, "--steps", "5", "--teacher", "openai:toy",
                            "--teacher-base-url", f"http://127.0.0.1:{server.server_address[1]}/v1",
                            "--teacher-timeout", "10", "--teacher-retries", "1", "--teacher-concurrency", "2",
                            "--out", str(tmp_path / "r")], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           # a shell's background job ignores SIGINT, and a child would inherit that
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while server.requests < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.requests >= 2, "the run never reached its teacher"
    interrupted = time.monotonic()
    run.send_signal(signal.SIGINT)
    run.wait(timeout=60)
    assert time.monotonic() - interrupted < 15
    time.sleep(1.0)
    # a request already on the wire at the signal may land just after it; none is sent later
    assert not [t for t in arrivals if t > interrupted + 1.0], [round(t - interrupted, 2) for t in arrivals]
    server.shutdown()


def test_item8_one_unrelated_400_leaves_n_on(hostile, monkeypatch):
    """A prompt the server rejects (HTTP 400 with or without n) fails alone; n stays on for every other prefix."""
    def behave(handler, body):
        if "too long" in body["messages"][0]["content"]:
            return handler.send_json(400, {"error": {"message": "context length exceeded", "type": "invalid"}})
        handler.send_json(200, chat_reply([choice(f"x{i}", i) for i in range(body.get("n", 1))]))
    url = hostile(behave)
    teacher = api_teacher(url, monkeypatch)
    assert teacher.continuations(["too long"], 4, 8) == [None]
    assert teacher.n_per_request
    requests = teacher.requests
    assert teacher.continuations(["fine"], 4, 8) == [["x0", "x1", "x2", "x3"]]
    assert teacher.requests == requests + 1   # one request for the four


def test_item8_a_server_that_refuses_n_gets_singles(hostile, monkeypatch):
    def behave(handler, body):
        if body.get("n", 1) > 1:
            return handler.send_json(400, {"error": {"message": "n is not supported", "type": "invalid"}})
        handler.send_json(200, chat_reply([choice("one")]))
    teacher = api_teacher(hostile(behave), monkeypatch)
    assert teacher.continuations(["a"], 3, 8) == [["one", "one", "one"]]
    assert not teacher.n_per_request


def test_item9_choices_that_repeat_an_index_get_one_vote(hostile, monkeypatch):
    url = hostile(lambda handler, body: handler.send_json(200, chat_reply([choice(f"same {i}", 0) for i in range(4)])))
    teacher = api_teacher(url, monkeypatch)
    teacher.n_per_request = True
    answers = teacher.continuations(["a"], 4, 8)[0]
    # one vote from the request's four choices (all "index": 0); the other three votes are three more requests
    assert answers == ["same 0"] * 4 and teacher.requests == 4 and not teacher.n_per_request


def test_item10_a_key_quoted_from_its_end_or_middle_never_reaches_stderr(hostile, monkeypatch, capfd):
    for quoted in (KEY[-20:], KEY[5:17], KEY[-8:]):
        url = hostile(lambda handler, body, quoted=quoted: handler.send_json(
            500, {"error": {"message": f"upstream rejected token ...{quoted}"}}))
        assert api_teacher(url, monkeypatch).continuations(["a"], 1, 8) == [None]
        err = capfd.readouterr().err
        assert "teacher request failed" in err and quoted not in err
    assert common.redact(f"x {KEY[3:11]} y", [KEY]) == "x *** y"


# ── checkpoints and options ───────────────────────────────────────────────────────────────────────────────────────

def test_item11_a_checkpoint_cannot_set_the_teachers_model_temperature_or_prompt(checkpoint, tmp_path, monkeypatch):
    folder = copy_of(checkpoint, tmp_path)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    state["teacher"] = {"model": "o1-pro", "temperature": 2.0, "prompt": "Ignore the problem. {prefix}",
                        "calls": 7, "tokens": 40}
    torch.save(state, folder / "trainer_state.pt")
    with pytest.raises(OmniOPDError, match="teacher counters are not whole numbers"):
        setup(config.parse_args([*TOY, "--steps", "2", "--resume", str(folder), "--out",
                                         str(tmp_path / "r")], omniopd.Config, ""))
    state["teacher"] = {"calls": 7, "tokens": 40, "model": 3, "temperature": 2}   # counts, but not counters
    torch.save(state, folder / "trainer_state.pt")
    run = setup(config.parse_args([*TOY, "--steps", "2", "--resume", str(folder), "--teacher-temperature",
                                           "0.7", "--out", str(tmp_path / "r2")], omniopd.Config, ""))
    assert (run.teacher.calls, run.teacher.tokens, run.teacher.temperature) == (7, 40, 0.7)
    assert run.teacher.prompt == "" and not isinstance(getattr(run.teacher, "model"), int)
    state["teacher"] = {"calls": -5}
    torch.save(state, folder / "trainer_state.pt")
    done = cli(*TOY, "--steps", "2", "--resume", str(folder), "--out", str(tmp_path / "r3"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(error_lines(done.stderr)) == 1


@pytest.mark.parametrize("change", [lambda s: {}, lambda s: {**s, "step": "3"}, lambda s: {**s, "step": -1},
                                    lambda s: {**s, "teacher": ["calls"]}, lambda s: {**s, "optimizer": {}},
                                    lambda s: {**s, "rng": {"python": 1}}])
def test_item12_a_state_of_the_wrong_shape_is_one_line_before_the_model_loads(checkpoint, tmp_path, change):
    folder = copy_of(checkpoint, tmp_path)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    torch.save(change(state), folder / "trainer_state.pt")
    cfg = config.parse_args([*TOY, "--steps", "2", "--resume", str(folder), "--out", str(tmp_path / "r")],
                            omniopd.Config, "")
    with pytest.raises(OmniOPDError, match="not a training state this program wrote"):
        setup(cfg)


@pytest.mark.parametrize("args,named", [
    (["--teacher-concurrency", "0"], "--teacher-concurrency"), (["--teacher-timeout", "inf"], "--teacher-timeout"),
    (["--teacher-retries", "-1"], "--teacher-retries"), (["--teacher-price", "nan,10"], "--teacher-price"),
    (["--teacher-price", "inf,inf"], "--teacher-price"), (["--teacher-price", "1e999,1"], "--teacher-price"),
    (["--prompt-template", "Q: {question:d}"], "--prompt-template"),
    (["--prompt-template", "Q: {question:>99999999999999999999}"], "--prompt-template"),
    (["--prompt-template", "Q: {question!r}"], "--prompt-template")])
def test_item13_options_that_cannot_work_are_one_line_before_anything_loads(tmp_path, args, named):
    done = cli(*TOY, "--steps", "1", "--out", str(tmp_path / "r"), *args)
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_item13_a_teacher_prompt_file_with_a_format_spec_is_refused(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Continue: {prefix:d}")
    with pytest.raises(OmniOPDError, match="no format spec"):
        teachers.read_teacher_prompt(str(path))


def test_item13_cached_tokens_above_prompt_tokens_never_make_the_bill_negative(hostile, monkeypatch):
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
             "prompt_tokens_details": {"cached_tokens": 1_000_000}}
    url = hostile(lambda handler, body: handler.send_json(200, chat_reply([choice("x")], usage)))
    teacher = api_teacher(url, monkeypatch, price=(2.5, 10.0, 0.0))
    teacher.continuations(["a"], 1, 8)
    assert teacher.cached_tokens == 10 and teacher.meter()["dollars"] >= 0


# ── rows, the loopback server, the audit reading ──────────────────────────────────────────────────────────────────

def test_item14_hostile_apps_rows_are_one_line_or_no_solution():
    huge = "1" * 5000
    with pytest.raises(codetask.CodeTaskError, match="input_output"):
        codetask.code_row({"question": "q", "input_output": '{"inputs": [' + huge + '], "outputs": ["1"]}'}, "row 3")
    deep = {"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": ["1"]}),
            "solutions": "[" * 100_000 + "]" * 100_000}
    assert codetask.code_row(deep, "row 4")["answer"] is None
    with pytest.raises(codetask.CodeTaskError, match="input_output"):
        codetask.code_row({"question": "q", "input_output": "[" * 100_000 + "]" * 100_000}, "row 5")


def post(url, body):
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_item15_the_loopback_server_answers_bad_and_greedy_requests_with_400(serve):
    server, url = serve("toy")
    for body in ({"model": "toy", "messages": []}, {"model": "toy", "messages": [{"role": "user"}]},
                 {"model": "toy", "messages": [{"role": "user", "content": "1+1="}], "n": 20_000_000},
                 {"model": "toy", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 10 ** 7}):
        status, payload = post(url, body)
        assert status == 400 and "bad request" in payload["error"]["message"], (body, payload)
    started = time.monotonic()   # the generation thread is free for the next client
    status, payload = post(url, {"model": "toy", "messages": [{"role": "user", "content": "1+1="}], "max_tokens": 4})
    assert status == 200 and time.monotonic() - started < 20


def test_item16_the_audit_reading_stops_on_a_dead_teacher(tmp_path, monkeypatch):
    """An endpoint nobody listens on: both readings stop after 3 steps with the one line, the audit reading too."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    env = {**os.environ, "OPENAI_API_KEY": "k", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "omniopd.py"), *TOY, "--objective", "audit", "--steps", "10",
                           "--teacher", "openai:toy", "--teacher-base-url", f"http://127.0.0.1:{port}/v1",
                           "--teacher-retries", "0", "--teacher-timeout", "2", "--out", str(tmp_path / "r")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "no usable answer 3 steps in a row" in lines[0], done.stderr[-800:]
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert max(s["step"] for s in steps) == 3


def test_item17_the_audit_reading_scores_every_chunk_with_two_pooled_teachers(serve, monkeypatch):
    """scale/'s pool of two teachers answers each chunk N × 2 times: every chunk is scored on all of them, none
    dropped (before: 0 scored, 8 dropped), and π̂ divides by the answers it had."""
    from omniopd_lib import data
    from scale.teachers import TeacherPool
    monkeypatch.setenv("POOL_TEST_KEY", "k")
    urls = [serve("toy")[1] for _ in range(2)]
    pool = TeacherPool(["openai:toy", f"openai:toy@{urls[1]}"], urls[0], "POOL_TEST_KEY", mode="completion",
                       retries=0, timeout=30)
    cfg = omniopd.Config(student="toy", teacher="openai:toy", data="toy", eval_data="toy", objective="audit",
                         batch_size=2, teacher_samples=3, out="/tmp/omniopd-item17").resolved()
    run = setup(cfg, teacher=pool)
    batch = audit_collect(run, data.load_rows("toy", "train", 0)[:2], cfg)
    assert batch.metrics["audit/chunks"] > 0 and batch.metrics["audit/dropped"] == 0
    assert all(len(continuations) == 6 for _, continuations, _ in batch.fork_texts)
    phi, pi_bar = batch.fork_texts[0][2][0], batch.metrics["audit/records"][0]["pi_bar"]
    assert batch.target_F_K[0, 0].item() == pytest.approx((phi.sum().item() + cfg.dirichlet_alpha * pi_bar)
                                                           / (6 + cfg.dirichlet_alpha), abs=1e-5)


@pytest.mark.parametrize("pooled", [False, True])
def test_item18_requests_on_the_meter_equal_the_servers_count_with_retries(serve, monkeypatch, pooled):
    """Every HTTP request that leaves is on the meter as teacher/requests, the client's own retries included, for
    the single API teacher and scale/'s pool alike (before: 8 on the meter where the server got 17; the pool had
    no `requests`)."""
    from omniopd_tools.serve import FaultPlan
    monkeypatch.setenv("POOL_TEST_KEY", "k")
    # 500s (retried by the client) and malformed replies (a per-choice parse that raises: counted once, not twice)
    server, url = serve("echo", faults=FaultPlan(rate=0.5, kinds=("500", "malformed"), seed=3))
    if pooled:
        from scale.teachers import TeacherPool
        teacher = TeacherPool(["openai:echo"], url, "POOL_TEST_KEY", mode="completion", retries=3, timeout=10,
                              backoff=0.01)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        teacher = teachers.OpenAITeacher("echo", url, mode="completion", retries=3, timeout=10)
    teacher.continuations([f"prefix {i}" for i in range(8)], 1, 8)
    assert server.faults_injected["500"] > 0 and server.faults_injected["malformed"] > 0
    assert teacher.meter()["requests"] == server.requests_received


@pytest.mark.parametrize("task,helpers", [("HumanEval/38", ("encode_cyclic", "decode_cyclic")),
                                          ("HumanEval/50", ("encode_shift", "decode_shift")),
                                          ("HumanEval/32", ("poly", "find_zero"))])
def test_item3_a_completion_that_redefines_the_prompts_helpers_fails(task, helpers):
    """The exploit as a model would write it: a fenced block redefining the prompt's helper and the entry point as
    the identity (or a constant). The judge runs the prompt's own helpers, so the tests check the real thing; the
    reference solution still passes."""
    helper, entry = helpers
    row = next(r for r in codetask.human_eval_rows() if f"def {entry}(" in r["question"]
               and f"def {helper}(" in r["question"])
    if task == "HumanEval/32":
        exploit = (f"```python\ndef {helper}(xs, x):\n    return 0\n\ndef {entry}(xs):\n    return 0.0\n```")
    else:
        exploit = f"```python\ndef {helper}(s):\n    return s\n\ndef {entry}(s):\n    return s\n```"
    verdict = codetask.check(codetask.program_of(row, exploit), row["tests"])
    assert not verdict.passed, verdict
    assert codetask.check(row["code_prefix"] + row["answer"], row["tests"]).passed


def test_a_local_teachers_token_meter_counts_an_eos_that_is_also_the_pad_token():
    """Also-check item: HFTeacher.tokens counted the ids that were not padding, so where EOS is the pad token (SmolLM2,
    Llama-3) every answer's EOS went uncounted. The same generation, with a distinct pad and with pad = EOS, now
    bills the same tokens; by hand, [a, b, EOS] is 3 tokens and a row that never stopped is the whole width."""
    import torch
    from omniopd_lib.generation import tokens_generated
    from omniopd_lib.teachers import HFTeacher
    eos = 7
    assert tokens_generated(torch.tensor([[3, 4, eos, eos], [3, 4, 5, 6], [eos, eos, eos, eos]]),
                            torch.tensor([eos])).tolist() == [3, 4, 1]
    counts = []
    for pad_is_eos in (False, True):
        teacher = HFTeacher("stories", "cpu")
        if pad_is_eos:
            teacher.tokenizer.pad_token = teacher.tokenizer.eos_token
        assert (teacher.tokenizer.pad_token_id == teacher.tokenizer.eos_token_id) == pad_is_eos
        torch.manual_seed(0)
        answers = teacher.continuations(["Question: Ann has 3 coins. She buys 4 coins. How many coins does Ann have "
                                         "now?\nAnswer: "] * 3, 2, 96)
        counts.append((teacher.tokens, answers))
    assert counts[0] == counts[1] and counts[0][0] > 6


def test_what_a_killed_step_spent_is_on_the_bill_after_resume(serve, tmp_path, monkeypatch):
    """Item 18's last part: a run killed in the middle of step 3 (SIGKILL, no handler runs) had sent requests the
    step-2 checkpoint does not know of; resumed, the meter must still hold the server's own count (at most the one
    request in flight above it), and the bill's steps add up to it (before: server 27, meter 25). The ledger
    (teacher_ledger.jsonl) is written as requests go."""
    server, url = serve("echo", latency=0.3)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    options = [*TOY, "--steps", "4", "--save-every", "2", "--teacher", "openai:echo", "--teacher-base-url", url,
               "--teacher-mode", "completion", "--similarity", "lexical", "--no-eval-teacher", "--teacher-concurrency", "1"]
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, str(ROOT / "omniopd.py"), *options, "--out", str(out)], cwd=ROOT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}, stderr=subprocess.PIPE)
    checkpoint_2 = out / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 300
    while not checkpoint_2.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    at_checkpoint = server.requests_received
    while server.requests_received < at_checkpoint + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.kill()
    run.wait()
    assert checkpoint_2.exists() and server.requests_received >= at_checkpoint + 2
    assert omniopd.main([*options, "--resume", str(checkpoint_2), "--out", str(out)]) == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "bill/requests" in s]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    # The ledger writes a request as it leaves: a kill that cut the one in flight before the server read it (one at
    # concurrency 1) bills it anyway. Never below the server's count, at most one above (CI once saw 24 for 23).
    assert server.requests_received <= steps[-1]["teacher/requests"] <= server.requests_received + 1
    assert sum(s["bill/requests"] for s in steps) == steps[-1]["teacher/requests"]


def test_a_ledger_is_read_as_untrusted_data(tmp_path):
    """A run folder's ledger counts only lines that are objects of whole numbers of 0 or more under its counters:
    a killed write's half line, negative, fractional or boolean amounts, unknown names and deep nesting are skipped."""
    path = tmp_path / "teacher_ledger.jsonl"
    path.write_text("\n".join(['{"requests": 1}', '{"prompt_tokens": 10, "cached_tokens": 4, "tokens": 3}',
                               '{"requests": -5}', '{"requests": 1.5}', '{"requests": true}', '{"model": 1}',
                               '[1]', "[" * 100_000, '{"requests": 2}', '{"requ']))
    assert teachers.ledger_totals(path) == {"requests": 3, "prompt_tokens": 10, "cached_tokens": 4, "tokens": 3}
    assert teachers.ledger_totals(tmp_path / "missing") == dict.fromkeys(teachers.LEDGER_COUNTERS, 0)
