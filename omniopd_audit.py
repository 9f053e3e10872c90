"""OmniOPD's second reading, `--objective audit`: audit the student's own chunk (docs/method.md, tutorial/11_audit.md).

A public implementation's reading of the abstract, in the paper's letters: M non-overlapping C-token chunks of the
student's own response at the highest H_t, N teacher continuations from each chunk's prefix, k_sem = Σ_j φ(chunk, r_j)
with φ a normalised edit distance, π̂ = (k_sem + α π̄) / (N + α) with π̄ the chunk's geometric-mean probability, and
L = (-Σ_c π̂_c Σ_{t∈c} log π_θ(y_t) + β Σ_{t unaudited} KL(π_ref ‖ π_θ)) / B.

It shares omniopd.py's steps 1, 3 (its own chunk as the only draft), 4 and 5's backends; its anchors, π̂ and loss are
its own, below in order. Importing this file registers it: OBJECTIVES["audit"] (omniopd.py imports it at its end).
"""

import torch

from omniopd import (OBJECTIVES, Objective, StepBatch, anchor_term, context_text, draft_chunks, drafts_to_horizon,
                     horizon_tokens, response_logits, rollouts_with_entropy, similarity_matrices, teacher_rollouts_at)
from omniopd_lib.fastpaths import token_logprobs
from omniopd_lib.generation import decode_after, stop_token_ids
from omniopd_lib.tracking import audit_metrics, rollout_metrics



def audit_anchors(entropy_B_T, response_ids_B_T, mask_B_T, stops, num_chunks, chunk_len) -> list[tuple[int, int]]:
    """Audit step 2: per rollout, up to M non-overlapping chunks of exactly C tokens, taken greedily by the highest
    H_t at their first token (a tie to the later t), each inside y before its stop token; returns (b, t) starts."""
    anchors = []
    for b in range(entropy_B_T.shape[0]):
        length = int(mask_B_T[b].sum())
        length -= int(length > 0 and int(response_ids_B_T[b, length - 1]) in stops)   # the stop token is never audited
        entropy = entropy_B_T[b].tolist()
        chosen = []
        for t in sorted(range(length - chunk_len + 1), key=lambda t: (-entropy[t], -t)):
            if len(chosen) < num_chunks and all(abs(t - s) >= chunk_len for s in chosen):
                chosen.append(t)
        anchors += [(b, t) for t in sorted(chosen)]
    return anchors


def audit_target(k_sem_F, mean_logprob_F, num_samples, alpha):
    """Audit step 6: π̂ = (k_sem + α π̄) / (N + α) with π̄ = exp(mean_{t∈c} log π_θ(y_t)), detached: the Dirichlet-
    Multinomial posterior mean with the student's own geometric-mean probability as the prior. Returns (π̂, π̄)."""
    pi_bar_F = mean_logprob_F.detach().exp()
    return (k_sem_F + alpha * pi_bar_F) / (num_samples + alpha), pi_bar_F


