# %% [markdown]
# # 11. The second reading: audit the student's own chunk (`--objective audit`)
#
# ## Background
# Pages 1–9 are this project's reading of the paper's abstract: at each fork the student
# drafts K alternatives, the teacher's continuations vote among them, and the student's
# distribution over its drafts moves toward the vote. A public implementation of the same
# paper (in a verl fork; [docs/method.md](../docs/method.md) names its files) reads the
# abstract in the paper's own letters M, N, C, α, β, φ, k_sem, π̄, π̂, and does something
# simpler: it never drafts. It picks the M most uncertain C-token stretches of what the
# student **wrote**, asks the teacher N times how it would have written each stretch, and
# reinforces each stretch's likelihood by how much the teacher agreed. This page states that
# reading's equations, shows the code that computes them, and works them by hand.
#
# ## Equations
# Anchors: up to M non-overlapping chunks $c = y_{t:t+C}$, chosen greedily by the highest
# $H_t$ at their first token, each inside the response before its stop token.
# Agreement with N teacher continuations $r_1 \dots r_N$ of the prefix before the chunk:
# $$k_{\text{sem}}(c) = \sum_{j=1}^{N} \varphi(c, r_j), \qquad
#   \varphi_{\text{ned}}(a, b) = 1 - \frac{\operatorname{Levenshtein}(a, b)}{\max(|a|, |b|)}$$
# Target: the Dirichlet-Multinomial posterior mean with the student's own geometric-mean
# probability as the prior,
# $$\bar\pi(c) = \exp\Big(\frac{1}{C}\sum_{t \in c} \log \pi_\theta(y_t)\Big), \qquad
#   \hat\pi(c) = \frac{k_{\text{sem}}(c) + \alpha\,\bar\pi(c)}{N + \alpha} \in [0, 1]\ \text{(detached)}$$
# Loss, summed over tokens and divided by the batch size B:
# $$\mathcal{L} = \frac{1}{B}\Big(-\sum_c \hat\pi(c) \sum_{t \in c} \log \pi_\theta(y_t)
#   \;+\; \beta \sum_{t\ \text{unaudited}} \mathrm{KL}\big(\pi_{\text{ref}}(\cdot|s_t) \,\Vert\, \pi_\theta(\cdot|s_t)\big)\Big)$$
# Its gradient with respect to an audited token's log-probability is $-\hat\pi(c)/B \le 0$:
# every audited chunk is pushed **up**, the ones the teacher agrees with more. Nothing is
# pushed down; the anchor holds the unaudited tokens near the base model.
#
# ## Code
# The anchors (step 2 of this reading):

# %%
from helpers import show
import omniopd
import omniopd_audit
from omniopd_lib import similarity

show(omniopd_audit.audit_anchors)

# %% [markdown]
# φ = ned, k_sem and π̂ (steps 4–5; `similarity_matrices` is page 5's function, with the `ned` backend):

# %%
show(similarity.ned)
show(omniopd_audit.audit_target)

# %% [markdown]
# One collection, reusing page 1's rollout, page 3's `draft_chunks` (with K = 1: the own chunk is the only
# "draft") and page 4's teacher; then the loss:

# %%
show(omniopd_audit.audit_collect)
show(omniopd_audit.audit_loss)

# %% [markdown]
# ## Worked example 1: which chunks
# Ten tokens, the last one EOS, C = 2, M = 3. The entropies tie at 0.9 (positions 1 and 3): the tie
# goes to the later position, 3. Position 1 comes next (|1 − 3| = 2 = C, no overlap), then 0.8 at 6.
# Position 8 is never a start: its chunk would reach the EOS at 9.

# %%
import torch

entropy = torch.tensor([[0.1, 0.9, 0.2, 0.9, 0.3, 0.1, 0.8, 0.1, 0.0, 0.0]])
ids = torch.tensor([[5, 5, 5, 5, 5, 5, 5, 5, 5, 99]])     # 99: the stop token
mask = torch.ones(1, 10, dtype=torch.long)
anchors = omniopd_audit.audit_anchors(entropy, ids, mask, {99}, num_chunks=3, chunk_len=2)
print("chunk starts:", anchors)
assert anchors == [(0, 1), (0, 3), (0, 6)]

