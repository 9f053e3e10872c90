# %% [markdown]
# # 3. Speculative drafts and chunk log-probabilities
#
# ## Background
# At a fork the student could have gone several ways. OmniOPD makes those ways
# explicit: from the prefix $s_t = (x, y_{<t})$ it drafts K chunks of up to L tokens.
# Draft 1 is what the student actually wrote, $y_{t:t+L}$; drafts 2…K are fresh samples.
# Chunks, not single tokens, are what the teacher's text can be compared with: one
# token says little, sixteen say what the student meant to do next.
# All forks of a batch are drafted in **one** batched `generate` call.
#
# ## Equation
# $$c^1 = y_{t:t+L},\quad c^2,\dots,c^K \sim \pi_\theta(\cdot \mid s_t),\qquad
#   \ell_k = \sum_{j=1}^{|c^k|} \log \pi_\theta\big(c^k_j \mid s_t, c^k_{<j}\big)$$
# The student's distribution over its own drafts (used in step 7) normalises by length:
# $$q_k = \operatorname{softmax}_k\big(\ell_k / |c^k|^{\gamma}\big)$$
# γ = 1 compares mean per-token log-probabilities (default), γ = 0 compares the raw sums,
# which favours short chunks: a draft that stops early has fewer negative terms.
#
# ## Code

# %%
from helpers import show
import omniopd

show(omniopd.draft_chunks)
show(omniopd.chunk_logprobs)

# %% [markdown]
# ## Worked example: length normalisation
# Two drafts: $\ell = (-2, -3)$ with lengths $(2, 6)$. Per-token means are $-1$ and $-0.5$.

# %%
import math
import torch

logprobs = torch.tensor([[-2.0, -3.0]])
lengths = torch.tensor([[2, 6]])
for gamma in (1.0, 0.0):
    q = torch.softmax(logprobs / lengths.float() ** gamma, dim=1)
    print(f"γ = {gamma}: q = {[round(v, 4) for v in q[0].tolist()]}")
q1 = torch.softmax(logprobs / lengths, dim=1)
assert abs(q1[0, 1].item() - 1 / (1 + math.exp(-0.5))) < 1e-6      # e^-0.5 / (e^-1 + e^-0.5)
assert abs(torch.softmax(logprobs, 1)[0, 0].item() - 1 / (1 + math.exp(-1))) < 1e-6

# %% [markdown]
# With γ = 1 the longer, more fluent draft wins (0.62); with γ = 0 the short one does (0.73).
#
# ## Worked example: real drafts
# Drafts at the first fork of a toy rollout, and a check that `chunk_logprobs`
# equals the sum of token log-probabilities from a separate, unpadded forward pass:

# %%
import torch.nn.functional as F
from helpers import page_one_rollout

page = page_one_rollout()                 # the rollout and forks of pages 1 and 2
cfg, student, tokenizer, rollout, forks = (page[k] for k in ("cfg", "student", "tokenizer", "rollout", "forks"))
drafts = omniopd.draft_chunks(student, tokenizer, rollout, forks[:1], cfg.num_drafts, cfg.chunk_len, cfg.temperature)
logprobs, lengths = omniopd.chunk_logprobs(student, drafts, tokenizer.pad_token_id)
print("prefix:", repr(tokenizer.decode(drafts.prefix_ids[0]).split("Answer: ")[1]))
for k, chunk in enumerate(drafts.chunk_ids[0]):
    ids = torch.tensor([drafts.prefix_ids[0] + chunk])
    with torch.no_grad():
        token_logprobs = F.log_softmax(student(input_ids=ids).logits[0], -1)
    by_hand = sum(token_logprobs[len(drafts.prefix_ids[0]) + j - 1, c].item() for j, c in enumerate(chunk))
    print(f"c^{k + 1} = {tokenizer.decode(chunk, skip_special_tokens=True)!r:22} |c|={len(chunk):2}  "
          f"ℓ={logprobs[0, k].item():8.4f}  separate pass: {by_hand:8.4f}")
    assert abs(by_hand - logprobs[0, k].item()) < 1e-4
print("q =", [round(v, 3) for v in torch.softmax(logprobs / lengths, 1)[0].tolist()])

# %% [markdown]
# ## Scoring every draft in the rollout's own forward pass
# `chunk_logprobs` is the definition: each draft with its whole prefix written out, so a
# prefix of 300 tokens is computed again for each of the F × K drafts. Training uses
# `rollout_and_drafts_forward` instead: one row per rollout holds x, y and, after y, each
# fresh draft of each fork. A 4D attention mask lets a draft token see x, $y_{<t}$ and its
# own chunk so far, never y from t on or another draft, and its position ids continue from
# t, so the prefix is computed once and every draft still gets exactly its ℓ. Draft 1 *is*
# $y_{t:t+|c|}$, so its ℓ is read off the response's own logits, and so is every draft's
# first token (scored by $\pi_\theta(\cdot \mid x, y_{<t})$). The same pass gives the logits
# of the anchor (page 8).

# %%
show(omniopd.rollout_and_drafts_forward)
with torch.no_grad():
    _, packed, packed_lengths = omniopd.rollout_and_drafts_forward(student, rollout, drafts)
print("ℓ, prefix written out:", [round(v, 4) for v in logprobs[0].tolist()])
print("ℓ, one packed pass:   ", [round(v, 4) for v in packed[0].tolist()])
assert torch.allclose(packed, logprobs, atol=1e-5) and torch.equal(packed_lengths, lengths)

# %% [markdown]
# ## What to log
# Nothing new per step: the drafts feed steps 5–7. `pref/own_draft` (page 6) tells how
# often the teacher prefers the student's own chunk $c^1$ over its alternatives.
#
# ## References
# Leviathan et al., *Fast Inference from Transformers via Speculative Decoding*, 2023
# (drafting chunks to be verified); OmniOPD (arXiv 2606.01476), "Monte Carlo rollouts over chunks".
#
# ## Exercises
# 1. With K = 1 there is only the student's own chunk. What is $q$, and what can the loss of page 7 do?
# 2. Draft with temperature 0.3 instead of 1.0. How often are all K drafts identical, and what does that do to the signal?
