"""OmniOPD: logit-free on-policy distillation (arXiv 2606.01476), the method end to end in one file.

On-policy distillation trains a small student on its own samples with dense feedback from a stronger teacher;
OmniOPD needs only the teacher's text, so API models can teach. Two readings of the paper's abstract, each step one
function, in order: the first below, the second in omniopd_audit.py beside it (docs/method.md; both measured side by
side in docs/results.md). The baselines (OPD, SFT, GRPO) are omniopd_baselines.py.

--objective drafts (this project's, the default): at the student's high-entropy forks (local maxima of H_t, at
  most B per rollout) the student drafts K chunks of L tokens (the first is what it wrote), the teacher continues
  the prefix M times, each continuation votes softmax_k(S_km / κ) for the drafts it resembles (cosine of
  all-MiniLM-L6-v2 embeddings), p̂ = (votes + α/K) / (M + α), the loss is KL(p̂ ‖ q) with
  q = softmax_k(ℓ_k / |c_k|), and β · KL(π_θ ‖ π_ref) over every generated token anchors the rest.
--objective audit (a public implementation's): M non-overlapping C-token chunks of the student's own response at
  the highest H_t, N teacher continuations from each chunk's prefix, k_sem = Σ_j φ(chunk, r_j) with φ a
  normalised edit distance, π̂ = (k_sem + α π̄) / (N + α) with π̄ the chunk's geometric-mean probability, and
  L = (-Σ_c π̂_c Σ_{t∈c} log π_θ(y_t) + β Σ_{t unaudited} KL(π_ref ‖ π_θ)) / B.

Commands:
  python omniopd.py [--objective audit]         # offline story world, CPU, 4 to 12 minutes on 2 cores
  python omniopd.py --student Qwen2.5-0.5B      # one GPU: Qwen2.5-7B-Instruct teaches, GSM8K train/test
  python omniopd.py --teacher openai:MODEL --teacher-base-url URL   # any API teacher
  torchrun --nproc_per_node=8 scale/train.py ...      # many GPUs (scale/)
The machinery that is not the method (models, data, sampling, grading, teachers, similarity backends, fast
paths, checkpoints, the metrics log, the code sandbox) is the package omniopd_lib/, imported here.

Shape convention: tensor names end in their dimensions, `logprobs_B_T` is (rollouts, response positions):
B rollouts, T response tokens, V vocabulary, F forks (or chunks) in the batch, K drafts, M (or N) teacher
continuations per fork (or chunk).
"""

import contextlib
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from omniopd_lib.checkpoint import save_checkpoint
from omniopd_lib.common import OmniOPDError
from omniopd_lib.config import RunOptions, option
from omniopd_lib.data import batch_rows, load_data
from omniopd_lib.fastpaths import (EntropyRecorder, FullVocabularyKL, ReferenceFirstKL, packed_rollout_and_drafts,
                                   packed_scoring_applies, token_logprobs, token_logprobs_and_entropy)
from omniopd_lib.generation import (PLAIN_TEMPLATE, cut_at_stop, decode_after, encode_prompts, generate, left_pad,
                                    positions, stop_token_ids)
from omniopd_lib.models import save_merged
from omniopd_lib.teachers import InFlight, draw_name, first_tokens
from omniopd_lib.runs import (StopRules, main_with_errors, run_eval, run_folder, setup, step_figures,
                              teacher_accuracy, teacher_bill)
from omniopd_lib.tracking import MetricsLog, fork_metrics, keep_metrics_until, rollout_metrics


# ── Configuration: every default of docs/method.md is a field; its help text is --help. ───────────────────────────

METHOD_NAMES = ["omniopd", "opd", "sft", "grpo"]
@dataclass(frozen=True)
class Objective:
    """One reading of OmniOPD, registered once in OBJECTIVES: its step's collect (no gradient) and loss; the fields
    it sets where the command line leaves them unset (None), `defaults`, or on an offline world's short responses
    `offline` where given; the rules its settings must keep, (holds(cfg), why not) pairs; and its own metrics
    that add up over ranks in scale/ (counts: every other metric is averaged)."""
    collect: Callable
    loss: Callable
    defaults: dict
    offline: dict | None = None
    rules: tuple = ()
    summed: tuple = ()


# --objective NAME: the readings, each registered once (drafts, the default, at the end of this file; audit in
# omniopd_audit.py). A reading of your own is one file like omniopd_audit.py, or in your script before
# omniopd.main(): OBJECTIVES["mine"] = Objective(collect, loss, defaults={...})
OBJECTIVES: dict[str, Objective] = {}


