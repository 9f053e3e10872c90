"""The baselines OmniOPD is measured against, behind omniopd.py's functions: each is a collect (no gradient) and a
loss on what was collected, trained by omniopd.train's loop with `--method opd|sft|grpo`.

- opd: white-box token-level on-policy distillation (needs the teacher's logits, so the student's tokenizer);
- sft: supervised fine-tuning on the teacher's own full solutions (text only, so an API teacher works);
- grpo: self-exploratory RL on the checker's reward, with no teacher.

Importing this file registers them in omniopd.METHODS (omniopd.py imports it at its end).
"""

import torch

from omniopd import METHODS, StepBatch, anchor_kl, anchor_term, response_logits, rollouts_with_entropy
from omniopd_lib.fastpaths import token_logprobs_and_entropy
from omniopd_lib.generation import completion_nll, response_texts
from omniopd_lib.grading import grade
from omniopd_lib.teachers import CHARACTERS_PER_TOKEN_AT_MOST, draw_name, teacher_view_template
from omniopd_lib.tracking import rollout_metrics


@torch.no_grad()
def rollout_collect(run, rows, cfg) -> StepBatch:
    """OPD's collection: student rollouts only (the teacher's logits are read in the loss)."""
    rollout, _ = rollouts_with_entropy(run, rows, cfg)
    return StepBatch(rollout, num_tokens=int(rollout.response_mask_B_T.sum()))


def opd_loss(run, batch, cfg):
    """White-box token-level OPD on student samples; needs the teacher's logits (a local teacher with the student's
    tokenizer). sampled: loss -mean_t A_t log π_θ(y_t|s_t) with A_t = log π_T(y_t|s_t) - log π_θ(y_t|s_t) detached;
    full: mean_t KL(π_θ(·|s_t) ‖ π_T(·|s_t)). Both average over the generated tokens."""
    rollout = batch.rollout
    logits_B_T_V = response_logits(run.student, rollout)
    with torch.no_grad():
        teacher_logits_B_T_V = response_logits(run.teacher.model, rollout)
    run.teacher.calls += rollout.response_ids_B_T.shape[0]
    run.teacher.tokens += int(rollout.response_mask_B_T.sum())
    vocab = min(logits_B_T_V.shape[-1], teacher_logits_B_T_V.shape[-1])  # embedding tables may be padded
    logits_B_T_V, teacher_logits_B_T_V = logits_B_T_V[..., :vocab], teacher_logits_B_T_V[..., :vocab]
    logprobs_B_T, entropy_B_T = token_logprobs_and_entropy(logits_B_T_V, rollout.response_ids_B_T)
    mask_B_T = rollout.response_mask_B_T
    if cfg.opd_kl == "full":
        # the anchor's reverse KL, toward the teacher instead of the base model
        loss = anchor_kl(logits_B_T_V, teacher_logits_B_T_V, mask_B_T, num_tokens=batch.num_tokens)
    else:
        teacher_logprobs_B_T, _ = token_logprobs_and_entropy(teacher_logits_B_T_V, rollout.response_ids_B_T)
        # A_t = log π_T(y_t) - log π_θ(y_t), a per-token reward with no gradient
        loss = policy_gradient_loss(logprobs_B_T, (teacher_logprobs_B_T - logprobs_B_T).detach(), mask_B_T,
                                    num_tokens=batch.num_tokens)
    return loss, {"loss/opd": loss.item(), **rollout_metrics(rollout, entropy_B_T)}


@torch.no_grad()
def sft_collect(run, rows, cfg) -> StepBatch:
    """SFT's collection: the teacher writes a full solution for each prompt (text only, so an API teacher works)."""
    prompts = [teacher_view_template(cfg).format(question=r["question"]) for r in rows]
    with run.clock("teacher"):
        solutions = run.teacher.continuations(prompts, n=1, max_tokens=cfg.max_new_tokens,
                                              draw=draw_name(cfg, run.step), rows=rows)
    limit = cfg.max_new_tokens * CHARACTERS_PER_TOKEN_AT_MOST   # a server may ignore max_tokens
    kept = [(r["question"], s[0][:limit]) for r, s in zip(rows, solutions) if s and s[0].strip()]
    # each solution is trained on with the EOS that ends it
    num_tokens = sum(len(run.tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for _, s in kept)
    return StepBatch(solutions=kept, num_tokens=num_tokens, metrics={"sft/solutions": len(kept)})


def sft_loss(run, batch, cfg):
    """SFT: next-token NLL of the teacher's solutions, -mean_t log π_θ(y_t | x, y_<t)."""
    if not batch.solutions:
        return torch.zeros((), requires_grad=True), batch.metrics
    loss = completion_nll(run.student, run.tokenizer, questions=[q for q, _ in batch.solutions],
                          completions=[s for _, s in batch.solutions], template=cfg.prompt_template,
                          num_tokens=batch.num_tokens, system_prompt=cfg.system_prompt)
    return loss, {"loss/sft": loss.item(), **batch.metrics}


def policy_gradient_loss(logprobs_B_T, advantages_B_T, mask_B_T, num_tokens=None) -> torch.Tensor:
    """-Σ_t A_t log π_θ(y_t) / (number of generated tokens): OPD's sampled form and GRPO share it."""
    mask_B_T = mask_B_T.float()
    return -(advantages_B_T * logprobs_B_T * mask_B_T).sum() / (num_tokens or mask_B_T.sum().clamp(min=1))


def group_advantages(rewards_G: torch.Tensor) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean(r)) / (std(r) + ε) within one prompt's group (population std)."""
    return (rewards_G - rewards_G.mean()) / (rewards_G.std(unbiased=False) + 1e-6)


@torch.no_grad()
def grpo_collect(run, rows, cfg) -> StepBatch:
    """GRPO's collection: G samples per prompt (rows holds each prompt G times), reward r_i from grade (1 when
    the final answer checks or the program passes its tests), group-normalised advantages."""
    rollout, _ = rollouts_with_entropy(run, rows, cfg)
    texts = response_texts(run.tokenizer, rollout)
    rewards_B = torch.tensor([graded["reward"] for graded in grade(rows, texts, cfg)])
    advantages_B = torch.cat([group_advantages(g) for g in rewards_B.split(cfg.group_size)])
    return StepBatch(rollout, advantages_B=advantages_B, num_tokens=int(rollout.response_mask_B_T.sum()),
                     metrics={"grpo/reward": rewards_B.mean().item()})


def grpo_loss(run, batch, cfg):
    """GRPO (self-exploratory RL): loss -mean_t A log π_θ(y_t) + β · KL anchor."""
    rollout = batch.rollout
    logits_B_T_V = response_logits(run.student, rollout)
    logprobs_B_T, entropy_B_T = token_logprobs_and_entropy(logits_B_T_V, rollout.response_ids_B_T)
    advantages_B_T = batch.advantages_B.to(logits_B_T_V.device)[:, None].expand_as(logprobs_B_T)
    loss_pg = policy_gradient_loss(logprobs_B_T, advantages_B_T, rollout.response_mask_B_T,
                                   num_tokens=batch.num_tokens)
    loss_anchor = anchor_term(run, rollout, logits_B_T_V, cfg, num_tokens=batch.num_tokens)
    return loss_pg + cfg.kl_beta * loss_anchor, {
        "loss/pg": loss_pg.item(), "loss/anchor": loss_anchor.item(), **batch.metrics,
        **rollout_metrics(rollout, entropy_B_T)}


METHODS.update(opd=(rollout_collect, opd_loss), sft=(sft_collect, sft_loss), grpo=(grpo_collect, grpo_loss))
