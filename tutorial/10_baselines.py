# %% [markdown]
# # 10. The baselines in the same notation, and where OmniOPD differs
#
# ## Background
# The paper's claims are comparisons, so the baselines live behind the same
# functions: the same rollout (page 1), anchor (page 8), optimizer, logging and
# checkpoints. Each adds only what it collects without gradient and its loss
# (`--method opd | sft | grpo`; `METHODS` pairs the two).
#
# | method | what the teacher gives | where the signal lands | needs |
# |---|---|---|---|
# | token-level OPD | $\log \pi_T(v \mid s_t)$ for the sampled token, or all v | every generated token | the teacher's logits and the student's tokenizer |
# | SFT | a full solution, text | the teacher's tokens, not the student's | text only |
# | GRPO | nothing: a reward 1 / 0 from an answer checker | every token of a sample, one number per sample | gold answers |
# | OmniOPD | M short continuations, text | forks (chunks), plus the anchor everywhere | text only |
#
# ## Equations
# **Token-level OPD**, sampled form (the per-token log-ratio is a reward with no gradient):
# $$A_t = \log \pi_T(y_t \mid s_t) - \log \pi_\theta(y_t \mid s_t), \qquad \mathcal{L}_{\text{OPD}} = -\frac{1}{|y|}\sum_t \operatorname{sg}[A_t]\, \log \pi_\theta(y_t \mid s_t)$$
# full form: $\mathcal{L} = \frac{1}{|y|}\sum_t \mathrm{KL}(\pi_\theta(\cdot \mid s_t) \Vert \pi_T(\cdot \mid s_t))$, the anchor's KL with the teacher in place of the base model.
# Both divide by the generated tokens.
#
# **SFT** on the teacher's solution $z \sim T(\cdot \mid x)$: $\mathcal{L} = -\frac{1}{|z|}\sum_t \log \pi_\theta(z_t \mid x, z_{<t})$.
#
# **GRPO** with G samples per prompt and reward $r_i \in \{0, 1\}$:
# $$A_i = \frac{r_i - \operatorname{mean}(r)}{\operatorname{std}(r) + \epsilon}, \qquad \mathcal{L} = -\frac{1}{\sum_i |y^i|}\sum_i \sum_t A_i \log \pi_\theta(y^i_t \mid \cdot) + \beta\,\mathcal{L}_{\text{anchor}}$$
#
# ## Code

# %%
from helpers import show
import omniopd_baselines

show(omniopd_baselines.policy_gradient_loss)
show(omniopd_baselines.rollout_collect)
show(omniopd_baselines.opd_loss)
show(omniopd_baselines.sft_collect)
show(omniopd_baselines.sft_loss)
show(omniopd_baselines.group_advantages)
show(omniopd_baselines.grpo_collect)
show(omniopd_baselines.grpo_loss)

# %% [markdown]
# ## Worked example: GRPO advantages
# Rewards $(1, 1, 0, 0, 0)$: mean 0.4, population std $\sqrt{0.24} \approx 0.490$, so the
# right answers get $+0.6/0.490 = +1.225$ and the wrong ones $-0.4/0.490 = -0.816$.
# A group that is all right or all wrong teaches nothing.

# %%
import torch

advantages = omniopd_baselines.group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
print("A =", [round(a, 3) for a in advantages.tolist()])
assert torch.allclose(advantages, torch.tensor([1.2247, 1.2247, -0.8165, -0.8165, -0.8165]), atol=1e-4)
print("all right:", omniopd_baselines.group_advantages(torch.ones(4)).tolist())

# %% [markdown]
# ## Worked example: token-level OPD on one token
# The student wrote token 0 with $\pi_\theta = 0.5$; the teacher gives it 0.8. $A = \ln 0.8 - \ln 0.5 = 0.470 > 0$:
# the gradient raises that token. Had the teacher given it 0.1, $A = \ln 0.2 = -1.609$ and it would fall.
# The signal depends on the teacher's probability of **the student's exact token**, which is
# where token-level OPD is brittle: two tokenizers, or the same idea in other words, and
# the overlap is gone. OmniOPD compares 16-token chunks by meaning instead.

# %%
import math

for teacher_probability in (0.8, 0.1):
    student_logprob = torch.tensor([[math.log(0.5)]], requires_grad=True)
    advantage = torch.tensor([[math.log(teacher_probability)]]) - student_logprob.detach()
    omniopd_baselines.policy_gradient_loss(student_logprob, advantage, torch.ones(1, 1)).backward()
    print(f"π_T(y_t) = {teacher_probability}: A = {advantage.item():+.3f}, "
          f"descent moves log π_θ(y_t) by {-student_logprob.grad.item():+.3f} × lr")
    assert (advantage.item() > 0) == (student_logprob.grad.item() < 0)

# %% [markdown]
# ## What to log
# `loss/opd`, `loss/sft` with `sft/solutions`, `loss/pg` with `grpo/reward` (the mean
# reward of the batch: GRPO's own accuracy on its training samples).
# `bench/compare.py` runs all of them, with OmniOPD and its ablations, on one budget.
#
# ## References
# Agarwal et al., *On-Policy Distillation of Language Models* (GKD), 2024; Thinking
# Machines, *On-Policy Distillation*, 2025 (the sampled per-token form); Shao et al.,
# *DeepSeekMath* (GRPO), 2024.
#
# ## Exercises
# 1. Why does GRPO need gold answers while OPD and OmniOPD do not?
# 2. OPD's full form needs a V-sized tensor per position from the teacher. What does
#    that cost for V = 152k and 512-token solutions, per rollout, in bf16?