@torch.no_grad()
def audit_collect(run, rows, cfg) -> StepBatch:
    """The audit reading's steps 1-6, no gradient: rollouts, M chunks each, N teacher continuations from each chunk's
    prefix, k_sem = Σ_j φ(own chunk, r_j) and π̂. A chunk without N answers is dropped, never scored as disagreement."""
    student, tokenizer = run.student, run.tokenizer
    # N answers per chunk: a pool of T teachers (scale/) answers each of the N samples T times
    num_samples = cfg.teacher_samples * getattr(run.teacher, "answers_per_sample", 1)
    rollout, entropy_B_T = rollouts_with_entropy(run, rows, cfg)                              # step 1
    anchors = audit_anchors(entropy_B_T, rollout.response_ids_B_T, rollout.response_mask_B_T,  # step 2
                            stops=set(stop_token_ids(student, tokenizer)), num_chunks=cfg.audit_budget,
                            chunk_len=cfg.chunk_len)
    in_flight = teacher_rollouts_at(run, rows, rollout, anchors, cfg)                          # step 4
    own = draft_chunks(student, tokenizer, rollout, anchors, num_drafts=1,   # step 3 with K = 1: y_{t:t+C} only
                       chunk_len=cfg.chunk_len, temperature=cfg.temperature)
    compared_texts, finished = drafts_to_horizon(student, tokenizer, own, horizon=cfg.horizon,
                                                 num_rollouts=cfg.draft_rollouts, max_tokens=horizon_tokens(cfg),
                                                 temperature=cfg.temperature)
    logprobs_B_T = token_logprobs(response_logits(student, rollout), rollout.response_ids_B_T).cpu()
    answers = in_flight.wait(run.clock)
    kept = [c for c, texts in enumerate(answers) if texts is not None and len(texts) == num_samples]
    own = own.subset(kept)
    with run.clock("similarity"):
        own_texts = [decode_after(tokenizer, prefix, chunk) for prefix, (chunk,) in zip(own.prefix_ids, own.chunk_ids)]
        phi = similarity_matrices(run.similarity, [compared_texts[c] for c in kept], [answers[c] for c in kept],  # 5
                                  contexts_F=[context_text(tokenizer, rollout, anchors[c]) for c in kept],
                                  finished_F_K=[finished[c] for c in kept], num_rollouts=cfg.draft_rollouts,
                                  rows_F=[rows[anchors[c][0]] for c in kept])
    phi_F_N = torch.stack(phi).view(len(kept), num_samples).clamp(0, 1) if kept else torch.zeros(0, num_samples)
    mean_logprob_F = torch.tensor([logprobs_B_T[b, t:t + cfg.chunk_len].mean().item() for b, t in own.forks])
    target_F, pi_bar_F = audit_target(phi_F_N.sum(1), mean_logprob_F, num_samples=num_samples,   # step 6
                                      alpha=cfg.dirichlet_alpha)
    fork_texts = [([text], answers[c], phi_F_N[f:f + 1]) for f, (text, c) in enumerate(zip(own_texts, kept))]
    batch = StepBatch(rollout, own, target_F[:, None], fork_texts=fork_texts, num_forks=len(kept),
                      num_rollouts=len(rows), horizon_texts=[compared_texts[c] for c in kept], objective="audit",
                      entropy_B_T=entropy_B_T)
    batch.metrics = {**audit_metrics(batch, anchors=len(anchors), phi_F_N=phi_F_N, pi_bar_F=pi_bar_F,
                                     chunk_len=cfg.chunk_len),
                     **rollout_metrics(rollout, entropy_B_T)}
    return batch


def audit_loss(run, batch, cfg):
    """The audit reading's loss on a collected batch, summed over tokens and divided by the batch size B:
    L = (-Σ_c π̂_c Σ_{t∈c} log π_θ(y_t) + β Σ_{t unaudited} KL(π_ref(·|s_t) ‖ π_θ(·|s_t))) / B. It only ever
    reinforces: a chunk the teacher agrees with gets more weight on its own likelihood, none is pushed down."""
    rollout = batch.rollout
    logits_B_T_V = response_logits(run.student, rollout)
    logprobs_B_T = token_logprobs(logits_B_T_V, rollout.response_ids_B_T)
    weights_B_T = torch.zeros_like(logprobs_B_T)   # π̂_c on the tokens of chunk c, 0 elsewhere
    audited_B_T = torch.zeros_like(logprobs_B_T, dtype=torch.bool)
    for (b, t), weight in zip(batch.drafts.forks, batch.target_F_K[:, 0].tolist()):
        weights_B_T[b, t:t + cfg.chunk_len], audited_B_T[b, t:t + cfg.chunk_len] = weight, True
    loss_chunk = -(weights_B_T * logprobs_B_T).sum() / batch.num_rollouts
    unaudited_B_T = rollout.response_mask_B_T.bool() & ~audited_B_T
    loss_anchor = anchor_term(run, rollout, logits_B_T_V, cfg, num_tokens=batch.num_rollouts, mask_B_T=unaudited_B_T,
                              form="reference-first")
    return loss_chunk + cfg.kl_beta * loss_anchor, {**batch.metrics, "loss/chunk": loss_chunk.item(),
                                                    "loss/anchor": loss_anchor.item()}


# The public implementation's defaults; on the offline worlds' short responses C = 8 and M = 4 (docs/method.md says
# why). Its anchor is the exact KL(π_ref ‖ π_θ), and its counts add up over ranks in scale/.
OBJECTIVES["audit"] = Objective(
    audit_collect, audit_loss,
    defaults=dict(audit_budget=10, chunk_len=50, teacher_samples=10, kl_beta=0.1, similarity="ned"),
    offline=dict(audit_budget=4, chunk_len=8, teacher_samples=10, kl_beta=0.1, similarity="ned"),
    rules=((lambda cfg: cfg.anchor == "full",
            "--objective audit anchors with the exact KL(π_ref ‖ π_θ); --anchor k3 is the drafts reading's"),),
    summed=("audit/chunks", "audit/dropped", "audit/tokens", "audit/generated"))
