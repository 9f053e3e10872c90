"""--lora-rank (#14): PEFT adapters on the toy student. Gradients reach only the adapter, the reference is the
frozen base under it (no second copy), checkpoints hold the adapter and resume exactly, --merge-lora exports a
plain model that computes what the adapted student computes."""

import json

import pytest
import torch

import omniopd
from omniopd_lib import data
from omniopd_lib import models
import toyworld
from omniopd_lib.data import batch_rows
from omniopd_lib.runs import setup

SMALL = dict(batch_size=4, similarity="lexical", eval_size=4, eval_teacher=False, **toyworld.world_options("toy"))


def lora_cfg(tmp_path, name, **options):
    return omniopd.Config(lora_rank=4, out=str(tmp_path / name), **{**SMALL, **options}).resolved()


def one_step(run, cfg, step=0):
    rows = batch_rows(data.load_rows("toy", "train", cfg.seed), step, cfg)
    batch = omniopd.omniopd_collect(run, rows, cfg)
    loss, metrics = omniopd.omniopd_loss(run, batch, cfg)
    return loss, metrics


def test_gradients_reach_only_the_adapter_and_the_reference_is_the_base(tmp_path):
    cfg = lora_cfg(tmp_path, "grads", lr=1e-2)
    run = setup(cfg)
    base, _ = models.load_model("toy", "student", torch.device("cpu"))
    assert list(run.reference.parameters()) == []            # the reference is no second model
    names = {id(p): n for n, p in run.student.named_parameters()}
    trainable = [names[id(p)] for group in run.optimizer.param_groups for p in group["params"]]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in run.student.named_parameters()}
    loss, metrics = one_step(run, cfg)
    assert metrics["loss/anchor"] == pytest.approx(0.0, abs=1e-6)   # B = 0 at the start: student = base
    loss.backward()
    with_grad = {n for n, p in run.student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any("lora_B" in n for n in with_grad)
    run.optimizer.step()
    changed = {n for n, p in run.student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    # after the update: the reference still computes the base model's logits; the student no longer does
    ids = torch.tensor([[5, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        assert torch.allclose(run.reference(input_ids=ids).logits, expected, atol=1e-6)
        assert not torch.allclose(run.student(input_ids=ids).logits, expected, atol=1e-4)


def metrics_of(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_lora_checkpoint_is_the_adapter_and_resumes_exactly(tmp_path):
    whole = lora_cfg(tmp_path, "whole", steps=3, save_every=1)
    omniopd.train(whole)
    checkpoint = tmp_path / "whole/checkpoints/step-000003"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    first = lora_cfg(tmp_path, "resumed", steps=2, save_every=1)
    omniopd.train(first)
    resumed = lora_cfg(tmp_path, "resumed", steps=3, save_every=1, resume=str(tmp_path / "resumed/checkpoints/step-000002"))
    omniopd.train(resumed)

    def measured(m):
        return {k: v for k, v in m.items() if not k.startswith(("time/", "memory/"))}
    # training steps (the first run's own closing evaluation at step 2 stays in its log, as it happened)
    expected = [m for m in metrics_of(tmp_path / "whole") if "loss/total" in m]
    got = [m for m in metrics_of(tmp_path / "resumed") if "loss/total" in m]
    assert [m["step"] for m in got] == [m["step"] for m in expected] == [1, 2, 3]
    assert [measured(m) for m in got] == [measured(m) for m in expected]
    from safetensors.torch import load_file
    a = load_file(str(checkpoint / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step-000003/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merge_lora_exports_a_plain_model_with_the_adapters_logits(tmp_path):
    cfg = lora_cfg(tmp_path, "merge", steps=2, lr=1e-2, merge_lora=True)
    summary = omniopd.train(cfg)
    from peft import PeftModel
    base, _ = models.load_model("toy", "student", torch.device("cpu"))
    adapted = PeftModel.from_pretrained(base, summary["checkpoint"])
    merged, _ = models.load_model(summary["merged"], "student", torch.device("cpu"))   # no PEFT needed
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[5, 40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
        fresh, _ = models.load_model("toy", "student", torch.device("cpu"))
        assert not torch.allclose(merged(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("argv, says", [
    (["--merge-lora"], "--merge-lora needs --lora-rank"),
    (["--lora-rank", "4", "--lora-target-modules", "no_such_proj"], "--lora-target-modules no_such_proj"),
])
def test_lora_misuse_is_one_line(tmp_path, capsys, argv, says):
    code = omniopd.main([*argv, "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and says in error[-1], error


def test_resuming_a_full_checkpoint_with_lora_is_one_line(tmp_path, capsys):
    omniopd.train(omniopd.Config(steps=1, out=str(tmp_path / "full"), **SMALL).resolved())
    code = omniopd.main([*toyworld.world_args("toy"), "--batch-size", "4", "--similarity", "lexical", "--lora-rank", "4",
                         "--resume", str(tmp_path / "full/checkpoints/step-000001"), "--steps", "2", "--out",
                         str(tmp_path / "full")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot change --lora-rank (0 -> 4)" in error[-1], error
