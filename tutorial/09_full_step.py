# %% [markdown]
# # 9. One full training step on the toy world
#
# ## Background
# Pages 1–8 one at a time; here they run in order on one batch of toy problems, every
# intermediate printed, exactly as `omniopd_collect` (steps 1–6, no gradient) and
# `omniopd_loss` (steps 7–8) run them. The last cell checks that this walk-through gives
# the same loss as those two functions from the same random state, so the page cannot
# drift from the code.
#
# ## Equation
# $$\mathcal{L} = \frac{1}{|\mathcal{F}|}\sum_{f \in \mathcal{F}} \mathrm{KL}\big(\hat p^{(f)} \,\Vert\, q^{(f)}\big) + \beta \cdot \frac{1}{|y|}\sum_t \mathrm{KL}\big(\pi_\theta(\cdot \mid s_t) \Vert \pi_{\text{ref}}(\cdot \mid s_t)\big)$$
#
# ## Code

# %%
from helpers import show
import omniopd
from omniopd_lib.common import RunState
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import models

show(omniopd.omniopd_collect)
show(omniopd.omniopd_loss)

# %% [markdown]
# ## Worked example: every intermediate

# %%
import torch
import toyworld
from omniopd_lib.fastpaths import token_logprobs_and_entropy
from omniopd_lib.generation import decode_after
from omniopd_lib.teachers import draw_name

device = torch.device("cpu")
cfg = omniopd.Config(batch_size=4, **toyworld.world_options("toy")).resolved()
student, tokenizer = models.load_model("toy", "student", device)
reference, _ = models.load_model("toy", "student", device)
teacher = HFTeacher("toy", device)
similarity = Similarity("embed")
rows = toyworld.make_problems(cfg.batch_size, "train", seed=11)

torch.manual_seed(0)
rollout = omniopd.sample_rollouts(student, tokenizer, [r["question"] for r in rows], cfg)       # step 1
logits = omniopd.response_logits(student, rollout)
_, entropy = token_logprobs_and_entropy(logits, rollout.response_ids_B_T)
for b in range(cfg.batch_size):
    print(f"y[{b}] = {tokenizer.decode(rollout.response_ids_B_T[b], skip_special_tokens=True)!r}")

forks = omniopd.select_forks(entropy.detach(), rollout.response_mask_B_T, cfg.audit_budget,       # step 2
                             cfg.fork_gap, cfg.entropy_threshold)
print("\nforks (rollout, position, H):", [(b, t, round(entropy[b, t].item(), 2)) for b, t in forks])

drafts = omniopd.draft_chunks(student, tokenizer, rollout, forks, cfg.num_drafts, cfg.chunk_len,  # step 3
                              cfg.temperature)
prefixes = [tokenizer.decode(p, skip_special_tokens=True) for p in drafts.prefix_ids]
candidates = [[decode_after(tokenizer, prefix, c) for c in chunks]
              for prefix, chunks in zip(drafts.prefix_ids, drafts.chunk_ids)]
continuations = omniopd.teacher_rollouts(teacher, prefixes, cfg.teacher_samples, cfg.chunk_len,  # step 4
                                         tokenizer, draw=draw_name(cfg, 0)).wait()
matrices = similarity.matrices(candidates, continuations)                                         # step 5
logprobs, lengths = omniopd.chunk_logprobs(student, drafts, tokenizer.pad_token_id)
targets = torch.stack([omniopd.dirichlet_preference(S, cfg.dirichlet_alpha, cfg.vote_temperature)  # step 6
                       for S in matrices])
q = torch.softmax(logprobs.detach() / lengths, 1)
for f in range(len(forks)):
    print(f"\nfork {f}: prefix ...{prefixes[f][-14:]!r}")
    print(f"   teacher r: {continuations[f]}")
    for k in range(cfg.num_drafts):
        print(f"   c^{k + 1} {candidates[f][k]!r:22} ℓ={logprobs[f, k].item():7.3f} q={q[f, k]:.3f} "
              f"S={[round(s, 2) for s in matrices[f][k].tolist()]} p̂={targets[f, k]:.3f}")

loss_chunk = omniopd.chunk_loss(targets, logprobs, lengths)                                       # step 7
with torch.no_grad():
    reference_logits = omniopd.response_logits(reference, rollout)
loss_anchor = omniopd.anchor_kl(logits, reference_logits, rollout.response_mask_B_T)             # step 8
loss = loss_chunk + cfg.kl_beta * loss_anchor                                                     # step 9
print(f"\nL_chunk = {loss_chunk.item():.4f}, L_anchor = {loss_anchor.item():.4f}, L = {loss.item():.4f}")

# %% [markdown]
# The same step through `omniopd.omniopd_collect` and `omniopd.omniopd_loss`, then one update:

# %%
run = RunState(student, tokenizer, reference, teacher, similarity,
                       torch.optim.AdamW(student.parameters(), lr=cfg.lr))
torch.manual_seed(0)
batch = omniopd.omniopd_collect(run, rows, cfg)
same_loss, metrics = omniopd.omniopd_loss(run, batch, cfg)
print(f"omniopd_loss: L = {same_loss.item():.4f}")
print({k: round(v, 4) for k, v in metrics.items()})
assert abs(same_loss.item() - loss.item()) < 1e-5
norm = omniopd.update(run, same_loss, cfg.grad_clip)
print(f"gradient norm before clipping: {norm:.4f}")

# %% [markdown]
# ## See it as a page
# A run records a step like this one in `view.jsonl` (the first, the last and some between) and
# `python -m omniopd_tools.view RUN_FOLDER` draws it: each rollout with H_t as shading and its forks
# marked, each fork's drafts with q and p̂ as bars, the teacher's continuations and S as a heat map.
# This step's page: [figures/09_full_step_view.html](figures/09_full_step_view.html) (open it in a
# browser; it needs no server).

# %%
import dataclasses
import json
import tempfile
from pathlib import Path
import helpers
from omniopd_lib.tracking import view_record
from omniopd_tools import view

with tempfile.TemporaryDirectory() as folder:
    record = view_record(batch, 1, tokenizer, rows, cfg)
    (Path(folder) / "view.jsonl").write_text(json.dumps(record) + "\n")
    (Path(folder) / "metrics.jsonl").write_text(json.dumps({"step": 1, **metrics}) + "\n")
    (Path(folder) / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    html = view.page(Path(folder), title="tutorial/09_full_step.py, one step of the toy world")
helpers.FIGURES.mkdir(exist_ok=True)
(helpers.FIGURES / "09_full_step_view.html").write_text(html)
print(f"{len(record['forks'])} forks on the page, {len(html) / 1024:.0f} KB")
assert html.count('class="forkbox"') == len(record["forks"]) == metrics["forks/count"] - metrics["forks/skipped"]

# %% [markdown]
# ## What to log
# Everything above is one line of `metrics.jsonl`: `loss/chunk`, `loss/anchor`,
# `forks/count`, `forks/entropy`, `sim/mean`, `pref/entropy`, `pref/own_draft`,
# `teacher/calls`, `grad/norm` (the README's metrics table explains each).
#
# ## Exercises
# 1. Which fork above has the most informative target, and why?
# 2. Re-run with `votes="hard"`. Which targets change the most?
