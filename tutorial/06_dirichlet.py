# %% [markdown]
# # 6. The Dirichlet-Multinomial preference: votes, prior, posterior
#
# ## Background
# Each teacher continuation $r^m$ is one noisy look at what the teacher prefers. It
# **votes** for the drafts it resembles. With M = 4 looks the raw vote histogram is
# noisy and often one-hot: one lucky match and a draft gets all the mass. OmniOPD
# treats the votes as counts from a Multinomial with a Dirichlet prior and uses the
# posterior mean as the target. The prior shrinks the target toward u (uniform, or
# the student's own $q$) and bounds its variance.
#
# ## Equation
# Soft votes (κ = vote temperature) or hard votes:
# $$w_{mk} = \frac{\exp(S_{km}/\kappa)}{\sum_j \exp(S_{jm}/\kappa)} \quad\text{or}\quad w_{mk} = \mathbb{1}\big[k = \arg\max_j S_{jm}\big]$$
# Counts and the posterior mean under the prior Dirichlet(α u):
# $$n_k = \sum_{m=1}^{M} w_{mk}, \qquad \hat p_k = \frac{n_k + \alpha u_k}{M + \alpha}$$
# Limits: α → 0 gives the histogram $n_k / M$; α → ∞ gives the prior u; M → ∞ gives the
# teacher's true preference.
#
# ## Why the variance is bounded
# The posterior is Dirichlet(n + αu) with total concentration $A = M + \alpha$. For a
# Dirichlet with concentration vector a and total A, each coordinate is Beta($a_k$, A − $a_k$), so
# $$\operatorname{Var}[p_k \mid \text{votes}] = \frac{\hat p_k (1 - \hat p_k)}{A + 1} = \frac{\hat p_k(1-\hat p_k)}{M + \alpha + 1} \le \frac{1}{4(M + \alpha + 1)}.$$
# With M = 4 and α = 1 the posterior standard deviation of any $p_k$ is at most
# $\sqrt{1/24} \approx 0.20$; the prior's pseudo-counts are what keep it there.
#
# ## Code

# %%
from helpers import show
import omniopd

show(omniopd.dirichlet_preference)

# %% [markdown]
# ## Worked example by hand
# K = 3 drafts, M = 2 continuations, hard votes: $r^1$ is closest to $c^1$, $r^2$ to $c^2$.
# $n = (1, 1, 0)$, $u = (\tfrac13, \tfrac13, \tfrac13)$, α = 1:
# $\hat p = \big((1 + \tfrac13)/3,\ (1 + \tfrac13)/3,\ (0 + \tfrac13)/3\big) = (\tfrac49, \tfrac49, \tfrac19)$.

# %%
import torch

S = torch.tensor([[0.95, 0.30],
                  [0.40, 0.90],
                  [0.20, 0.10]])
p_hat = omniopd.dirichlet_preference(S, alpha=1.0, votes="hard")
print("hard votes, α=1:", [round(v, 4) for v in p_hat.tolist()])
assert torch.allclose(p_hat, torch.tensor([4 / 9, 4 / 9, 1 / 9]))
for alpha in (0.0, 1.0, 10.0):
    print(f"soft votes κ=0.1, α={alpha:>4}:", [round(v, 4) for v in omniopd.dirichlet_preference(S, alpha).tolist()])

# %% [markdown]
# ## The prior at work
# One fork of the toy world: K = 4 drafts, M = 4 continuations, three of which favour
# draft 2. Votes alone (α = 0) against the posterior for α = 1 and α = 10:

# %%
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from helpers import save_figure

S = torch.tensor([[0.80, 0.81, 0.79, 0.95],
                  [0.97, 0.99, 0.98, 0.70],
                  [0.75, 0.70, 0.72, 0.72],
                  [0.85, 0.84, 0.86, 0.80]])
figure, axes = plt.subplots(1, 3, figsize=(9, 2.4), sharey=True)
for axis, alpha in zip(axes, (0.0, 1.0, 10.0)):
    p = omniopd.dirichlet_preference(S, alpha, votes="hard")
    axis.bar(range(1, 5), p.numpy(), color=["gray", "crimson", "gray", "gray"])
    axis.axhline(0.25, color="black", linewidth=0.6, linestyle=":")
    axis.set_title(f"α = {alpha:g}")
    axis.set_xlabel("draft k")
    print(f"α={alpha:>4}: p̂ = {[round(v, 3) for v in p.tolist()]}")
axes[0].set_ylabel("p̂_k (hard votes)")
save_figure(figure, "06_prior.png")

# %% [markdown]
# ![votes and posterior](figures/06_prior.png)
#
# ## Checking the variance bound by simulation
# Draw M = 4 hard votes from a true preference, many times, and compare the spread of
# $\hat p_1$ for α = 0 and α = 1. The prior shrinks the spread, at the cost of a bias toward u.

# %%
torch.manual_seed(0)
true = torch.tensor([0.7, 0.1, 0.1, 0.1])
for alpha in (0.0, 1.0, 4.0):
    estimates = []
    for _ in range(4000):
        chosen = torch.multinomial(true, 4, replacement=True)
        estimates.append(omniopd.dirichlet_preference(torch.nn.functional.one_hot(chosen, 4).T.float(), alpha, votes="hard")[0])
    estimates = torch.stack(estimates)
    print(f"α={alpha}: mean p̂_1 = {estimates.mean():.3f}, std = {estimates.std():.3f}")
    if alpha == 0.0:
        assert abs(estimates.std().item() - (0.7 * 0.3 / 4) ** 0.5) < 0.01   # binomial std √(p(1-p)/M)
    else:
        assert estimates.std().item() < (0.7 * 0.3 / 4) ** 0.5

# %% [markdown]
# ## What to log
# `pref/entropy` (mean entropy of p̂; log K means no preference at all) and
# `pref/own_draft` (mean p̂ of the student's own chunk).
#
# ## References
# Minka, *Estimating a Dirichlet distribution*, 2000; Gelman et al., *Bayesian Data
# Analysis*, ch. 5 (Dirichlet-Multinomial conjugacy).
#
# ## Exercises
# 1. Set α = 0 and M = 1: what does the target look like, and what will the KL of page 7 do with it?
# 2. Use `prior="student"` (u = q). What target does a fork get when no continuation prefers anything?
# 3. Derive the variance above from the Beta marginal of a Dirichlet.
