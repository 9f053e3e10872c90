# %% [markdown]
# # 7. The chunk loss KL(p̂ ‖ q) and its gradient
#
# ## Background
# The student has its own distribution over its K drafts, $q_k$ (page 3). The teacher's
# preference is $\hat p$ (page 6). The chunk loss moves q toward $\hat p$: up for drafts the
# teacher prefers more than the student does, down for the others. It acts on whole
# chunks, so a fork's correction reaches every token of each draft.
#
# ## Equation
# $$\mathcal{L}_{\text{chunk}} = \frac{1}{|\mathcal{F}|}\sum_{\text{forks}} \mathrm{KL}(\hat p \,\Vert\, q) = \frac{1}{|\mathcal{F}|}\sum_{\text{forks}} \sum_k \hat p_k \log\frac{\hat p_k}{q_k}, \qquad q_k = \operatorname{softmax}_k(\ell_k / |c^k|^\gamma)$$
# Its gradient with respect to a draft's log-probability is
# $$\frac{\partial\, \mathrm{KL}(\hat p \Vert q)}{\partial \ell_k} = \frac{q_k - \hat p_k}{|c^k|^\gamma}$$
# so gradient descent raises $\ell_k$ exactly when the teacher wants more of draft k
# than the student gives it. Option `pg`: advantage $A_k = \hat p_k - 1/K$, loss
# $-\sum_k A_k \ell_k / |c^k|$.
#
# ## Code

# %%
from helpers import show
import omniopd

show(omniopd.chunk_loss)

# %% [markdown]
# ## Worked example
# $\hat p = (0.7, 0.1, 0.1, 0.1)$; the student's drafts all have $\ell_k/|c^k| = -1$, so q is uniform.
# $\mathrm{KL} = 0.7 \ln 2.8 + 3 \cdot 0.1 \ln 0.4 \approx 0.4458$, and the gradient is
# $(0.25 - 0.7,\ 0.25 - 0.1, \dots)/|c^k| = (-0.45, 0.15, 0.15, 0.15)/|c^k|$.

# %%
import math
import torch

target = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
lengths = torch.tensor([[4, 4, 4, 4]])
logprobs = torch.full((1, 4), -4.0, requires_grad=True)
loss = omniopd.chunk_loss(target, logprobs, lengths)
loss.backward()
print(f"KL = {loss.item():.4f}   by hand {0.7 * math.log(2.8) + 0.3 * math.log(0.4):.4f}")
print("∂L/∂ℓ =", [round(g, 4) for g in logprobs.grad[0].tolist()], " by hand:", [-0.45 / 4, 0.15 / 4, 0.15 / 4, 0.15 / 4])
assert abs(loss.item() - (0.7 * math.log(2.8) + 0.3 * math.log(0.4))) < 1e-5
assert torch.allclose(logprobs.grad, torch.tensor([[-0.45, 0.15, 0.15, 0.15]]) / 4)

# %% [markdown]
# When q already equals p̂ the loss and its gradient vanish:

# %%
logprobs = (target.log() * lengths).requires_grad_()        # ℓ_k / |c_k| = log p̂_k, so q = p̂
loss = omniopd.chunk_loss(target, logprobs, lengths)
loss.backward()
print(f"KL = {loss.item():.2e}, max |gradient| = {logprobs.grad.abs().max().item():.2e}")
assert loss.item() < 1e-6 and logprobs.grad.abs().max().item() < 1e-6

# %% [markdown]
# A consequence worth seeing: the KL pulls q toward p̂ from **both** sides. If the
# student is surer of the right draft than a shrunken p̂ is (q = 0.9 against p̂ = 0.63),
# the gradient lowers that draft. The prior of page 6 decides how sure a target may be.

# %%
target = torch.tensor([[0.63, 0.37]])
logprobs = torch.tensor([[math.log(0.9), math.log(0.1)]], requires_grad=True)
omniopd.chunk_loss(target, logprobs, torch.ones(1, 2), length_norm=0.0).backward()
print("q = (0.9, 0.1), p̂ = (0.63, 0.37): ∂L/∂ℓ =", [round(g, 3) for g in logprobs.grad[0].tolist()])
assert logprobs.grad[0, 0] > 0

# %% [markdown]
# ## What to log
# `loss/chunk`: the mean KL over answered forks.
#
# ## References
# Hinton et al., *Distilling the Knowledge in a Neural Network*, 2015 (matching a target
# distribution); OmniOPD (arXiv 2606.01476), "chunk-level supervision".
#
# ## Exercises
# 1. Show that with γ = 0 and one-token drafts the loss is a cross-entropy over the K
#    sampled tokens. How does that relate to token-level OPD (page 10)?
# 2. Compare the gradients of `kl` and `pg` for the same p̂ and q. When do they disagree in sign?
