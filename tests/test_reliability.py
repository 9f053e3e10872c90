"""Reliability: exact resume after SIGKILL, a flaky teacher, bad inputs, secrets, non-finite losses.

Every teacher here is a real OpenAI-compatible HTTP server on 127.0.0.1 (omniopd_tools/serve.py)
serving the toy teacher, misbehaving on purpose where a test says so."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import omniopd
from omniopd_lib import models
from omniopd_lib import data
from conftest import ROOT
from omniopd_tools.serve import FaultPlan, start_in_thread

# the toy world; each test names its teacher (scale/ pools repeated --teacher values)
SMALL = ["--student", "toy", "--data", "toy", "--eval-data", "toy", "--batch-size", "8", "--eval-size", "16"]
LOCAL_TEACHER = ["--teacher", "toy"]
SECRET = "sk-OMNIOPD-TEST-SECRET-4f9c2a7e"


def metrics_of(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def cli(*args, env=None, wait=True):
    command = [sys.executable, str(ROOT / "omniopd.py"), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=600)


def error_line(capsys, argv) -> str:
    """Run omniopd.main in this process; it must fail with exactly one line on stderr."""
    assert omniopd.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]


@pytest.fixture
def teacher_server():
    servers = []

    def start(**options):
        server = start_in_thread("toy", served_models={"toy"}, **options)
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield start
    for server in servers:
        server.shutdown()


# ----------------------------------------------------------------------------
# Exact resume

def test_a_run_killed_mid_step_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL during step 4 of 6, resume from the step-3 checkpoint: every step's metrics equal an
    uninterrupted run's (time aside), with an evaluation every 2 steps in between."""
    options = [*SMALL, *LOCAL_TEACHER, "--steps", "6", "--save-every", "1", "--eval-every", "2", "--eval-samples", "2"]
    whole = cli(*options, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = cli(*options, "--out", str(tmp_path / "killed"), wait=False)
    checkpoint = tmp_path / "killed/checkpoints/step-000003"
    while not checkpoint.exists() and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    resumed = cli(*options, "--out", str(tmp_path / "killed"), "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = metrics_of(tmp_path / "whole"), metrics_of(tmp_path / "killed")
    assert [m["step"] for m in got] == [m["step"] for m in expected] == [1, 2, 3, 4, 5, 6, 6]
    def measured(m):   # everything but the clock (time/*, memory/*)
        return {k: v for k, v in m.items() if not k.startswith(("time/", "memory/"))}
    for a, b in zip(expected, got):
        assert measured(a) == measured(b)
        assert a.keys() == b.keys()


# ----------------------------------------------------------------------------
# A flaky teacher, end to end (the scale/ pool, world size 1)

def test_training_survives_a_teacher_failing_30_percent_and_never_pays_twice(teacher_server, tmp_path):
    server, url = teacher_server(faults=FaultPlan(rate=0.3, retry_after=0.1, hang_seconds=2.0, seed=5))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": SECRET}
    options = [*SMALL, "--teacher", "openai:toy", "--teacher-base-url", url, "--teacher-timeout", "1",
               "--teacher-retries", "2", "--similarity", "lexical", "--save-every", "1"]

    def scale_run(*extra):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                               str(ROOT / "scale/train.py"), *options, *extra], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done
    first = scale_run("--steps", "3", "--out", str(tmp_path / "run"))
    steps = [m for m in metrics_of(tmp_path / "run") if "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert sum(server.faults_injected.values()) >= 10 and len(server.faults_injected) == 6
    assert all("forks/skipped" in m for m in steps) and steps[-1]["teacher/retried"] > 0
    assert SECRET not in first.stdout + first.stderr
    # resume at step 2: step 3 asks for exactly the same continuations, and every answer received is reused
    received = server.requests_received
    requests_3 = steps[2]["forks/count"] * 4
    failed_3 = steps[2]["teacher/failures"] - steps[1]["teacher/failures"]
    scale_run("--steps", "3", "--resume", str(tmp_path / "run/checkpoints/step-000002"), "--out", str(tmp_path / "run"))
    redone = [m for m in metrics_of(tmp_path / "run") if "loss/total" in m][-1]
    # the meter goes on from the checkpoint's (step 2's) counters, and this step's bill is what it sent
    assert redone["step"] == 3 and redone["teacher/cached"] - steps[1]["teacher/cached"] == requests_3 - failed_3
    assert server.requests_received - received == redone["teacher/calls"] - steps[1]["teacher/calls"] \
        == redone["bill/requests"]   # only the ones that had failed


# ----------------------------------------------------------------------------
# Bad inputs: each a one-line error before work is lost, or a logged skip

@pytest.mark.parametrize("content, message", [
    (b"", "no rows"),
    (b"\n\n", "no rows"),
    (b'{"question": "' + b"x" * (data.MAX_ROW_BYTES + 10) + b'"}\n', "line 1: longer than"),
])
def test_empty_and_enormous_data_files(tmp_path, capsys, content, message):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    assert message in error_line(capsys, ["--data", str(data), "--eval-data", "stories", "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("option, value, message", [
    ("--num-drafts", "1", "at least 2"),
    ("--chunk-len", "0", "--chunk-len (L) must be at least 1"),
    ("--dirichlet-alpha", "-1", "--dirichlet-alpha must be 0 or more"),
    ("--teacher-samples", "0", "(M) must be at least 1"),
    ("--vote-temperature", "0", "must be positive"),
])
def test_settings_that_cannot_work_stop_before_anything_loads(tmp_path, capsys, option, value, message):
    assert message in error_line(capsys, [option, value, "--out", str(tmp_path / "run")])


def test_missing_data_file_and_unwritable_output(tmp_path, capsys):
    assert "data file not found" in error_line(capsys, ["--data", str(tmp_path / "nope.jsonl"), "--eval-data", "stories",
                                                        "--out", str(tmp_path / "r")])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert "cannot write to output folder" in error_line(capsys, ["--out", str(blocker / "run")])


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path, capsys):
    assert "not a checkpoint folder" in error_line(capsys, ["--resume", str(tmp_path), "--out", str(tmp_path / "r")])


def test_wrong_api_key_is_one_line_without_the_key(teacher_server, tmp_path, capsys, monkeypatch):
    _, url = teacher_server(api_key="sk-the-right-key")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    line = error_line(capsys, [*SMALL, "--teacher", "openai:toy", "--teacher-base-url", url, "--steps", "2",
                               "--out", str(tmp_path / "run")])
    assert "rejected the API key" in line and SECRET not in line


def test_unknown_api_model_is_one_line(teacher_server, tmp_path, capsys, monkeypatch):
    _, url = teacher_server()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    line = error_line(capsys, [*SMALL, "--teacher", "openai:gpt-nope", "--teacher-base-url", url, "--steps", "2",
                               "--out", str(tmp_path / "run")])
    assert "does not know the model" in line


@pytest.mark.parametrize("how", ["unreachable", "nothing usable"])
def test_a_teacher_that_never_answers_stops_after_three_steps_with_progress_saved(teacher_server, tmp_path,
                                                                                  capsys, monkeypatch, how):
    if how == "unreachable":
        url = "http://127.0.0.1:9/v1"   # nothing listens on the discard port
    else:
        _, url = teacher_server(faults=FaultPlan(rate=1.0, kinds=("empty",)))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    line = error_line(capsys, [*SMALL, "--teacher", "openai:toy", "--teacher-base-url", url, "--teacher-retries", "0",
                               "--teacher-timeout", "2", "--steps", "10", "--out", str(tmp_path / "run")])
    assert "no usable answer 3 steps in a row" in line and "step-000003" in line
    assert (tmp_path / "run/checkpoints/step-000003/trainer_state.pt").exists()
    assert [m["forks/skipped"] == m["forks/count"] > 0 for m in metrics_of(tmp_path / "run")] == [True] * 3


def test_a_batch_with_no_forks_is_logged_and_training_goes_on(tmp_path):
    assert omniopd.main([*SMALL, *LOCAL_TEACHER, "--steps", "2", "--entropy-threshold", "100", "--out", str(tmp_path / "run")]) == 0
    steps = [m for m in metrics_of(tmp_path / "run") if "loss/total" in m]
    assert [m["forks/count"] for m in steps] == [0, 0] and all(m["loss/chunk"] == 0 for m in steps)


# ----------------------------------------------------------------------------
# Numerical guards

@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_losses_are_skipped_and_three_in_a_row_stop_the_run(tmp_path, capsys, monkeypatch, poison):
    """Steps 3, 4, 5 get a non-finite loss (injected into the real loss): none is applied, the run
    stops after the third, and the last checkpoint holds the weights of step 2."""
    collect, real_loss = omniopd.method_functions(omniopd.Config())

    def poisoned_loss(run, batch, cfg):
        loss, metrics = real_loss(run, batch, cfg)
        return (loss * poison if run.step in (2, 3, 4) else loss), metrics
    monkeypatch.setitem(omniopd.OBJECTIVES, "drafts", dataclasses.replace(omniopd.OBJECTIVES["drafts"], loss=poisoned_loss))
    out = tmp_path / "run"
    line = error_line(capsys, [*SMALL, *LOCAL_TEACHER, "--steps", "10", "--save-every", "1", "--similarity", "lexical", "--out", str(out)])
    assert "not finite 3 steps in a row" in line and "step-000002" in line
    assert [m.get("loss/nonfinite_skipped", 0) for m in metrics_of(out)] == [0, 0, 1, 1, 1]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    saved, _ = models.load_model(str(out / "checkpoints/step-000002"), "student", torch.device("cpu"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())


# ----------------------------------------------------------------------------
# Secrets

def test_the_api_key_reaches_no_log_file_checkpoint_or_error(teacher_server, tmp_path):
    """A recognisable key, a teacher that fails 30 % of requests, then a server that rejects the key:
    the key is in none of stdout, stderr, config.json, metrics.jsonl, checkpoints or the error."""
    _, url = teacher_server(api_key=SECRET, faults=FaultPlan(rate=0.3, retry_after=0.1, hang_seconds=2.0))
    options = [*SMALL, "--teacher", "openai:toy", "--teacher-base-url", url, "--teacher-timeout", "1",
               "--teacher-retries", "1", "--steps", "2", "--save-every", "1", "--similarity", "lexical"]
    good = cli(*options, "--out", str(tmp_path / "run"), env={"OPENAI_API_KEY": SECRET})
    assert good.returncode == 0, good.stderr[-2000:]
    _, strict_url = teacher_server(api_key="sk-some-other-key")
    bad = cli(*options, "--teacher-base-url", strict_url, "--out", str(tmp_path / "rejected"),
              env={"OPENAI_API_KEY": SECRET})
    assert bad.returncode == 2 and "rejected the API key" in bad.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "trainer_state.pt" for p in files) and any(p.name == "metrics.jsonl" for p in files)
    for text in [good.stdout, good.stderr, bad.stdout, bad.stderr]:
        assert SECRET not in text
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
