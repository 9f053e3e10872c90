"""One registration per objective (#34): a third reading, defined outside the project's files
(tests/scale_workers/third_objective.py), registered with one line, runs through omniopd.py's command line, its
metrics log, a resume, and scale/train.py under torchrun at world size 2, touching nothing else."""

import json
import math

import pytest

import omniopd
import toyworld
from conftest import ROOT
from test_scale import metrics, torchrun

workers = ROOT / "tests" / "scale_workers"
OPTIONS = [*toyworld.world_args("toy"), "--batch-size", "8", "--eval-size", "8", "--seed", "3", "--similarity", "lexical",
           "--objective", "uniform"]


@pytest.fixture
def uniform_objective(monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("third_objective", workers / "third_objective.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(omniopd.OBJECTIVES, "uniform", None)
    module.register()
    return module


def test_a_registered_objective_runs_logs_and_resumes(uniform_objective, tmp_path):
    out = tmp_path / "run"
    assert omniopd.main([*OPTIONS, "--steps", "2", "--save-every", "1", "--out", str(out)]) == 0
    steps = [m for m in metrics(out) if "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for step in steps:   # its target is uniform: p̂'s entropy is log K, its own metric is logged
        assert step["uniform/target_entropy"] == pytest.approx(math.log(4), abs=1e-5) and step["uniform/forks"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "uniform" and config["chunk_len"] == 16   # its defaults
    resumed = tmp_path / "resumed"
    assert omniopd.main([*OPTIONS, "--steps", "3", "--resume", str(out / "checkpoints" / "step-000001"),
                         "--out", str(resumed)]) == 0
    assert [m["step"] for m in metrics(resumed) if "loss/total" in m] == [2, 3]
    assert omniopd.main([*OPTIONS, "--steps", "1", "--num-drafts", "1", "--out", str(tmp_path / "bad")]) == 2


def test_a_registered_objective_runs_under_scale_on_two_ranks(tmp_path):
    torchrun(2, workers / "third_objective.py", *OPTIONS, "--steps", "2", "--out", str(tmp_path / "two"))
    steps = [m for m in metrics(tmp_path / "two") if "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for step in steps:   # its declared count adds up over the ranks (the forks of both ranks), its rate is averaged
        assert 0 < step["uniform/forks"] <= step["forks/count"] and step["uniform/forks"] == int(step["uniform/forks"])
        assert step["uniform/target_entropy"] == pytest.approx(math.log(4), abs=1e-5)
