# %% [markdown]
# # 12. How far to compare: the horizon, and a similarity that reads numbers
#
# ## Background
# Steps 4 and 5 compare each draft with the teacher's continuations of the same prefix. With the defaults of
# pages 4-5 (`--horizon chunk --similarity embed`) both sides are cut to L = 16 student tokens and compared by a
# sentence encoder. Where the teacher writes another dialect, with another tokenizer (the `stories-foreign`
# world), that breaks twice: the teacher's words cost the student's tokenizer about twice the tokens, so its cut
# text ends before the decision the drafts differ in; and what is left differs from every draft in phrasing, which
# is what the encoder weighs. The census (`bench/census.py`) measures it: at the forks where right and wrong drafts
# compete, this p̂ puts 0.526 of its mass on the right drafts where a uniform target puts 0.518.
#
# `--horizon end` lets both sides run to the end of the solution: the teacher writes its whole continuation, and
# each draft is carried on by the student's own rollout (`--draft-rollouts` R of them) from prefix + draft, so that
# a draft is judged by where it leads. `--similarity numbers` then compares what the two texts compute: the F1 of
# the numbers they write, whatever words surround them ("12 - 3 = 9" and "12 minus 3 makes 9" agree).
# The gradient still flows through the K drafts only (step 7 is unchanged).
#
# ## Equation
# With $e^{k,r}$ the student's r-th rollout from $s_t \oplus c^k$ and $\mathrm{nums}(\cdot)$ the multiset of
# numbers a text writes:
# $$S_{km} = \frac{1}{R} \sum_{r=1}^{R} \mathrm{F1}\big(\mathrm{nums}(c^k \oplus e^{k,r}),\ \mathrm{nums}(r^m)\big)$$
# A text that ends at once (the draft is [EOS]; the teacher writes nothing, or `[END]` in chat mode) agrees with
# another that does (S = 1) and with no text that goes on (S = 0): the decision to stop gets a vote.
#
# ## Code

# %%
from helpers import show
import omniopd
from omniopd_lib import similarity

show(omniopd.drafts_to_horizon)
show(omniopd.horizon_text)
show(similarity.numbers_f1)

# %% [markdown]
# ## Worked example: one fork of the foreign world, both ways
# A test problem of the story world, forked at the answer's first token (the census finds most informative forks
# near the start, where the student picks its opening and its first operation). Two drafts: the right operation
# ("take away 5": to misplace is to lose) and the wrong one ("add 5"). The teacher is the foreign one: it learned
# its solutions in the other dialect, with its own tokenizer. Same seed, same four teacher samples per horizon;
# only what is compared differs.

# %%
import torch
from omniopd_lib import models
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher
from toyworld import stories

torch.set_num_threads(1)   # the same numbers on every machine
cfg = omniopd.Config(teacher="stories-foreign").resolved()
student, tokenizer = models.load_model("stories", "student", torch.device("cpu"))
teacher = HFTeacher("stories-foreign", "cpu")
problem = stories.make_problems(40, "test", 0)[10]
assert problem["answer"].startswith("Ben starts with 7 cards. First we take away 5: 7 - 5 = 2.")
written = ""   # the fork is the answer's first token
prefix = cfg.prompt_template.format(question=problem["question"]) + written
right, wrong = "Ben starts with 7 cards. First we take away 5: 7 - 5 = 2.", "Ben starts with 7 cards. First we add 5: 7 + 5 = 12."
print(problem["question"])
print("written so far:", repr(written))
print("right draft:   ", repr(right), "\nwrong draft:   ", repr(wrong))
prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
drafts = omniopd.Drafts([prefix_ids], [[tokenizer(d, add_special_tokens=False)["input_ids"] for d in (right, wrong)]],
                        [(0, 0)])


