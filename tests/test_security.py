"""Issue #22: what a hostile file, server or user could do to a run, each tried as they would.

Checkpoints are untrusted (nothing read from them may run code); an API key never reaches stderr, not even in
part; a teacher server that stalls, trickles, floods or answers oddly costs one request, not the run; a resumed
run uses the settings it is given or refuses the ones it cannot change; two runs never share a folder.
Every server here is a real HTTP server on 127.0.0.1."""

import http.server
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import omniopd
from omniopd_lib.common import seed_everything
from omniopd_lib import codetask, common, config, data, teachers
from conftest import ROOT
from omniopd_lib.common import OmniOPDError
from omniopd_lib.runs import setup
from omniopd_lib.teachers import CHARACTERS_PER_TOKEN_AT_MOST

TOY = ["--student", "toy", "--teacher", "toy", "--data", "toy", "--eval-data", "toy", "--batch-size", "4",
       "--eval-size", "4", "--similarity", "lexical"]
KEY = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef"


def cli(*args, preexec_fn=None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "omniopd.py"), *args], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real one-step toy run's checkpoint (step-000001)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert omniopd.main([*TOY, "--steps", "1", "--out", str(out)]) == 0
    return out / "checkpoints" / "step-000001"


def copy_of(checkpoint, tmp_path):
    import shutil
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, folder)
    return folder


