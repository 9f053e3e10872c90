# %% [markdown]
# # 1. On-policy rollout and per-token entropy
#
# ## Background
# On-policy distillation corrects the student on text **it wrote itself**, so the
# mistakes it is taught out of are the ones it actually makes (SFT trains on the
# teacher's text instead, and the student never sees its own errors). Step 1 samples
# a solution y for each prompt x from the student, and, in the same forward pass that
# scores y, the entropy of the student's next-token distribution at every position.
# The entropy says where the student was unsure: step 2 audits exactly there.
#
# ## Equation
# $$y \sim \pi_\theta(\cdot \mid x) \text{ at temperature } \tau, \qquad
#   H_t = -\sum_{v \in V} \pi_\theta(v \mid x, y_{<t}) \log \pi_\theta(v \mid x, y_{<t})$$
#
# $H_t = 0$ when the student is certain; $H_t = \log |V|$ when every token is equally likely.
#
# ## Code
# `sample_rollouts` samples with Hugging Face `generate` (no top-k, top-p or penalties,
# so the samples really come from $\pi_\theta$), marks where each y ends, and keeps $H_t$
# as it samples: `EntropyRecorder` is a logits processor, and `generate` applies it to the
# raw logits, before the temperature, so it sees $\pi_\theta$ itself and no second forward
# pass is needed. In the loss, `response_logits` (or the packed pass of page 3) scores y
# with gradient; `token_logprobs_and_entropy` turns logits into
# $\log \pi_\theta(y_t \mid \cdot)$ and $H_t$.

# %%
from helpers import show
import omniopd
from omniopd_lib.fastpaths import EntropyRecorder, token_logprobs_and_entropy

show(omniopd.sample_rollouts)
show(EntropyRecorder)
show(token_logprobs_and_entropy)

# %% [markdown]
# ## Worked example
# A three-token vocabulary with $\pi = (\tfrac12, \tfrac14, \tfrac14)$:
# $H = \tfrac12 \ln 2 + 2 \cdot \tfrac14 \ln 4 = \tfrac32 \ln 2 \approx 1.0397$ nats;
# the uniform $(\tfrac13, \tfrac13, \tfrac13)$ gives $\ln 3 \approx 1.0986$, the most three tokens can have.

# %%
import math
import torch

probs = torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]]])
logprobs, entropy = token_logprobs_and_entropy(probs.log(), torch.tensor([[0, 1, 0]]))
print("H_t          =", [round(h, 4) for h in entropy[0].tolist()])
print("log π(y_t)   =", [round(l, 4) for l in logprobs[0].tolist()])
assert abs(entropy[0, 0].item() - 1.5 * math.log(2)) < 1e-6
assert abs(entropy[0, 1].item() - math.log(3)) < 1e-6

# %% [markdown]
# Now a real rollout: the shipped toy student answers one toy problem. The student
# is sure of what it copies from the question and unsure where it has to compute.

# %%
from helpers import page_one_rollout

show(page_one_rollout)           # pages 2 and 3 look at this same rollout
page = page_one_rollout()
tokenizer, problem, rollout, entropy = (page[k] for k in ("tokenizer", "problem", "rollout", "entropy"))
length = int(rollout.response_mask_B_T[0].sum())
tokens = [tokenizer.decode([i]) for i in rollout.response_ids_B_T[0, :length]]
print("question:", problem["question"])
print("gold:    ", problem["answer"].replace("\n", " | "))
for token, h in zip(tokens, entropy[0, :length].tolist()):
    print(f"{token!r:>8} H={h:5.2f} " + "#" * round(h * 10))
assert rollout.response_mask_B_T[0, :length].all() and length <= page["cfg"].max_new_tokens

# %% [markdown]
# ## What to log
# `rollout/length` (mean tokens per solution) and `rollout/entropy` (mean $H_t$ over
# generated tokens). A rising `rollout/entropy` means the student is getting less
# sure of everything, a sign the update is too large (see page 8).
#
# ## References
# Agarwal et al., *On-Policy Distillation of Language Models* (GKD), 2024;
# Thinking Machines, *On-Policy Distillation*, 2025.
#
# ## Exercises
# 1. Sample the same problem at τ = 0.5 and τ = 1.5. Where does the entropy change most?
# 2. `EntropyRecorder` would see tempered scores if `generate` applied the temperature
#    first. At τ = 0.5, how far would that $H_t$ be from $\pi_\theta$'s, and which forks would move?
