"""The command line end to end on tiny real models: metrics, config, checkpoints, resume, errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import omniopd
from conftest import ROOT
from omniopd_tools.serve import start_in_thread


def run_cli(*args, env=None, timeout=300):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "omniopd.py"), *args], capture_output=True, text=True,
                          env=environment, timeout=timeout, cwd=ROOT)


def tiny_args(model, out, *extra):
    return ["--student", model, "--teacher", model, "--data", "stories", "--steps", "2", "--batch-size", "2", "--eval-size", "4",
            "--max-new-tokens", "16", "--chunk-len", "4", "--num-drafts", "3", "--teacher-samples", "2",
            "--out", str(out), *extra]


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_steps_write_metrics_config_and_a_checkpoint_that_loads_and_resumes(tiny_model_path, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*tiny_args(tiny_model_path, out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student before" in result.stdout and "student after" in result.stdout
    steps = [m for m in read_metrics(out) if "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        for key in ["loss/chunk", "loss/anchor", "forks/count", "teacher/calls", "teacher/failures", "grad/norm"]:
            assert key in m
        assert m["forks/count"] > 0 and "sim/mean" in m and "pref/entropy" in m
    assert steps[0]["loss/anchor"] == pytest.approx(0.0, abs=1e-6)      # student == reference before step 1
    # the counter adds up: M = 2 continuations for every fork of every step so far
    assert [m["teacher/calls"] for m in steps] == [2 * steps[0]["forks/count"],
                                                  2 * (steps[0]["forks/count"] + steps[1]["forks/count"])]
    assert "eval/accuracy" in read_metrics(out)[-1]
    config = json.loads((out / "config.json").read_text())
    assert config["kl_beta"] == 0.05 and config["num_drafts"] == 3 and config["fork_gap"] == 4
    checkpoint = out / "checkpoints" / "step-000002"
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=False)["step"] == 2
    assert (out / "eval-step-000000.jsonl").exists() and (out / "eval-step-000002.jsonl").exists()

    resumed = run_cli(*tiny_args(tiny_model_path, out, "--resume", str(checkpoint), "--steps", "3"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [m["step"] for m in read_metrics(out) if "loss/total" in m]
    assert steps == [1, 2, 3]
    assert (out / "checkpoints" / "step-000003").exists()


def test_openai_teacher_through_the_cli(tiny_model_path, tmp_path):
    server = start_in_thread(tiny_model_path)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = tmp_path / "api"
        result = run_cli(*tiny_args(tiny_model_path, out, "--teacher", "openai:toy", "--teacher-base-url", url,
                                    "--teacher-mode", "completion", "--similarity", "lexical", "--steps", "1"),
                         env={"OPENAI_API_KEY": "sk-loopback-test-key"})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = [m for m in read_metrics(out) if "loss/total" in m][0]
    assert metrics["teacher/calls"] == metrics["forks/count"] * 2
    # one request per fork carries its M = 2 continuations, and the run's meter counts what the server served
    assert server.requests_served == metrics["forks/count"] == metrics["teacher/requests"]
    assert "sk-loopback-test-key" not in (out / "config.json").read_text() + result.stdout + result.stderr


@pytest.mark.parametrize("content, message", [
    ('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": \n', "line 2: not valid JSON"),
    ('{"question": "1+1?", "answer": "#### 2"}\n{"answer": "#### 4"}\n', "line 2: missing field 'question'"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    (b'{"question": "\xff\xfe"}\n', "line 1: not UTF-8"),
])
def test_malformed_data_row_is_one_clear_line(tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli("--data", str(data), "--eval-data", "stories", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: ") and str(data) in result.stderr and message in result.stderr


def test_unknown_model_is_one_clear_line(tmp_path):
    result = run_cli("--student", "no-such-org/no-such-model", "--teacher", "toy", "--data", "toy", "--out",
                     str(tmp_path / "run"))
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "cannot fetch student model no-such-org/no-such-model" in error_lines[0]


def test_help_explains_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for f in dataclasses.fields(omniopd.Config):
        assert "--" + f.name.replace("_", "-") in result.stdout
        assert f.metadata["help"].split()[0] in result.stdout


def test_an_unknown_choice_is_refused_before_any_work(tmp_path):
    result = run_cli("--votes", "bogus", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "invalid choice: 'bogus'" in result.stderr
    assert not (tmp_path / "run").exists()