# ----------------------------------------------------------------------------
# 1 and 12. Checkpoints: nothing in them runs; a cut file or a full disk is one line


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_pickled_object_runs_nothing_on_resume(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    state = torch.load(folder / "trainer_state.pt", weights_only=True)   # what we write is plain
    state["rng"]["python"] = RunsCode(marker)
    torch.save(state, folder / "trainer_state.pt")
    done = cli(*TOY, "--steps", "2", "--resume", str(folder), "--out", str(tmp_path / "resumed"))
    assert done.returncode == 2 and not marker.exists()
    assert len(error_lines(done.stderr)) == 1 and "not a plain training state" in done.stderr, done.stderr[-1500:]
    assert "Traceback" not in done.stderr
    # scale/'s per-rank RNG files go through the same reader
    torch.save(RunsCode(marker), tmp_path / "rng-rank0.pt")
    with pytest.raises(OmniOPDError, match="not a plain training state"):
        common.load_plain_state(tmp_path / "rng-rank0.pt")
    assert not marker.exists()


def test_the_random_state_round_trips_through_a_plain_file(tmp_path):
    import random

    import numpy as np
    seed_everything(3)
    torch.save(common.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)
    common.set_rng_state(common.load_plain_state(tmp_path / "rng.pt"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_truncated_trainer_state_is_one_line(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    whole = (folder / "trainer_state.pt").read_bytes()
    (folder / "trainer_state.pt").write_bytes(whole[:len(whole) // 2])
    done = cli(*TOY, "--steps", "2", "--resume", str(folder), "--out", str(tmp_path / "resumed"))
    assert done.returncode == 2 and len(error_lines(done.stderr)) == 1 and "Traceback" not in done.stderr
    assert "not a plain training state" in done.stderr


def small_files_only():
    """The child may write no file past 200 kB (a disk that fills up): writes fail with EFBIG, not a signal."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_save_that_fails_is_one_line_and_keeps_the_last_good_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "run"
    first = cli(*TOY, "--steps", "1", "--out", str(out))
    assert first.returncode == 0, first.stderr[-1500:]
    good = out / "checkpoints" / "step-000001"
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    done = cli(*TOY, "--steps", "2", "--save-every", "1", "--resume", str(good), "--out", str(out),
               preexec_fn=small_files_only)
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "cannot save the checkpoint of step 2" in lines[0] and str(good) in lines[0]
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]   # no partial left


# ----------------------------------------------------------------------------
# 5. Resume: new settings take effect; the ones that cannot change are refused


def test_resume_applies_a_new_learning_rate_and_weight_decay(checkpoint, tmp_path, capsys):
    cfg = config.parse_args([*TOY, "--steps", "2", "--lr", "0.05", "--weight-decay", "0.5", "--resume",
                              str(checkpoint), "--out", str(tmp_path / "resumed")], omniopd.Config, "")
    run = setup(cfg)
    assert [(g["lr"], g["weight_decay"]) for g in run.optimizer.param_groups] == [(0.05, 0.5)]
    assert run.optimizer.state   # the saved moments were loaded
    note = capsys.readouterr().err
    assert "resumed with new settings" in note and "lr 0.0002 -> 0.05" in note and "weight_decay 0.0 -> 0.5" in note


@pytest.mark.parametrize("change, named", [(["--seed", "5"], "--seed (0 -> 5)"),
                                           (["--method", "sft"], "--method (omniopd -> sft)")])
def test_resume_refuses_to_change_what_cannot_change(checkpoint, tmp_path, change, named):
    done = cli(*TOY, "--steps", "2", *change, "--resume", str(checkpoint), "--out", str(tmp_path / "resumed"))
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and named in lines[0], done.stderr[-1500:]


def test_resume_refuses_another_lora_rank(tmp_path):
    out = tmp_path / "lora"
    assert omniopd.main([*TOY, "--steps", "1", "--lora-rank", "4", "--out", str(out)]) == 0
    done = cli(*TOY, "--steps", "2", "--lora-rank", "16", "--resume", str(out / "checkpoints/step-000001"),
               "--out", str(out))
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "--lora-rank (4 -> 16)" in lines[0], done.stderr[-1500:]


# ----------------------------------------------------------------------------
# 6. One run per folder


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    held = common.lock_folder(out)   # a run in progress (the lock is the kernel's: any process sees it)
    done = cli(*TOY, "--steps", "1", "--out", str(out))
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "another run is writing to" in lines[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "config.json").exists()
    held.close()
    assert cli(*TOY, "--steps", "1", "--out", str(out)).returncode == 0


# ----------------------------------------------------------------------------
# 4, 7, 8, 9, 13. Hostile teacher servers


class Hostile(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions and /v1/completions as server.behave(handler, body) says."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
        self.server.behave(self, body)

    def send_json(self, status, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def reply(text, finish_reason="stop", chat=True):
    choice = {"index": 0, "finish_reason": finish_reason,
              **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
    return {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0, "model": "m",
            "choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


@pytest.fixture
def hostile():
    servers = []

    def start(behave):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        server.daemon_threads = True
        server.behave, server.requests, server.lock = behave, 0, threading.Lock()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def api_teacher(url, monkeypatch, **options):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return teachers.OpenAITeacher("m", url, mode="chat", **{"retries": 0, "timeout": 5.0, **options})


def pool_teacher(url, monkeypatch, **options):
    from scale.teachers import TeacherPool
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return TeacherPool(["openai:m"], base_url=url, mode="chat", **{"retries": 0, "timeout": 5.0, **options})


def assert_no_part_of_the_key(text):
    assert not any(KEY[:n] in text for n in range(8, len(KEY) + 1)), text


def quotes_the_key(handler, body):
    """A 500 whose message quotes the Authorization header it received, key and all, as some proxies do."""
    handler.send_json(500, {"error": {"message": f"upstream failed for Authorization: "
                                                 f"{handler.headers['Authorization']} and key={KEY[:20]}",
                                      "type": "server_error"}})


@pytest.mark.parametrize("make", [api_teacher, pool_teacher])
def test_no_part_of_the_api_key_reaches_stderr(hostile, monkeypatch, capsys, make):
    teacher = make(hostile(quotes_the_key), monkeypatch)
    assert teacher.continuations(["Tom has 3 pens."], 1, 8) == [None]
    err = capsys.readouterr().err
    assert "500" in err or "InternalServerError" in err
    assert_no_part_of_the_key(err)
    assert common.redact(f"Bearer {KEY} and {KEY[:12]}...", [KEY]) == "Bearer *** and ***..."


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-inf", "Wed, 99 Foo 2026 00:00:00 GMT"])
def test_a_retry_after_that_is_not_a_time_falls_back_to_the_backoff(hostile, monkeypatch, value):
    def busy_once(handler, body):
        if handler.server.requests == 1:
            handler.send_json(429, {"error": {"message": "slow down"}}, headers=[("Retry-After", value)])
        else:
            handler.send_json(200, reply(" and 4 more."))
    url = hostile(busy_once)
    pool = pool_teacher(url, monkeypatch, retries=2, backoff=0.05)
    assert pool.continuations(["Tom has 3 pens"], 1, 8) == [[" and 4 more."]]
    assert pool.retried == 1


def trickles(handler, body):
    """Headers at once, then the body one byte every 50 ms (10 s in all): every read arrives in time."""
    data = json.dumps(reply("late")).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    for i in range(len(data)):
        try:
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


@pytest.mark.parametrize("make", [api_teacher, pool_teacher])
def test_the_teacher_timeout_is_a_deadline_for_the_whole_request(hostile, monkeypatch, make):
    teacher = make(hostile(trickles), monkeypatch, timeout=1.0)
    started = time.monotonic()
    assert teacher.continuations(["Tom has 3 pens."], 1, 8) == [None]
    assert time.monotonic() - started < 6   # not the 10 s the server would take (a bound, not a benchmark)


def test_an_oversized_reply_is_cut_before_it_is_tokenized(hostile, monkeypatch, tiny_lm):
    """A 20 MB reply (a server ignoring max_tokens) is refused as it arrives, past the transport's byte cap, and
    never held whole (issue #33, item 7); a 1 MB one, under the cap, is cut to max_tokens · 64 characters before it
    is kept, and the fork keeps its first L tokens."""
    from omniopd_lib.common import MAX_REPLY_BYTES
    huge, large = "7 + 5 = 12. " * 1_700_000, "7 + 5 = 12. " * 90_000
    assert len(huge) > MAX_REPLY_BYTES > len(large) > 16 * CHARACTERS_PER_TOKEN_AT_MOST
    replies = iter([huge, large])
    url = hostile(lambda handler, body: handler.send_json(200, reply(next(replies))))
    _, tokenizer = tiny_lm
    seen = []

    class Watched:   # the real tokenizer, noting how much text each call gets
        def __call__(self, text, **options):
            seen.append(len(text))
            return tokenizer(text, **options)

        def __getattr__(self, name):
            return getattr(tokenizer, name)
    teacher = api_teacher(url, monkeypatch, timeout=60.0)
    assert omniopd.teacher_rollouts(teacher, ["Tom has"], 1, 16, Watched()).wait() == [None]   # refused
    texts = omniopd.teacher_rollouts(teacher, ["Tom has"], 1, 16, Watched()).wait()
    assert texts == [[large[:16]]]   # the toy tokenizer writes a character per token
    assert max(seen) <= 32 * CHARACTERS_PER_TOKEN_AT_MOST   # not 1 MB


@pytest.mark.parametrize("make", [api_teacher, pool_teacher])
def test_a_reply_without_finish_reason_counts_as_cut(hostile, monkeypatch, make):
    answers = iter([reply("", finish_reason=None), reply("seven", finish_reason=None)])
    url = hostile(lambda handler, body: handler.send_json(200, next(answers)))
    teacher = make(url, monkeypatch)
    assert teacher.continuations(["a"], 1, 8) == [None]          # empty and not stopped on purpose: a failure
    assert teacher.continuations(["b"], 1, 8) == [["seven"]]     # text is kept


# ----------------------------------------------------------------------------
# 10-11. Templates and code rows that cannot work


@pytest.mark.parametrize("template, message", [("Solve this.", "has no {question}"),
                                               ("Q: {questio}\nA:", "unknown placeholder {questio}"),
                                               ("Q: {question} {", "literal braces")])
def test_a_prompt_template_that_cannot_work_is_one_line_before_loading(tmp_path, template, message):
    done = cli(*TOY, "--steps", "1", "--prompt-template", template, "--out", str(tmp_path / "run"))
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-1500:]
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()   # refused before anything is written


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "input_output": [["1", "2"]]}, "'input_output' must be an object"),
    ({"question": "q", "public_tests": "print(1)"}, "'public_tests' must be an object"),
    ({"text": "t", "test_list": 5}, "'test_list' must be a list"),
    ({"text": "t", "test_list": "assert f(1) == 2"}, "'test_list' must be a list"),
    ({"text": "t", "test_list": [1]}, "'test_list' must be a list of test-code strings"),
    ({"prompt": "def f():\n", "tests": ["assert f()", 1]}, "'tests' must be a list of test-code strings"),
    ({"prompt": "def f():\n", "test": 3, "entry_point": "f"}, "'test'"),
    ({"prompt": "def f():\n", "test": "assert 1", "entry_point": "f); import os; (f"}, "'entry_point'"),
])
def test_malformed_code_rows_are_one_line_errors_naming_the_row(record, message):
    with pytest.raises(codetask.CodeTaskError, match="row 7: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        codetask.code_row(record, "row 7")


def test_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    for task in ("math", "code"):
        with pytest.raises(OmniOPDError, match="deep.jsonl line 1: JSON nested too deeply"):
            data.load_rows(str(path), "train", 0, task=task)
    nested = json.dumps({"question": "q", "input_output": "[" * 200_000 + "]" * 200_000})
    with pytest.raises(codetask.CodeTaskError, match="not valid JSON"):
        codetask.code_row(json.loads(nested), "row 1")