# %% [markdown]
# ## Worked example 2: π̂ by hand
# The student wrote "Tom has 12"; its three tokens had log-probabilities −0.1, −0.5, −0.3, so
# $\bar\pi = e^{-0.3} = 0.7408$. Four teacher continuations and their φ:
# identical → 1; "Tom has 13" (one substitution in 10 characters) → 0.9; "Tom got 9" (5 edits) → 0.5;
# an empty answer → 0. So $k_{\text{sem}} = 2.4$ and, with α = 1,
# $\hat\pi = (2.4 + 0.7408)/(4 + 1) = 0.6282$.

# %%
import math
from omniopd_lib.similarity import Similarity

continuations = ["Tom has 12", "Tom has 13", "Tom got 9", ""]
phi = Similarity("ned").matrices([["Tom has 12"]], [continuations])[0]
pi_hat, pi_bar = omniopd_audit.audit_target(phi.sum(1), torch.tensor([-0.1, -0.5, -0.3]).mean().view(1), 4, 1.0)
print("φ =", [round(x, 3) for x in phi[0].tolist()], f" k_sem = {phi.sum().item():.3f}",
      f" π̄ = {pi_bar.item():.4f}  π̂ = {pi_hat.item():.4f}")
assert abs(pi_hat.item() - (2.4 + math.exp(-0.3)) / 5) < 1e-6

# %% [markdown]
# α sets how much the student's own confidence counts against the teacher's N votes: with α = 0
# the target is the raw agreement share k_sem / N = 0.6; as α grows it tends to π̄.

# %%
for alpha in (0.0, 1.0, 10.0, 1000.0):
    value = omniopd_audit.audit_target(torch.tensor([2.4]), torch.tensor([-0.3]), 4, alpha)[0].item()
    print(f"α = {alpha:>6}: π̂ = {value:.4f}")

# %% [markdown]
# ## Worked example 3: one real step on the story world
# The shipped story-world student writes solutions to two test problems; the story-world
# teacher continues each chunk's prefix N = 10 times (the offline defaults: M = 4 chunks of
# C = 8 tokens, see docs/method.md for why they are smaller than the public 10 × 50).

# %%
import toyworld
from omniopd_lib.config import parse_args
from omniopd_lib.runs import setup

torch.manual_seed(0)
cfg = parse_args([*toyworld.world_args("stories"), "--objective", "audit", "--batch-size", "2",
                  "--out", "/tmp/omniopd-tutorial-11"], omniopd.Config, "")
run = setup(cfg)
rows = toyworld.world_problems("stories", 2, "test", seed=11)
batch = omniopd_audit.audit_collect(run, rows, cfg)
print(f"M = {cfg.audit_budget}, C = {cfg.chunk_len}, N = {cfg.teacher_samples}, α = {cfg.dirichlet_alpha}, "
      f"β = {cfg.kl_beta}, φ = {cfg.similarity}")
print(f"chunks scored {batch.metrics['audit/chunks']}, dropped {batch.metrics['audit/dropped']}, "
      f"share of generated tokens audited {batch.metrics['audit/fraction']:.2f}")
record = batch.metrics["audit/records"][0]
print(f"\nrollout {record['rollout']}, chunk at token {record['start']}: {record['chunk']!r}")
for text, value in zip(record["continuations"], record["phi"]):
    print(f"  φ = {value:.3f}  teacher: {text!r}")
print(f"k_sem = {record['k_sem']:.3f}   π̄ = {record['pi_bar']:.4f}   "
      f"π̂ = ({record['k_sem']:.3f} + 1 · {record['pi_bar']:.4f}) / 11 = {record['pi_hat']:.4f}")
assert abs(record["pi_hat"] - (record["k_sem"] + record["pi_bar"]) / 11) < 1e-6