@dataclass
class Config(RunOptions):
    """The method's own settings, in docs/method.md's letters. What to train on and how to run (models, data, the
    teacher's endpoint, the checker, LoRA, tracking, checkpoints) is RunOptions, in omniopd_lib/config.py,
    which this extends, as TRL's GKDConfig extends SFTConfig."""
    method: str = option("omniopd", "omniopd, or a baseline: opd (white-box token-level), sft, grpo", METHOD_NAMES)
    objective: str = option("drafts", "omniopd's reading: drafts (K drafts per fork trained toward p̂) or audit (the "
                                      "student's own chunks weighted by π̂), or one registered in OBJECTIVES; "
                                      "docs/method.md", OBJECTIVES)
    # step 1: on-policy rollout
    steps: int = option(200, "optimizer steps")
    batch_size: int = option(16, "prompts per step")
    temperature: float = option(1.0, "τ: student sampling temperature for rollouts and drafts")
    max_new_tokens: int = option(0, "longest rollout in tokens (0 = 96 for the story world, 48 for toy, 512 otherwise)")
    # step 2: peak-entropy scheduler
    entropy_window: int = option(1, "w: moving-average window over H_t before finding peaks (1 = none)")
    entropy_threshold: float = option(0.1, "h_min: a fork's entropy must be at least this (nats)")
    audit_budget: int | None = option(None, "B (audit: M): most forks or chunks per rollout (default: 4; audit 10, "
                                            "offline 4)")
    audit_ratio: float = option(0.0, "if > 0, the budget is ceil(ratio * |y|) instead of --audit-budget")
    fork_gap: int = option(0, "g: least distance between two forks in tokens (0 = chunk length L)")
    fork_selection: str = option("peak", "peak: entropy peaks; random: random positions (ablation)", ["peak", "random"])
    # step 3: speculative drafts
    num_drafts: int = option(4, "K: candidate chunks per fork (the first is the student's own)")
    chunk_len: int | None = option(None, "L (audit: C): tokens per chunk (default: 16; audit 50, offline 8)")
    # step 4: teacher rollouts
    teacher_samples: int | None = option(None, "M (audit: N): teacher continuations per fork or chunk (default: 4; "
                                               "audit 10)")
    teacher_max_tokens: int = option(0, "most tokens, in the teacher's own tokenizer, per continuation (0 = by "
                                        "--horizon: chunk L with the student's tokenizer, else 2·L; step 2·L; end "
                                        "max-new-tokens)")
    horizon: str = option("chunk", "how far the teacher's continuations and the drafts run before they are compared: "
                                   "chunk (L student tokens), step (to the end of the reasoning step: a sentence or a "
                                   "line), end (to the final answer); under step and end each draft is carried on by "
                                   "the student's own rollouts (--draft-rollouts)", ["chunk", "step", "end"])
    draft_rollouts: int = option(1, "R: under --horizon step or end, the student's rollouts from prefix + draft to "
                                    "the horizon, per draft; S_km is the mean over them")
    # step 5: semantic verification
    similarity: str | None = option(None, "sim (audit: φ): embed (cosine of sentence embeddings), lexical (character "
                                          "n-gram F1), ned (1 - normalised edit distance), rouge1 (word F1), numbers "
                                          "(F1 of the numbers written), answer (do the final answers agree; on code, "
                                          "do the programs pass the same share of the tests; needs --horizon end) "
                                          "(default: embed; audit ned)",
                                    ["embed", "lexical", "ned", "rouge1", "numbers", "answer"])
    similarity_model: str = option("all-MiniLM-L6-v2", "sentence-transformers model for --similarity embed")
    # step 6: Dirichlet-Multinomial preference
    votes: str = option("soft", "soft: w_mk = softmax_k(S_km / κ); hard: one-hot argmax_k S_km", ["soft", "hard"])
    vote_temperature: float = option(0.1, "κ: temperature of the soft votes")
    dirichlet_alpha: float = option(1.0, "α: strength of the Dirichlet prior (0 = raw vote histogram)")
    vote_threshold: float = option(0.0, "if > 0, a teacher rollout whose best S_km is below this abstains and a fork "
                                        "with no votes is skipped (0 = off: every rollout votes)")
    prior: str = option("uniform", "u: uniform over drafts, or student (its renormalised draft probabilities)",
                        ["uniform", "student"])
    # step 7: chunk loss
    length_norm: float = option(1.0, "γ: q_k = softmax(ℓ_k / |c_k|^γ); 1 = per-token mean, 0 = raw sum")
    chunk_loss: str = option("kl", "kl: KL(p̂ ‖ q); pg: policy gradient with advantage p̂_k - 1/K", ["kl", "pg"])
    # step 8: base-model KL anchor
    kl_beta: float | None = option(None, "β: weight of the base-model KL anchor (default: 0.05; audit 0.1)")
    anchor: str = option("full", "full: exact full-vocabulary KL; k3: k3 estimator on sampled tokens", ["full", "k3"])
    # step 9: update
    lr: float = option(0.0, "AdamW learning rate (0 = 2e-4 for the offline worlds, 1e-6 otherwise)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient-norm clipping")
    # baselines
    opd_kl: str = option("sampled", "opd: sampled (per-token log-ratio advantage) or full (reverse KL)",
                         ["sampled", "full"])
    group_size: int = option(4, "grpo: G samples per prompt (batch-size / G prompts per step)")

    # computed at runtime
    def __post_init__(self):
        """The fields each reading sets its own way, where left unset (None): its Objective's defaults."""
        objective = OBJECTIVES.get(self.objective)
        if objective is None:   # check_config names it
            return
        defaults = objective.offline if self.world and objective.offline else objective.defaults
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def resolved(self):
        """RunOptions' defaults (an offline world's, or a real model's), then the method's 0-means-auto fields."""
        super().resolved()
        self.max_new_tokens = self.max_new_tokens or self.size_defaults["max_new_tokens"]
        self.lr = self.lr or self.size_defaults["lr"]
        self.fork_gap = self.fork_gap or self.chunk_len
        return self


def check_config(cfg) -> None:
    """Settings that cannot work are stopped before anything loads, each with the reason: the method's here,
    the run's in RunOptions.check."""
    if cfg.objective not in OBJECTIVES:
        raise OmniOPDError(f"unknown objective '{cfg.objective}': {', '.join(OBJECTIVES)}")
    rules = [(cfg.method in METHOD_NAMES, f"unknown method '{cfg.method}': omniopd, opd, sft or grpo"),
             *[(holds(cfg), why) for holds, why in OBJECTIVES[cfg.objective].rules],
             (cfg.chunk_len >= 1 and cfg.audit_budget >= 1, "--chunk-len (L) must be at least 1, --audit-budget too"),
             (cfg.teacher_samples >= 1, "--teacher-samples (M) must be at least 1"),
             (cfg.draft_rollouts >= 1, "--draft-rollouts (R) must be at least 1"),
             (cfg.similarity != "answer" or cfg.horizon == "end",
              "--similarity answer compares final answers: it needs --horizon end"),
             (cfg.dirichlet_alpha >= 0, "--dirichlet-alpha must be 0 or more: it is a prior's strength"),
             (cfg.vote_temperature > 0 and cfg.lr > 0, "--vote-temperature (κ) and --lr must be positive"),
             (cfg.vote_threshold >= 0 and cfg.kl_beta >= 0, "--vote-threshold and --kl-beta must be 0 or more"),
             (cfg.batch_size >= 1 and cfg.steps >= 0, "--batch-size must be at least 1 and --steps at least 0"),
             (cfg.method != "grpo" or cfg.batch_size % cfg.group_size == 0,
              "--batch-size must be a multiple of --group-size for grpo")]
    for ok, message in rules:
        if not ok:
            raise OmniOPDError(message)
    cfg.check()


