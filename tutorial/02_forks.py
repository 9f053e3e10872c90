# %% [markdown]
# # 2. The peak-entropy scheduler: where to audit
#
# ## Background
# Asking the teacher about every token would cost a teacher call per token. Most
# tokens are not decisions at all: the student copies a number from the question,
# writes `=` after `7+5`, closes with `####`. OmniOPD audits the student only at its
# **forks**, the positions where its entropy peaks, and leaves the rest to the KL
# anchor (page 8). Three knobs bound the cost and spread the audits:
# a **budget** B of forks per rollout, a **threshold** $h_\min$ below which a peak is not
# worth a teacher call, and a **gap** g so that two audited chunks do not overlap.
#
# ## Equation
# With $\bar H$ the entropy smoothed over a window of w tokens (w = 1: none),
# $$\mathcal{F} = \operatorname{top}_B\Big\{ t : \bar H_t \ge \bar H_{t-1},\ \bar H_t \ge \bar H_{t+1},\ \bar H_t \ge h_{\min},\ t \le |y| \Big\}$$
# taken greedily from the highest $\bar H_t$ down, skipping any $t$ within $g$ tokens of
# one already taken. With `audit_ratio` r the budget is $B = \lceil r\,|y| \rceil$.
# Positions after EOS are never forks; the EOS position itself can be (stopping is a decision).
#
# ## Code

# %%
from helpers import show
import omniopd

show(omniopd.select_forks)

# %% [markdown]
# ## Worked example
# Ten positions, EOS at position 8 (so position 9, entropy 2.0, is padding):

# %%
import torch

entropy = torch.tensor([[0.1, 0.9, 0.2, 0.5, 0.4, 1.2, 0.3, 0.8, 0.7, 2.0]])
mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
for budget, gap, threshold in [(4, 1, 0.0), (2, 1, 0.0), (4, 3, 0.0), (4, 1, 0.85)]:
    forks = omniopd.select_forks(entropy, mask, budget, gap, threshold)
    print(f"B={budget} g={gap} h_min={threshold}: forks at {[t for _, t in forks]}")

assert omniopd.select_forks(entropy, mask, 4, 1, 0.0) == [(0, 1), (0, 3), (0, 5), (0, 7)]
assert omniopd.select_forks(entropy, mask, 2, 1, 0.0) == [(0, 1), (0, 5)]
assert omniopd.select_forks(entropy, mask, 4, 3, 0.0) == [(0, 1), (0, 5)]

# %% [markdown]
# By hand: the local maxima are 1 (0.9), 3 (0.5), 5 (1.2) and 7 (0.8); position 9 is
# after EOS. Budget 2 keeps 5 and 1. Gap 3 takes 5, then 1 (4 away), then rejects 7
# and 3 (2 away from 5).
#
# A real rollout of the toy student, with the forks the default options pick
# (B = 4, g = L = 16, $h_\min$ = 0.1):

# %%
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from helpers import page_one_rollout, save_figure

# the rollout of page 1; select_forks is called inside page_one_rollout exactly as here:
# omniopd.select_forks(entropy, rollout.response_mask_B_T, cfg.audit_budget, cfg.fork_gap, cfg.entropy_threshold)
page = page_one_rollout()
cfg, tokenizer, rollout, entropy, forks = (page[k] for k in ("cfg", "tokenizer", "rollout", "entropy", "forks"))
length = int(rollout.response_mask_B_T[0].sum())
tokens = [tokenizer.decode([i]) or "⏎" for i in rollout.response_ids_B_T[0, :length]]
print("forks at", [t for _, t in forks], "->", ["".join(tokens[t:t + 4]) + "…" for _, t in forks])

figure, axis = plt.subplots(figsize=(9, 2.8))
axis.plot(range(length), entropy[0, :length], marker="o", markersize=3)
for _, t in forks:
    axis.axvline(t, color="crimson", linestyle="--", linewidth=1)
axis.axhline(cfg.entropy_threshold, color="gray", linewidth=0.8)
axis.set_xticks(range(length), [s.replace("\n", "⏎").replace(" ", "␣") for s in tokens], fontsize=8)
axis.set_ylabel("H_t (nats)")
axis.set_title("toy student: per-token entropy, forks in red, h_min in gray")
save_figure(figure, "02_entropy_forks.png")
assert len(forks) >= 1 and all(entropy[0, t] >= cfg.entropy_threshold for _, t in forks)

# %% [markdown]
# ![entropy with forks](figures/02_entropy_forks.png)
#
# ## What to log
# `forks/count` (forks in the batch), `forks/entropy` (mean $H_t$ at forks) against
# `forks/entropy_elsewhere` (mean over the other tokens). If the two are close, the
# scheduler is choosing nearly at random; the ablation `--fork-selection random`
# measures what peak selection is worth (bench/compare.py).
#
# ## References
# OmniOPD (arXiv 2606.01476), "peak-entropy scheduler"; Wang et al., *Beyond the 80/20
# Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning*, 2025.
#
# ## Exercises
# 1. Set the gap to 1 on the real rollout above. How many forks now, and why do
#    adjacent forks waste teacher calls?
# 2. With `--audit-ratio 0.1`, how many forks does a 512-token solution get?
# 3. Smooth with w = 3. Which peaks merge?