# %% [markdown]
# The loss on that batch, and its two parts. Before the first update the student is the reference,
# so the anchor is exactly 0; it grows as training moves the unaudited tokens away from the base model.

# %%
loss, metrics = omniopd_audit.audit_loss(run, batch, cfg)
print(f"L = {loss.item():.4f} = chunk {metrics['loss/chunk']:.4f} + β · anchor {metrics['loss/anchor']:.4f}")
assert abs(loss.item() - (metrics["loss/chunk"] + cfg.kl_beta * metrics["loss/anchor"])) < 1e-5

# %% [markdown]
# ## Where the two readings differ, and why each choice could matter
#
# | | drafts (pages 1–9, the default) | audit (this page) | why it could matter |
# |---|---|---|---|
# | what is supervised | K drafts at each fork: the own chunk and K − 1 fresh samples | only the chunk the student wrote | drafting lets the teacher prefer an alternative the student rarely writes; auditing costs no drafting and scores exactly what was sampled |
# | direction | KL(p̂ ‖ q) moves probability between drafts: a draft the teacher dislikes goes **down** | weight π̂ ≥ 0 on the chunk's own likelihood: everything audited goes **up**, agreed chunks more | pure reinforcement cannot unlearn a wrong chunk, only favour it less; it may also sharpen the student toward its own samples |
# | where | local maxima of H_t above h_min, at most B = 4, g tokens apart | the M = 10 highest H_t starts (any position), non-overlapping, inside the response | peaks alone may miss a long uncertain stretch; top-H starts cluster where entropy is high |
# | chunk length | L = 16, drafts may end early at EOS | exactly C = 50, never crossing EOS | long chunks compare whole reasoning steps; short ones compare single decisions |
# | teacher samples | M = 4 | N = 10 | more samples give a steadier target and a bigger bill (page 6's variance, docs/results.md's token counts) |
# | similarity | cosine of sentence embeddings (semantic) | ned: normalised character edit distance | an embedding barely sees a wrong digit (docs/method.md measures it); edit distance sees every character but also every change of wording |
# | prior | uniform over drafts (or the student's draft probabilities) | the chunk's own geometric-mean probability π̄ | π̄ keeps confident chunks weighted even when the teacher words things differently |
# | anchor | KL(π_θ ‖ π_ref), every generated token, mean per token | KL(π_ref ‖ π_θ), unaudited tokens only, summed / B | forward KL penalises the student for dropping what the base model would say; the sum makes the anchor's weight grow with response length |
# | normalisation | mean over forks and over tokens | sum over tokens, divided by the batch size | with a sum, a longer response carries a larger update; AdamW rescales the whole step, gradient clipping then decides |
#
# Both share the Dirichlet-Multinomial posterior-mean form (counts + α·prior) / (N + α).
# Which learns more on the offline worlds and on SmolLM2 is measured in
# [docs/results.md](../docs/results.md).
#
# ## What to log
# `audit/chunks`, `audit/dropped` (a chunk with fewer than N teacher answers is never scored),
# `audit/fraction`, `audit/k_sem`, `audit/pi_bar`, `audit/pi_hat`, and `audit/records`: every scored
# chunk with its text, the N continuations, each φ, k_sem, π̄ and π̂, as printed above.
#
# ## References
# OmniOPD (arXiv 2606.01476); the public verl-fork implementation named in docs/method.md;
# Levenshtein, *Binary codes capable of correcting deletions, insertions and reversals*, 1966.
#
# ## Exercises
# 1. Show that with α = 0 and φ ∈ {0, 1} the chunk loss is rejection-sampling fine-tuning on the chunks
#    the teacher reproduced, each weighted by its share of agreeing samples.
# 2. The drafts reading can push a chunk down; this one cannot. Construct a batch where the drafts
#    reading lowers the own chunk's probability and the audit reading raises it.
# 3. Run `python omniopd.py --objective audit --similarity embed` and compare `audit/k_sem` with φ = ned
#    on the same chunks. Which one notices a wrong number?