# ── Step 1: on-policy rollout with per-token entropy ──────────────────────────────────────────────────────────────

@dataclass
class Rollout:
    prompt_ids_B_P: torch.Tensor      # left-padded prompts
    prompt_mask_B_P: torch.Tensor
    response_ids_B_T: torch.Tensor    # sampled y, padded after its end
    response_mask_B_T: torch.Tensor   # 1 on y's tokens up to and including EOS
    entropy_B_T: torch.Tensor | None = None   # H_t of π_θ(·|x, y_<t), recorded while sampling


def sample_rollouts(student, tokenizer, questions, cfg) -> Rollout:
    """Step 1: y ~ π_θ(·|x) at temperature τ, up to max_new_tokens; marks where each y ends and keeps each
    position's entropy H_t."""
    prompts = encode_prompts(tokenizer, questions, template=cfg.prompt_template, device=student.device,
                             system_prompt=cfg.system_prompt)
    recorder = EntropyRecorder()
    response_ids_B_T = generate(student, tokenizer, prompts.input_ids, prompts.attention_mask,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, watch=recorder)
    is_stop_B_T = torch.isin(response_ids_B_T, torch.tensor(stop_token_ids(student, tokenizer), device=student.device))
    # a token is part of y if no stop token came strictly before it
    stops_before_B_T = is_stop_B_T.long().cumsum(-1) - is_stop_B_T.long()
    return Rollout(prompt_ids_B_P=prompts.input_ids, prompt_mask_B_P=prompts.attention_mask,
                   response_ids_B_T=response_ids_B_T, response_mask_B_T=(stops_before_B_T == 0).long(),
                   entropy_B_T=torch.stack(recorder.steps, 1) if recorder.steps else None)


def response_logits(model, rollout: Rollout) -> torch.Tensor:
    """Logits that score each response token: logits_B_T_V[b, t] = model(x, y_<t), in one forward pass."""
    ids = torch.cat([rollout.prompt_ids_B_P, rollout.response_ids_B_T], dim=1)
    mask = torch.cat([rollout.prompt_mask_B_P, rollout.response_mask_B_T], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                   logits_to_keep=rollout.response_ids_B_T.shape[1] + 1).logits
    return logits[:, :-1].float()


# ── Step 2: peak-entropy scheduler ────────────────────────────────────────────────────────────────────────────────

def smooth_entropy(entropy_T, window):
    """Step 2: the w-token moving average of H_t, centred, the edges replicated (zeros would pull them down).
    An even window w averages w + 1 tokens with both ends weighted ½ (the centred 2×w average), so no window
    moves a peak by half a token."""
    if window <= 1 or entropy_T.numel() == 0:
        return entropy_T
    weights = torch.ones(window + 1 - window % 2, device=entropy_T.device, dtype=entropy_T.dtype)
    if window % 2 == 0:
        weights[[0, -1]] = 0.5
    half = (len(weights) - 1) // 2
    padded = F.pad(entropy_T.view(1, 1, -1), (half, half), mode="replicate")
    return F.conv1d(padded, (weights / window).view(1, 1, -1)).view(-1)


def select_forks(entropy_B_T, mask_B_T, budget, gap, threshold, window=1, audit_ratio=0.0,
                 selection="peak", generator=None) -> list[tuple[int, int]]:
    """Step 2: forks (b, t) where H_t is a local maximum with H_t ≥ h_min, the highest first,
    at most `budget` per rollout (or ceil(audit_ratio · |y|)), no two closer than `gap`, none after EOS."""
    forks = []
    for b in range(entropy_B_T.shape[0]):
        length = int(mask_B_T[b].sum())
        entropy = smooth_entropy(entropy_B_T[b, :length].float(), window)
        padded = F.pad(entropy, (1, 1), value=-float("inf"))
        is_peak = (entropy >= padded[:-2]) & (entropy >= padded[2:]) & (entropy >= threshold)
        candidates = is_peak.nonzero().view(-1).tolist()
        if selection == "random":  # ablation: same budget and gap, positions ignore entropy
            candidates = torch.randperm(length, generator=generator).tolist()
        else:
            candidates.sort(key=lambda t: -entropy[t].item())
        limit = math.ceil(audit_ratio * length) if audit_ratio > 0 else budget
        chosen = []
        for t in candidates:
            if len(chosen) < limit and all(abs(t - s) >= gap for s in chosen):
                chosen.append(t)
        forks += [(b, t) for t in sorted(chosen)]
    return forks


# ── Step 3: speculative drafts and their log-probabilities ────────────────────────────────────────────────────────

@dataclass
class Drafts:
    prefix_ids: list[list[int]]          # F prefixes s_t = (x, y_<t), unpadded
    chunk_ids: list[list[list[int]]]     # F × K candidate chunks c^k, unpadded
    forks: list[tuple[int, int]] = field(default_factory=list)   # F (rollout row b, position t)

    def subset(self, chosen: list[int]) -> "Drafts":
        return Drafts([self.prefix_ids[f] for f in chosen], [self.chunk_ids[f] for f in chosen],
                      [self.forks[f] for f in chosen] if self.forks else [])


