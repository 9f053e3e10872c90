# %% [markdown]
# # 8. The base-model KL anchor
#
# ## Background
# The chunk loss touches only the forks, a handful of positions per solution. Every
# other token is **unaudited**: nothing says what it should be, yet each update moves
# it. Without a restraint the student can drift there, toward repetition or nonsense,
# while the audited positions look fine (policy collapse). The anchor ties every
# generated position to the base model: the frozen copy $\pi_{\text{ref}}$ of the
# student's starting weights. Student and reference are both local, so the KL is
# computed exactly over the whole vocabulary.
#
# ## Equation
# $$\mathcal{L}_{\text{anchor}} = \frac{1}{|y|}\sum_{t} \mathrm{KL}\big(\pi_\theta(\cdot \mid s_t)\,\Vert\,\pi_{\text{ref}}(\cdot \mid s_t)\big)
#   = \frac{1}{|y|}\sum_t \sum_v \pi_\theta(v \mid s_t)\big(\log \pi_\theta(v \mid s_t) - \log \pi_{\text{ref}}(v \mid s_t)\big)$$
# $$\mathcal{L} = \mathcal{L}_{\text{chunk}} + \beta\, \mathcal{L}_{\text{anchor}}, \qquad \beta = 0.05$$
# Option `k3`: on the sampled tokens only, $\mathrm{KL} \approx e^{r_t} - 1 - r_t$ with
# $r_t = \log \pi_{\text{ref}}(y_t) - \log \pi_\theta(y_t)$ (unbiased, never negative, no V-sized tensor).
#
# ## Code

# %%
from helpers import show
import omniopd
from omniopd_lib import models

show(omniopd.anchor_kl)
show(omniopd.anchor_term)

# %% [markdown]
# ## Worked example by hand
# One position, three tokens: $\pi_\theta = (0.5, 0.3, 0.2)$, $\pi_{\text{ref}} = (0.4, 0.4, 0.2)$:
# $\mathrm{KL} = 0.5 \ln\frac{0.5}{0.4} + 0.3 \ln\frac{0.3}{0.4} + 0 = 0.1116 - 0.0863 = 0.0253$.

# %%
import math
import torch

student_logits = torch.tensor([[[0.5, 0.3, 0.2]]]).log()
reference_logits = torch.tensor([[[0.4, 0.4, 0.2]]]).log()
kl = omniopd.anchor_kl(student_logits, reference_logits, torch.ones(1, 1))
by_hand = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
print(f"KL = {kl.item():.4f}   by hand {by_hand:.4f}")
assert abs(kl.item() - by_hand) < 1e-6

# %% [markdown]
# ## What happens to the unaudited tokens
# The anchor is 0 before the first update. Push the student's weights by random noise
# of growing size, as too large a learning rate would, and the anchor grows with the
# drift; its gradient points back toward the reference:

# %%
import toyworld

torch.manual_seed(0)
cfg = omniopd.Config(**toyworld.world_options("toy")).resolved()
reference, tokenizer = models.load_model("toy", "student", torch.device("cpu"))
rollout = omniopd.sample_rollouts(reference, tokenizer, [r["question"] for r in toyworld.make_problems(8, "test", 3)], cfg)
with torch.no_grad():
    reference_logits = omniopd.response_logits(reference, rollout)
noise = {name: torch.randn_like(p) for name, p in reference.named_parameters()}
for scale in (0.0, 0.01, 0.03, 0.1):
    student, _ = models.load_model("toy", "student", torch.device("cpu"))
    with torch.no_grad():
        for name, p in student.named_parameters():
            p.add_(scale * noise[name])
    anchor = omniopd.anchor_kl(omniopd.response_logits(student, rollout), reference_logits, rollout.response_mask_B_T)
    anchor.backward()
    step = {name: p.grad for name, p in student.named_parameters()}
    # does a small step against the anchor's gradient move the weights back toward the reference?
    toward = sum(((p - 1e-3 * step[n]) - q).norm() ** 2 for (n, p), q in zip(student.named_parameters(), reference.parameters()))
    away = sum((p - q).norm() ** 2 for p, q in zip(student.parameters(), reference.parameters()))
    print(f"noise {scale:<5} anchor = {anchor.item():.4f}" + (f"   step closes distance: {bool(toward < away)}" if scale else ""))
    if scale == 0.0:
        assert anchor.item() < 1e-6
    else:
        assert toward < away

# %% [markdown]
# In `bench/compare.py`, the row "ablation: β = 0" trains without the anchor.
#
# ## What to log
# `loss/anchor`: the mean KL to the reference over generated tokens; it starts at 0.
# A steadily rising anchor together with a rising `rollout/entropy` is the signature of drift.
#
# ## References
# Schulman, *Approximating KL Divergence* (k1, k2, k3 estimators), 2020; Ouyang et al.,
# *Training language models to follow instructions with human feedback* (KL to the SFT model), 2022.
#
# ## Exercises
# 1. Set β = 0 and a learning rate five times the default. Watch `rollout/entropy`.
# 2. Compute `k3` and `full` on the same rollout. How far apart are they for small drift? For large?