def target(horizon, kind):
    """p̂ over the two drafts under one horizon and similarity, from seed 0; with what was compared."""
    torch.manual_seed(0)
    texts = omniopd.teacher_rollouts(teacher, [prefix], 4, cfg.chunk_len, tokenizer, horizon=horizon,
                                     max_tokens=96 if horizon == "end" else 0).wait()[0]
    torch.manual_seed(0)
    compared, finished = omniopd.drafts_to_horizon(student, tokenizer, drafts, horizon, 1, cfg.max_new_tokens, 1.0)
    S = omniopd.similarity_matrices(Similarity(kind), compared, [texts], [written], finished)[0]
    return omniopd.dirichlet_preference(S, cfg.dirichlet_alpha, cfg.vote_temperature), S, texts, compared[0]


old, S_old, teacher_old, _ = target("chunk", "embed")
new, S_new, teacher_new, compared_new = target("end", "numbers")
print("\nchunk horizon, embed: the teacher's texts, cut to 16 student tokens")
for text in teacher_old:
    print("   ", repr(text))
print("S =", [[round(s, 3) for s in row] for row in S_old.tolist()], " p̂ =", [round(p, 3) for p in old.tolist()])
print("\nend horizon, numbers: the teacher's first text, then each draft carried on by the student")
print("   ", repr(teacher_new[0]))
for text in compared_new:
    print("   ", repr(text))
print("S =", [[round(s, 3) for s in row] for row in S_new.tolist()], " p̂ =", [round(p, 3) for p in new.tolist()])
assert not any("5" in text for text in teacher_old)   # cut before the operation: nothing to tell the drafts apart
assert all(" minus 5 " in text or " down 5" in text for text in teacher_new)   # run to the end: the decision
assert new[0] > 0.7 and new[0] - old[0] > 0.1

# %% [markdown]
# Cut to 16 student tokens, every teacher text ends inside its opening sentence ("Ben owns 7 tickets at the ou"),
# before any operation: what S still tells apart is phrasing (which opening each draft's words sit nearer in the
# encoder's space), not the decision. Run to the end, the teacher's solution writes the totals of every step
# (7 minus 5 gives 2, …, 9); the right draft's rollout shares its first totals, the wrong one's diverges from its
# first step. Note that the student's rollout after the right draft errs later ("take away 1"): S is a noisy
# estimate, which R > 1 smooths.
#
# One fork proves nothing, and this one was chosen to show the difference. Over the census's 28 informative forks
# of the foreign world, p̂'s mass on the right drafts is 0.526 (chunk, embed) and 0.760 (end, numbers) against a
# uniform 0.518 (`bench/results/census-stories-foreign-reading.md`); on the story world (the teacher writes the
# student's own dialect) 0.615 and 0.770 against 0.543 (`census-stories.md`). That needs a teacher that can read
# the student: a fork in the middle of a solution hands it a prefix in the student's dialect. The first foreign
# teacher had never read that dialect and wrote nonsense from there ("owns 5 plus 7 plus 10. Afterwards the
# outset. …"; it reached the right answer from 4-27 % of such prefixes); the one shipped now learned to (99.5 %,
# `bench/teacher_reads_student.py`), as a real LLM teacher reads both. Where the new target still goes wrong: a
# student rollout that errs after a right draft loses numbers it should have kept.
#
# ## What it costs
# The teacher writes whole solutions and the student carries every draft on: in the census with the reading
# teacher, a step takes 14.8× an OPD step on the foreign world against 11.6× for the chunk horizon, with the
# teacher writing 174 tokens per fork against 112 (the first census, at the old 96-token cap: 23× and 12×).
#
# ## What to log
# `sim/mean`, `pref/entropy` and `pref/own_draft` as before; the step's `horizon_texts` (what each draft was
# compared by) are in the fork tables (`--report-to`).
#
# ## References
# The abstract's "Monte Carlo rollouts" and "continuous semantic similarity over multi-token chunks" leave open how
# far the rollouts run and what is compared; `docs/method.md` says which part of each choice is ours.