def draft_chunks(student, tokenizer, rollout, forks, num_drafts, chunk_len, temperature) -> Drafts:
    """Step 3: at each fork, c^1 = y_{t:t+L} (what the student wrote) and c^2..c^K ~ π_θ(·|s_t),
    each up to L tokens and ending at EOS. All forks of the batch are drafted in one generate call."""
    stops = set(stop_token_ids(student, tokenizer))
    prefixes, written = [], []
    for b, t in forks:
        prompt = rollout.prompt_ids_B_P[b][rollout.prompt_mask_B_P[b].bool()].tolist()
        response = rollout.response_ids_B_T[b].tolist()
        prefixes.append(prompt + response[:t])
        written.append(cut_at_stop(response[t:t + chunk_len], stops))
    if not forks:
        return Drafts([], [])
    fresh = [[] for _ in forks]
    if num_drafts > 1:
        batch = left_pad(prefixes, tokenizer.pad_token_id, student.device)
        new_ids = generate(student, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=chunk_len,
                           temperature=temperature, n=num_drafts - 1).tolist()
        fresh = [[cut_at_stop(new_ids[f * (num_drafts - 1) + k], stops) for k in range(num_drafts - 1)]
                 for f in range(len(forks))]
    return Drafts(prefixes, [[written[f]] + fresh[f] for f in range(len(forks))], list(forks))


