"""scale/train.py under torchrun on CPU (gloo): parity with one process, world size 1 = omniopd.py,
checkpoints saved on 2 ranks loaded on 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import omniopd
from omniopd_lib import common
from omniopd_lib import data
from omniopd_lib import models
import toyworld
from omniopd_lib.data import batch_rows
from omniopd_lib.runs import setup

ROOT = Path(__file__).resolve().parent.parent
TOY = [*toyworld.world_args("toy"), "--batch-size", "8", "--eval-size", "16", "--seed", "3"]


def torchrun(nproc, script, *args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--standalone", str(script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["drafts", "audit"])
def test_two_ranks_equal_one_process_on_a_fixed_batch(tmp_path, objective):
    """Loss and updated weights of one distributed step at world size 2 equal omniopd's one-process step, for
    both readings (the audit reading divides by the batch size, summed over ranks)."""
    cfg = omniopd.Config(batch_size=8, seed=3, similarity="lexical", objective=objective,
                         **toyworld.world_options("toy")).resolved()
    run = setup(cfg)
    collect, loss_fn = omniopd.method_functions(cfg)
    batch = collect(run, batch_rows(data.load_rows("toy", "train", 3), 0, cfg), cfg)
    assert batch.num_forks >= 2
    torch.save(batch, tmp_path / "batch.pt")
    loss, _ = loss_fn(run, batch, cfg)
    norm = omniopd.update(run, loss, cfg.grad_clip)
    torchrun(2, ROOT / "tests/scale_workers/parity.py", tmp_path / "batch.pt", tmp_path / "out.pt",
             *toyworld.world_args("toy"), "--batch-size", "8", "--seed", "3", "--similarity", "lexical",
             "--objective", objective)
    distributed = torch.load(tmp_path / "out.pt", weights_only=False)
    assert distributed["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert distributed["grad_norm"] == pytest.approx(norm, rel=1e-5)
    worst = max((distributed["weights"][name] - p.detach()).abs().max().item()
                for name, p in run.student.named_parameters())
    # stated tolerance: fp32 sums in a different order, which Adam's first step (g / (|g| + ε)) magnifies where a
    # gradient is near ε; every weight within 1 % of one step (lr) of the one-process update
    assert worst < 0.01 * cfg.lr, worst


def test_world_size_one_behaves_exactly_like_omniopd(tmp_path):
    options = [*TOY, "--steps", "2", "--similarity", "lexical"]
    assert omniopd.main([*options, "--out", str(tmp_path / "one")]) == 0
    torchrun(1, ROOT / "scale/train.py", *options, "--out", str(tmp_path / "scale"))
    for plain, scaled in zip(metrics(tmp_path / "one"), metrics(tmp_path / "scale"), strict=True):
        for key in ("loss/total", "loss/chunk", "loss/anchor", "grad/norm", "forks/count", "eval/accuracy"):
            assert (key in plain) == (key in scaled)
            if key in plain:
                assert scaled[key] == pytest.approx(plain[key], abs=1e-5), key
    # the run's page (#35): scale/ records the same steps' forks as omniopd.py, and the page draws them
    views = [[json.loads(line) for line in (tmp_path / run / "view.jsonl").read_text().splitlines()]
             for run in ("one", "scale")]
    assert [[(r["step"], len(r["forks"])) for r in v] for v in views] == [[(1, len(views[0][0]["forks"])), (2, len(
        views[0][1]["forks"]))]] * 2
    assert torch.allclose(torch.tensor(views[1][0]["forks"][0]["S"]), torch.tensor(views[0][0]["forks"][0]["S"]),
                          atol=1e-4)
    from omniopd_tools import view
    assert view.page(tmp_path / "scale").count('class="forkbox"') == sum(len(r["forks"]) for r in views[1])


def test_checkpoint_saved_on_two_ranks_loads_on_one_and_continues(tmp_path):
    options = [*TOY, "--similarity", "lexical"]
    torchrun(2, ROOT / "scale/train.py", *options, "--steps", "2", "--save-every", "1", "--out", str(tmp_path / "two"))
    checkpoint = tmp_path / "two/checkpoints/step-000002"
    assert json.loads((checkpoint / "trainer.json").read_text())["world_size"] == 2
    # loaded on one rank with nothing left to train: its export equals the two-rank export
    torchrun(1, ROOT / "scale/train.py", *options, "--steps", "2", "--resume", str(checkpoint), "--out", str(tmp_path / "same"))
    saved, _ = models.load_model(str(tmp_path / "two/export"), "student", torch.device("cpu"))
    loaded, _ = models.load_model(str(tmp_path / "same/export"), "student", torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    # and it continues: one more step on one rank
    done = torchrun(1, ROOT / "scale/train.py", *options, "--steps", "3", "--resume", str(checkpoint),
                    "--out", str(tmp_path / "more"))
    assert "resumed on 1" in done.stderr
    assert [m["step"] for m in metrics(tmp_path / "more") if "loss/total" in m] == [3]


def test_scale_refuses_a_new_seed_on_resume_and_a_folder_in_use(tmp_path):
    """#22 in scale/ as in omniopd.py: resume may not change the seed; one run per --out."""
    options = [*TOY, "--similarity", "lexical", "--steps", "1"]
    torchrun(1, ROOT / "scale/train.py", *options, "--out", str(tmp_path / "run"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    def refused(*args):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
                               str(ROOT / "scale/train.py"), *options, *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=ROOT)
        return done.returncode != 0 and [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    lines = refused("--steps", "2", "--seed", "4", "--resume", str(tmp_path / "run/checkpoints/step-000001"),
                    "--out", str(tmp_path / "resumed"))
    assert lines and "--seed (3 -> 4)" in lines[0], lines
    held = common.lock_folder(tmp_path / "run")
    lines = refused("--out", str(tmp_path / "run"))
    held.close()
    assert lines and "another run is writing to" in lines[0], lines


def test_scale_stops_when_the_teacher_stops_answering_with_progress_saved(tmp_path):
    """The stop omniopd.train has (#23: scale/ now shares it): three steps with no usable teacher answer save a
    checkpoint and end the run in one line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": "sk-x"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
                           str(ROOT / "scale/train.py"), "--student", "toy", "--data", "toy", "--batch-size", "8",
                           "--eval-size", "16", "--similarity", "lexical", "--teacher", "openai:toy",
                           "--teacher-base-url", "http://127.0.0.1:9/v1", "--teacher-retries", "0",
                           "--teacher-timeout", "2", "--steps", "10", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode != 0 and lines and "no usable answer 3 steps in a row" in lines[0], done.stderr[-2000:]
    assert (tmp_path / "run/checkpoints/step-000003/trainer.json").exists()
    assert [m["step"] for m in metrics(tmp_path / "run") if "loss/total" in m] == [1, 2, 3]


def test_two_ranks_log_a_global_audit_and_bill_that_a_resume_continues(tmp_path):
    """#33, also-check: at world size 2 with the audit reading, audit/records number each rollout in the whole batch
    (rank 1's follow rank 0's), audit/fraction is the summed audited tokens over the summed generated tokens (not
    the ranks' mean), the local teachers' meters add up over ranks (rank 0's alone is about half the bill), and a
    resumed run's meter continues from the checkpoint's instead of starting again at zero."""
    options = [*TOY, "--similarity", "lexical", "--objective", "audit", "--teacher-samples", "3"]
    torchrun(2, ROOT / "scale/train.py", *options, "--steps", "2", "--save-every", "1", "--out", str(tmp_path / "two"))
    steps = [m for m in metrics(tmp_path / "two") if "loss/total" in m]
    for step in steps:
        rollouts = [record["rollout"] for record in step["audit/records"]]
        assert len(rollouts) == step["audit/chunks"] and all(0 <= r < 8 for r in rollouts)
        assert max(rollouts) >= 4   # rank 1's rollouts are 4..7
        assert step["audit/fraction"] == pytest.approx(step["audit/tokens"] / step["audit/generated"])
        # every chunk asked for its 3 answers, on whichever rank it was drafted
        assert step["bill/tokens"] > 0 and step["teacher/calls"] - (steps[0]["teacher/calls"] if step is steps[1]
                                                                     else 0) == 3 * (step["audit/chunks"] + step["audit/dropped"])
    torchrun(2, ROOT / "scale/train.py", *options, "--steps", "3", "--resume",
             str(tmp_path / "two/checkpoints/step-000002"), "--out", str(tmp_path / "resumed"))
    resumed = [m for m in metrics(tmp_path / "resumed") if "loss/total" in m]
    assert [m["step"] for m in resumed] == [3]
    assert resumed[0]["teacher/tokens"] == steps[1]["teacher/tokens"] + resumed[0]["bill/tokens"]
    assert resumed[0]["teacher/calls"] == steps[1]["teacher/calls"] + 3 * (resumed[0]["audit/chunks"]
                                                                            + resumed[0]["audit/dropped"])


def test_a_tampered_checkpoints_teacher_counters_restore_only_counts(tmp_path):
    """teacher-rank{r}.json is untrusted: deep nesting, a list, negative, fractional or boolean amounts and settings
    that are not counters change nothing; at another world size rank 0 takes the sum of what is well formed."""
    from scale import train as scale_train
    (tmp_path / "teacher-rank0.json").write_text('{"calls": 5, "tokens": -3, "model": "o1-pro", "failures": true}')
    (tmp_path / "teacher-rank1.json").write_text("[" * 100_000)
    (tmp_path / "teacher-rank2.json").write_text('{"calls": 2.5, "requests": 4}')

    class Teacher:
        calls = failures = tokens = requests = 0
        model = "mine"
    teacher = Teacher()
    scale_train.restore_counters(teacher, scale_train.saved_counters(tmp_path, 3, 0, 1))
    assert (teacher.calls, teacher.failures, teacher.tokens, teacher.requests, teacher.model) == (0, 0, 0, 4, "mine")
    scale_train.restore_counters(teacher, scale_train.saved_counters(tmp_path, 3, 0, 3))
    assert (teacher.calls, teacher.tokens, teacher.model) == (5, 0, "mine")
    assert scale_train.saved_counters(tmp_path, 3, 1, 3) == {}
