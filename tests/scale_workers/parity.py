"""Run under torchrun by tests/test_scale.py: one distributed_step of scale/train.py on this rank's share
of a fixed, saved batch; rank 0 writes the global loss and the full updated weights."""

import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import omniopd
from scale import train as scale


def share_of(batch, rank, world):
    """This rank's rollouts and the forks of those rollouts (renumbered to the rank's rows), as scale/train.py's
    collect gives them; the loss's denominators are then re-summed."""
    rows = scale.my_share(list(range(batch.rollout.prompt_ids_B_P.shape[0])), rank, world)
    forks = [f for f, (b, _) in enumerate(batch.drafts.forks) if b in rows]
    rollout = omniopd.Rollout(*(getattr(batch.rollout, f)[rows] for f in
                                ("prompt_ids_B_P", "prompt_mask_B_P", "response_ids_B_T", "response_mask_B_T")))
    drafts = batch.drafts.subset(forks)
    drafts.forks = [(rows.index(b), t) for b, t in drafts.forks]
    return omniopd.StepBatch(rollout, drafts, batch.target_F_K[forks], num_tokens=int(rollout.response_mask_B_T.sum()),
                             num_forks=len(forks), num_rollouts=len(rows))


def main(batch_path, out_path, *options):
    cfg = scale.parse_args(list(options))
    rank, world = scale.init_distributed(cfg)
    run = scale.setup(cfg, rank, world)
    loss, metrics = scale.distributed_step(run, share_of(torch.load(batch_path, weights_only=False), rank, world), cfg)
    weights = get_model_state_dict(run.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"loss": loss, "grad_norm": metrics["grad/norm"], "weights": weights}, out_path)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