def drafts_to_horizon(student, tokenizer, drafts: Drafts, horizon: str, num_rollouts: int, max_tokens: int,
                      temperature: float) -> tuple[list[list[str]], list[list[bool]]]:
    """Step 3, what a draft is compared by: c^k itself under the chunk horizon; under step and end, c^k carried on by R
    of the student's own rollouts from s_t + c^k (at temperature τ; step: up to max_tokens more; end: to the rollout's
    own budget of max_tokens from its start), each cut at the horizon
    (horizon_text), so a draft is judged by where it leads as the teacher's continuation is. The gradient still
    flows through c^k alone (step 7). Returns per fork its K·R texts (draft k's R in a row) and whether each
    reached a stop token (a rollout cut by max_tokens has not finished: it has no final answer)."""
    stops = set(stop_token_ids(student, tokenizer))
    chunk_texts = [[decode_after(tokenizer, p, c) for c in chunks] for p, chunks in zip(drafts.prefix_ids,
                                                                                          drafts.chunk_ids)]
    ended = [[bool(c) and c[-1] in stops for c in chunks] for chunks in drafts.chunk_ids]
    if horizon == "chunk" or not drafts.chunk_ids:
        return chunk_texts, ended
    sequences = [p + c for p, chunks in zip(drafts.prefix_ids, drafts.chunk_ids) for c in chunks]
    # each rollout keeps its own budget: a draft at t of a rollout of max_tokens may add max_tokens - t - |c^k| more
    budgets = [max_tokens - t - len(c) if horizon == "end" else max_tokens
               for (_, t), chunks in zip(drafts.forks, drafts.chunk_ids) for c in chunks]
    batch = left_pad(sequences, tokenizer.pad_token_id, student.device)
    new_ids = generate(student, tokenizer, batch["input_ids"], batch["attention_mask"],
                       max_new_tokens=max(1, max(budgets)), temperature=temperature, n=num_rollouts).tolist()
    texts, finished, row = [], [], 0
    for f, chunks in enumerate(drafts.chunk_ids):
        texts.append([]), finished.append([])
        for k, chunk in enumerate(chunks):
            for _ in range(num_rollouts):
                if ended[f][k]:   # the draft stopped: nothing follows it
                    carried_on, done = chunk_texts[f][k], True
                else:
                    more = cut_at_stop(new_ids[row][:max(0, budgets[row // num_rollouts])], stops)
                    carried_on = chunk_texts[f][k] + decode_after(tokenizer, drafts.prefix_ids[f] + chunk, more)
                    done = bool(more) and more[-1] in stops
                texts[f].append(horizon_text(carried_on, horizon))
                finished[f].append(done)
                row += 1
    return texts, finished


def chunk_logprobs(model, drafts: Drafts, pad_id: int):
    """Step 3: ℓ_k = Σ_j log π_θ(c^k_j | s_t, c^k_<j), with gradient, for all F × K drafts in one pass.
    Returns (logprobs_F_K, lengths_F_K)."""
    num_forks, num_drafts = len(drafts.chunk_ids), len(drafts.chunk_ids[0])
    sequences = [p + c for p, chunks in zip(drafts.prefix_ids, drafts.chunk_ids) for c in chunks]
    lengths = torch.tensor([len(c) for chunks in drafts.chunk_ids for c in chunks])
    chunk_width = int(lengths.max())
    batch = left_pad(sequences, pad_id, model.device)  # right-aligned: every chunk ends at the last column
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=positions(batch["attention_mask"]), logits_to_keep=chunk_width + 1).logits
    targets = batch["input_ids"][:, -chunk_width:]
    token_logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # only the last |c^k| columns of row k belong to its chunk
    in_chunk = torch.arange(chunk_width).unsqueeze(0) >= (chunk_width - lengths).unsqueeze(1)
    logprobs = (token_logprobs * in_chunk.to(token_logprobs.device)).sum(-1)
    return logprobs.view(num_forks, num_drafts), lengths.view(num_forks, num_drafts).to(logprobs.device)


def rollout_and_drafts_forward(model, rollout: Rollout, drafts: Drafts):
    """What steps 3 and 8 score, for the loss: the response logits_B_T_V (the anchor's) and every draft's ℓ_F_K and
    |c|_F_K. The definition is response_logits and chunk_logprobs (each draft with its prefix written out); where
    it applies, one packed forward pass gives the same numbers with each prefix computed once
    (omniopd_lib.fastpaths, tested equal to the definition)."""
    if packed_scoring_applies(model, rollout, drafts):
        return packed_rollout_and_drafts(model, rollout, drafts)
    logits_B_T_V = response_logits(model, rollout)
    if not drafts.chunk_ids:
        return logits_B_T_V, torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
    return logits_B_T_V, *chunk_logprobs(model, drafts, pad_id=0)   # padding is masked out


# ── Step 4: teacher rollouts (text only) ──────────────────────────────────────────────────────────────────────────


def teacher_prefix_texts(tokenizer, rollout, forks, questions, cfg) -> list[str]:
    """Step 4: decode(s_t), the text the teacher continues at each fork (b, t): the prompt as teacher_view_template
    shows it, then y_<t."""
    texts = []
    for b, t in forks:
        prompt_ids = rollout.prompt_ids_B_P[b][rollout.prompt_mask_B_P[b].bool()].tolist()
        written = rollout.response_ids_B_T[b, :t].tolist()
        if cfg.prompt_template == "chat":
            texts.append(PLAIN_TEMPLATE.format(question=questions[b]) + decode_after(tokenizer, prompt_ids, written))
        else:
            texts.append(tokenizer.decode(prompt_ids + written, skip_special_tokens=True))
    return texts


def teacher_rollouts(teacher, prefix_texts: list[str], num_samples: int, chunk_len: int, tokenizer,
                     max_tokens=0, draw="", rows=None, horizon="chunk", max_new_tokens=0) -> InFlight:
    """Step 4: r^1..r^M = M teacher continuations of each decoded prefix s_t, None where the teacher failed; an API
    teacher's requests go out now and .wait() collects them. Each text runs to the horizon (horizon_text): chunk
    cuts it to its first L student tokens, so drafts and teacher rollouts have the same length in the same units;
    step to the end of its reasoning step; end keeps it whole. The teacher writes up to max_tokens of its own tokens
    (default: chunk L with the student's tokenizer, else 2·L; step 2·L; end max_new_tokens). draw ("seed 0 step
    12") lets a caching teacher answer a resumed step from its store; rows: each prefix's dataset row, for
    {question} and {answer}."""
    default = {"chunk": chunk_len if teacher.shares_tokenizer else 2 * chunk_len, "step": 2 * chunk_len,
               "end": max_new_tokens or 4 * chunk_len}[horizon]
    return InFlight(teacher, (prefix_texts, num_samples, max_tokens or default, draw, rows), lambda answers: [
        None if texts is None else [horizon_text(t, horizon, tokenizer=tokenizer, chunk_len=chunk_len) for t in texts]
        for texts in answers])


STEP_END = re.compile(r"\n|[.!?](?=\s|$)")   # a reasoning step ends at a line's end or a sentence's


def horizon_text(text: str, horizon: str, tokenizer=None, chunk_len=0) -> str:
    """A continuation as far as the horizon: chunk, its first L student tokens; step, up to and including the first
    sentence or line end (the whole text where there is none); end, all of it."""
    if horizon == "chunk":
        return first_tokens(text, tokenizer, chunk_len)
    if horizon == "step":
        boundary = STEP_END.search(text)
        return text[:boundary.end()] if boundary else text
    return text


# ── Step 5: semantic verification ─────────────────────────────────────────────────────────────────────────────────

def similarity_matrices(similarity, candidates_F_K: list[list[str]], references_F_M: list[list[str]],
                        contexts_F=None, finished_F_K=None, num_rollouts=1, rows_F=None) -> list:
    """Step 5: S_km = sim(c^k, r^m), one K × M matrix per fork: cosine of all-MiniLM-L6-v2 embeddings (embed, each
    distinct text encoded once), a text metric (lexical, ned, rouge1, numbers), the agreement of final answers
    (answer: the answers of context + text, compared mathematically; an unfinished draft has none; on code, the
    shares of the fork's row's tests their programs pass) or any callable (omniopd_lib.similarity). A text that
    ends at once ("") agrees with one that does and with no other.
    With R rollouts per draft (candidates F × K·R), S_km = (1/R) Σ_r sim(c^k ⊕ e^kr, r^m)."""
    matrices = similarity.matrices(candidates_F_K, references_F_M, contexts=contexts_F, finished=finished_F_K,
                                   rows=rows_F)
    return [S.view(-1, num_rollouts, S.shape[1]).mean(1) for S in matrices]


# ── Step 6: Dirichlet-Multinomial preference ──────────────────────────────────────────────────────────────────────

def dirichlet_preference(similarity_K_M, alpha=1.0, vote_temperature=0.1, votes="soft", prior_K=None,
                         vote_threshold=0.0):
    """Step 6: p̂_k = (n_k + α u_k) / (M + α), n_k = Σ_m w_mk, w_mk = softmax_k(S_km / κ) (or one-hot argmax).
    The prior u is uniform unless prior_K is given; Var[p̂_k] shrinks as 1 / (M + α + 1).
    With vote_threshold > 0, a teacher rollout whose best similarity is below it abstains (M counts only voters);
    returns None when every rollout abstains. With 0 every rollout votes, however unlike every draft it is."""
    num_drafts = similarity_K_M.shape[0]
    if vote_threshold > 0:
        similarity_K_M = similarity_K_M[:, similarity_K_M.max(0).values >= vote_threshold]
    num_samples = similarity_K_M.shape[1]
    if num_samples == 0:
        return None
    if votes == "hard":
        votes_K_M = F.one_hot(similarity_K_M.argmax(0), num_drafts).T.float()
    else:
        # w_mk = exp(S_km / κ) / Σ_j exp(S_jm / κ)
        votes_K_M = torch.softmax(similarity_K_M / vote_temperature, dim=0)
    counts_K = votes_K_M.sum(1)
    prior_K = torch.full((num_drafts,), 1.0 / num_drafts) if prior_K is None else prior_K
    # p̂_k = (n_k + α u_k) / (M + α)
    return (counts_K + alpha * prior_K) / (num_samples + alpha)


# ── Step 7: chunk-level loss at forks ─────────────────────────────────────────────────────────────────────────────

def chunk_loss(target_F_K, logprobs_F_K, lengths_F_K, length_norm=1.0, form="kl", num_forks=None):
    """Step 7: q_k = softmax_k(ℓ_k / |c^k|^γ); loss = mean over forks of KL(p̂ ‖ q) = Σ_k p̂_k log(p̂_k / q_k).
    form="pg": -Σ_k A_k ℓ_k / |c^k| with A_k = p̂_k - 1/K. The mean divides by num_forks when given."""
    if logprobs_F_K.numel() == 0:
        return logprobs_F_K.sum()
    num_forks = num_forks or logprobs_F_K.shape[0]
    normalised_F_K = logprobs_F_K / lengths_F_K.float() ** length_norm
    if form == "pg":
        advantage_F_K = target_F_K - 1.0 / target_F_K.shape[1]
        return -(advantage_F_K * logprobs_F_K / lengths_F_K).sum() / num_forks
    log_q_F_K = F.log_softmax(normalised_F_K, dim=1)
    # KL(p̂ ‖ q) = Σ_k p̂_k (log p̂_k - log q_k), with 0 log 0 = 0
    kl_F = (torch.xlogy(target_F_K, target_F_K) - target_F_K * log_q_F_K).sum(1)
    return kl_F.sum() / num_forks


# ── Step 8: base-model KL anchor ──────────────────────────────────────────────────────────────────────────────────

def anchor_kl(student_logits_B_T_V, reference_logits_B_T_V, mask_B_T, tokens_B_T=None, form="full", num_tokens=None):
    """Step 8: mean over generated tokens of KL(π_θ(·|s_t) ‖ π_ref(·|s_t)), exact over the vocabulary.
    form="k3": the k3 estimator exp(r) - 1 - r, r = log π_ref(y_t) - log π_θ(y_t), on sampled tokens;
    form="reference-first": the audit reading's KL(π_ref ‖ π_θ), exact. The mean divides by num_tokens when given."""
    if form == "k3":
        ratio_B_T = token_logprobs(reference_logits_B_T_V.detach(), tokens_B_T) - token_logprobs(student_logits_B_T_V,
                                                                                                  tokens_B_T)
        # masked before exp: past EOS the log-ratio may be huge, and exp(huge) · 0 is NaN
        ratio_B_T = torch.where(mask_B_T.bool(), ratio_B_T, torch.zeros_like(ratio_B_T))
        kl_B_T = ratio_B_T.exp() - 1 - ratio_B_T
    elif form == "reference-first":
        kl_B_T = ReferenceFirstKL.apply(student_logits_B_T_V, reference_logits_B_T_V.detach())
    else:
        kl_B_T = FullVocabularyKL.apply(student_logits_B_T_V, reference_logits_B_T_V.detach())
    mask = mask_B_T.float()
    return (kl_B_T * mask).sum() / (num_tokens or mask.sum().clamp(min=1))


# ── Step 9: one OmniOPD step, the update, and the training loop ───────────────────────────────────────────────────

@dataclass
class StepBatch:
    """What a step collects without gradient (sampling, the teacher): rollouts and, by method, the forks' targets,
    the advantages or the teacher's solutions. num_* are the loss's denominators (a distributed run's: all ranks')."""
    rollout: Rollout | None = None
    drafts: Drafts | None = None                 # omniopd: the forks (audit: chunks) that got a target
    target_F_K: torch.Tensor | None = None       # p̂ (audit: π̂, F × 1)
    advantages_B: torch.Tensor | None = None     # grpo
    solutions: list = field(default_factory=list)  # sft: (question, teacher solution) pairs
    fork_texts: list = field(default_factory=list)  # omniopd, per fork in drafts: (draft texts, teacher texts, S)
    horizon_texts: list = field(default_factory=list)  # per fork, what each draft was compared by (K·R texts)
    num_tokens: int = 0
    num_forks: int = 0
    num_rollouts: int = 0
    metrics: dict = field(default_factory=dict)
    objective: str = ""   # omniopd: the reading that made it (tracking shows its forks by it)
    entropy_B_T: torch.Tensor | None = None      # H_t of the rollouts, for the run's page (view.jsonl)
    q_F_K: torch.Tensor | None = None            # q, the student's own distribution over each fork's drafts (set by
                                                 # the loss, which computes it), for the run's page


def rollouts_with_entropy(run, rows, cfg) -> tuple[Rollout, torch.Tensor]:
    """Step 1 for a batch of rows: the rollouts and H_t (recorded while sampling, or from one forward pass)."""
    with run.clock("rollout"):
        rollout = sample_rollouts(run.student, run.tokenizer, [r["question"] for r in rows], cfg)
        entropy_B_T = rollout.entropy_B_T
        if entropy_B_T is None:   # a rollout not sampled here
            _, entropy_B_T = token_logprobs_and_entropy(response_logits(run.student, rollout), rollout.response_ids_B_T)
    return rollout, entropy_B_T


def horizon_tokens(cfg) -> int:
    """How far the student carries a draft on: to the end of a reasoning step, at most 2·L tokens; to the end, the
    rollout's own budget."""
    return 2 * cfg.chunk_len if cfg.horizon == "step" else cfg.max_new_tokens


def teacher_rollouts_at(run, rows, rollout, forks, cfg) -> InFlight:
    """Step 4 at a batch's forks (b, t): the teacher continues each decoded prefix s_t (the prompt as the teacher is
    shown it, then y_<t) M times, to the horizon."""
    prefix_texts = teacher_prefix_texts(run.tokenizer, rollout, forks, [r["question"] for r in rows], cfg)
    return teacher_rollouts(run.teacher, prefix_texts, num_samples=cfg.teacher_samples, chunk_len=cfg.chunk_len,
                            tokenizer=run.tokenizer, max_tokens=cfg.teacher_max_tokens, draw=draw_name(cfg, run.step),
                            rows=[rows[b] for b, _ in forks], horizon=cfg.horizon, max_new_tokens=cfg.max_new_tokens)


def context_text(tokenizer, rollout, fork) -> str:
    """y_<t as text: what the student wrote before the fork, which a final answer may already be part of."""
    b, t = fork
    prompt = rollout.prompt_ids_B_P[b][rollout.prompt_mask_B_P[b].bool()].tolist()
    return decode_after(tokenizer, prompt, rollout.response_ids_B_T[b, :t].tolist())


@torch.no_grad()
def omniopd_collect(run, rows, cfg) -> StepBatch:
    """Steps 1-6 for one batch, no gradient: rollouts, forks, drafts, teacher rollouts, S and each fork's p̂."""
    student, tokenizer = run.student, run.tokenizer
    rollout, entropy_B_T = rollouts_with_entropy(run, rows, cfg)                              # step 1
    mask_B_T = rollout.response_mask_B_T
    forks = select_forks(entropy_B_T, mask_B_T, budget=cfg.audit_budget, gap=cfg.fork_gap,              # step 2
                         threshold=cfg.entropy_threshold, window=cfg.entropy_window, audit_ratio=cfg.audit_ratio,
                         selection=cfg.fork_selection)
    in_flight = teacher_rollouts_at(run, rows, rollout, forks, cfg)                              # step 4
    with run.clock("drafts"):   # while an API teacher's requests are in flight
        drafts = draft_chunks(student, tokenizer, rollout, forks, num_drafts=cfg.num_drafts,     # step 3
                              chunk_len=cfg.chunk_len, temperature=cfg.temperature)
        compared_texts, finished = drafts_to_horizon(student, tokenizer, drafts, horizon=cfg.horizon,
                                                     num_rollouts=cfg.draft_rollouts, max_tokens=horizon_tokens(cfg),
                                                     temperature=cfg.temperature)
    teacher_texts = in_flight.wait(run.clock)
    answered = [f for f, texts in enumerate(teacher_texts) if texts]
    with run.clock("similarity"):
        candidate_texts = [[decode_after(tokenizer, drafts.prefix_ids[f], c) for c in drafts.chunk_ids[f]]
                           for f in answered]
        similarities = similarity_matrices(run.similarity, [compared_texts[f] for f in answered],   # step 5
                                           [teacher_texts[f] for f in answered],
                                           contexts_F=[context_text(tokenizer, rollout, forks[f]) for f in answered],
                                           finished_F_K=[finished[f] for f in answered],
                                           num_rollouts=cfg.draft_rollouts,
                                           rows_F=[rows[forks[f][0]] for f in answered])
    answered_drafts = drafts.subset(answered)
    priors = [None] * len(answered)
    if cfg.prior == "student" and answered:  # u_k ∝ the student's own length-normalised draft probabilities
        _, logprobs_F_K, lengths_F_K = rollout_and_drafts_forward(student, rollout, answered_drafts)
        priors = torch.softmax(logprobs_F_K / lengths_F_K.float() ** cfg.length_norm, 1).cpu()
    targets = [dirichlet_preference(S, alpha=cfg.dirichlet_alpha, vote_temperature=cfg.vote_temperature,  # step 6
                                    votes=cfg.votes, prior_K=priors[f], vote_threshold=cfg.vote_threshold)
               for f, S in enumerate(similarities)]
    voted = [f for f, target in enumerate(targets) if target is not None]
    batch = StepBatch(rollout, answered_drafts.subset(voted),
                      torch.stack([targets[f] for f in voted]) if voted else torch.zeros(0, cfg.num_drafts),
                      num_tokens=int(mask_B_T.sum()), num_forks=len(voted),
                      fork_texts=[(candidate_texts[f], teacher_texts[answered[f]], similarities[f]) for f in voted],
                      horizon_texts=[compared_texts[answered[f]] for f in voted], objective="drafts",
                      entropy_B_T=entropy_B_T)
    batch.metrics = {**fork_metrics(forks, answered=len(answered), entropy_B_T=entropy_B_T, mask_B_T=mask_B_T,
                                    similarities=similarities, target_F_K=batch.target_F_K),
                     **rollout_metrics(rollout, entropy_B_T)}
    return batch


def omniopd_loss(run, batch, cfg):
    """Steps 7-8 on a collected batch: L = L_chunk + β · L_anchor, and the step's metrics. One forward pass
    of the student scores the rollouts and every draft (rollout_and_drafts_forward)."""
    logits_B_T_V, logprobs_F_K, lengths_F_K = rollout_and_drafts_forward(run.student, batch.rollout, batch.drafts)
    loss_anchor = anchor_term(run, batch.rollout, logits_B_T_V, cfg, num_tokens=batch.num_tokens)     # step 8
    loss_chunk = logits_B_T_V.sum() * 0.0
    if batch.drafts.chunk_ids:
        loss_chunk = chunk_loss(batch.target_F_K.to(logprobs_F_K.device), logprobs_F_K, lengths_F_K,  # step 7
                                length_norm=cfg.length_norm, form=cfg.chunk_loss, num_forks=batch.num_forks)
        batch.q_F_K = torch.softmax(logprobs_F_K.detach().float() / lengths_F_K.float() ** cfg.length_norm, 1).cpu()
    loss = loss_chunk + cfg.kl_beta * loss_anchor                                         # step 9
    metrics = {**batch.metrics, "loss/chunk": loss_chunk.item(), "loss/anchor": loss_anchor.item()}
    if batch.q_F_K is not None:   # how far the target moves the student's own draft distribution: ½ Σ_k |p̂_k - q_k|
        metrics["pref/distance_to_q"] = (batch.target_F_K - batch.q_F_K).abs().sum(1).mean().item() / 2
    return loss, metrics


def anchor_term(run, rollout, logits_B_T_V, cfg, num_tokens=None, mask_B_T=None, form="") -> torch.Tensor:
    """Step 8 on a rollout (on mask_B_T's tokens if given): KL to the frozen reference, or 0 when β = 0 (no
    reference is loaded then)."""
    if cfg.kl_beta <= 0:
        return torch.zeros((), device=logits_B_T_V.device)
    with torch.no_grad():
        reference_logits_B_T_V = response_logits(run.reference, rollout)
    return anchor_kl(logits_B_T_V, reference_logits_B_T_V,
                     rollout.response_mask_B_T if mask_B_T is None else mask_B_T,
                     tokens_B_T=rollout.response_ids_B_T, form=form or cfg.anchor, num_tokens=num_tokens)


# This project's reading, registered once: what it collects, its loss, the defaults it sets (where an option is
# left unset), the rules its settings keep, and its counts that add up over ranks (scale/).
OBJECTIVES["drafts"] = Objective(
    omniopd_collect, omniopd_loss,
    defaults=dict(audit_budget=4, chunk_len=16, teacher_samples=4, kl_beta=0.05, similarity="embed"),
    rules=((lambda cfg: cfg.num_drafts >= 2,
            "--num-drafts (K) must be at least 2: one draft leaves nothing to prefer"),),
    summed=("forks/count", "forks/skipped", "forks/no_match"))
# the baselines, by --method: (collect without gradient, loss on what was collected); omniopd_baselines.py fills it
METHODS: dict[str, tuple[Callable, Callable]] = {}


def method_functions(cfg):
    """(collect, loss) of cfg's method; for omniopd, of its reading (--objective)."""
    if cfg.method == "omniopd":
        return OBJECTIVES[cfg.objective].collect, OBJECTIVES[cfg.objective].loss
    return METHODS[cfg.method]


def update(run, loss, grad_clip) -> float:
    """Step 9: one AdamW step on L with the gradient norm clipped; returns the norm before clipping."""
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.student.parameters(), grad_clip)
    run.optimizer.step()
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded (FSDP) or plain


def train(cfg: Config) -> dict:
    """Evaluate, train for cfg.steps with the chosen method, evaluate again; returns the summary."""
    from tqdm import tqdm
    check_config(cfg)
    with run_folder(cfg) as out:
        train_rows, eval_rows = load_data(cfg)   # bad data fails before any model loads
        run = setup(cfg)
        if cfg.resume:
            keep_metrics_until(out / "metrics.jsonl", run.step)
        summary = {"before": run_eval(run, eval_rows, cfg, f"step-{run.step:06d}"),
                   **teacher_accuracy(run, eval_rows, cfg)}
        collect, loss_fn = method_functions(cfg)
        stops, batch = StopRules(), None
        with contextlib.closing(MetricsLog(cfg)) as log:
            log.write({"step": run.step, **summary["before"]}, to_file=False)   # the learning curve's first point
            for _ in tqdm(range(run.step, cfg.steps), initial=run.step, total=cfg.steps, desc=cfg.method):
                started, rows = time.time(), batch_rows(train_rows, run.step, cfg)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.student.device.type == "cuda"):
                    batch = collect(run, rows, cfg)                                                # steps 1-6
                    with run.clock("loss"):
                        loss, metrics = loss_fn(run, batch, cfg)                                   # steps 7-8
                metrics["loss/total"] = loss.item()
                if math.isfinite(metrics["loss/total"]):   # a non-finite loss is never applied
                    with run.clock("backward"):
                        metrics["grad/norm"] = update(run, loss, cfg.grad_clip)                    # step 9
                stops.count(metrics)
                run.step += 1
                metrics.update({**run.clock.take(), **step_figures(run.step, started, run.teacher)})
                if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
                    metrics.update(run_eval(run, eval_rows, cfg, f"step-{run.step:06d}"))
                log.forks(batch, run.step, rows, run.tokenizer)   # at the steps the run's page shows (view.jsonl)
                log.write(metrics)   # before the checkpoint: a step a checkpoint holds is always in metrics.jsonl
                if cfg.save_every and run.step % cfg.save_every == 0 and stops.may_save():
                    save_checkpoint(run, cfg)
                stops.check(run.step, metrics, out, lambda: save_checkpoint(run, cfg))
            summary.update(checkpoint=str(save_checkpoint(run, cfg)), bill=teacher_bill(run.teacher))
            summary["after"] = run_eval(run, eval_rows, cfg, f"step-{run.step:06d}")
            log.write({"step": run.step, **summary["after"]})
        if cfg.merge_lora and run.lora is not None:
            summary["merged"] = str(save_merged(run, out / "merged"))
    return summary


def main(argv=None) -> int:
    """The command line: parse it into a Config, train, print the summary (a problem the user can fix: one line)."""
    return main_with_errors(argv, Config, train, __doc__.split("\n\n")[0])


# The second reading and the baselines live beside this file, each readable alone; importing them registers them
# (OBJECTIVES["audit"], METHODS). They import this module's steps, so they are imported last.
import omniopd_audit      # noqa: E402,F401
import omniopd_baselines  # noqa: E402,F401

if __name__ == "__main__":
    # run as a script this file is the module __main__, while the files above registered into the module omniopd
    import omniopd
    sys.exit(omniopd.main())
