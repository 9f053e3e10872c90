"""A third reading, registered from outside the project (#34): the drafts reading's forks and drafts, trained toward
a uniform target over the K drafts (the teacher's text ignored). `python tests/scale_workers/third_objective.py
ARGS` runs scale/train.py with it registered (under torchrun); tests/test_objectives.py registers it in-process."""

import sys

import torch

import omniopd


def uniform_collect(run, rows, cfg):
    """The drafts reading's collect, then every fork's target replaced by 1/K."""
    batch = omniopd.omniopd_collect(run, rows, cfg)
    batch.target_F_K = torch.full_like(batch.target_F_K, 1.0 / cfg.num_drafts)
    batch.objective = "uniform"
    batch.metrics["uniform/forks"] = batch.num_forks
    batch.metrics["uniform/target_entropy"] = -torch.xlogy(batch.target_F_K, batch.target_F_K).sum(1).mean().item()
    return batch


def register() -> None:
    omniopd.OBJECTIVES["uniform"] = omniopd.Objective(
        uniform_collect, omniopd.omniopd_loss, defaults=omniopd.OBJECTIVES["drafts"].defaults,
        rules=((lambda cfg: cfg.num_drafts >= 2, "--num-drafts must be at least 2"),), summed=(*omniopd.OBJECTIVES["drafts"].summed, "uniform/forks"))


if __name__ == "__main__":
    register()
    from scale import train as scale
    sys.exit(scale.main())
