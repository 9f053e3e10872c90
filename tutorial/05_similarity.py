# %% [markdown]
# # 5. Semantic verification: the similarity matrix S
#
# ## Background
# The teacher's continuations are text in the teacher's own words and tokens; the
# drafts are the student's. They cannot be compared token by token. OmniOPD compares
# them by **meaning**: each draft $c^k$ and each teacher continuation $r^m$ is embedded
# by a sentence encoder E, and $S_{km}$ is their cosine. A draft that says what the
# teacher would have said scores high even in other words.
#
# ## Equation
# $$S_{km} = \cos\big(E(c^k), E(r^m)\big) = \frac{E(c^k)}{\lVert E(c^k) \rVert} \cdot \frac{E(r^m)}{\lVert E(r^m) \rVert}$$
# Options: `embed` (all-MiniLM-L6-v2, the default), `lexical` (character n-gram F1,
# chrF with β = 1, no model), or any callable (texts, texts) → K × M matrix.
#
# ## Code
# All texts of a training step go through the encoder as one batch.

# %%
from helpers import show
from omniopd_lib.similarity import Similarity
from omniopd_lib import similarity

show(Similarity.matrices)
show(similarity.ngram_f1)

# %% [markdown]
# ## Worked example: n-gram F1 by hand
# "ab" against "ac": unigrams share one of two on each side, F1 = ½; bigrams "ab" and
# "ac" share nothing, F1 = 0; the mean over n = 1, 2 is ¼.

# %%
assert similarity.ngram_f1("ab", "ac", max_n=2) == 0.25
print("ngram_f1('ab', 'ac', max_n=2) =", similarity.ngram_f1("ab", "ac", max_n=2))

# %% [markdown]
# ## Worked example: what the embedding sees in arithmetic
# Four drafts against one teacher continuation, with both similarities:

# %%
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from helpers import save_figure

teacher = ["7. 7-7=0.\n#### 0"]
drafts = ["7. 7-7=0.\n#### 0", "7. 7-7=1.\n#### 1", "6. 6-7=1.\n#### 1", "Seven toys, none left."]
embed = Similarity("embed").matrices([drafts], [teacher])[0]
lexical = Similarity("lexical").matrices([drafts], [teacher])[0]
for draft, e, l in zip(drafts, embed[:, 0].tolist(), lexical[:, 0].tolist()):
    print(f"{draft!r:28} embed {e:.3f}   lexical {l:.3f}")
assert abs(embed[0, 0].item() - 1) < 1e-4 and lexical[0, 0].item() == 1.0
assert embed[0, 0] > embed[1, 0] > embed[3, 0]

figure, axes = plt.subplots(1, 2, figsize=(8, 2.6))
for axis, (name, S) in zip(axes, [("embed", embed), ("lexical", lexical)]):
    image = axis.imshow(S.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_yticks(range(len(drafts)), [d.replace("\n", "⏎") for d in drafts], fontsize=8)
    axis.set_xticks([0], ["teacher r¹"])
    axis.set_title(f"S ({name})")
    for k in range(len(drafts)):
        axis.text(0, k, f"{S[k, 0]:.2f}", ha="center", va="center", color="white")
figure.colorbar(image, ax=axes)
save_figure(figure, "05_similarity.png")

# %% [markdown]
# ![similarity heatmaps](figures/05_similarity.png)
#
# A wrong final digit costs the embedding only a few hundredths; the right answer in
# other words scores lowest of all. On number-heavy chunks the semantic signal is
# mostly about wording, so small gaps must be amplified by the vote temperature of
# page 6. `bench/similarity_signal.py` measures how often a right draft outranks a
# wrong one on real toy rollouts.
#
# ## What to log
# `sim/mean`: the mean $S_{km}$ over all forks. A mean near 1 with little spread means
# the drafts are all alike and carry no preference.
#
# ## References
# Reimers & Gurevych, *Sentence-BERT*, 2019 (all-MiniLM-L6-v2); Popović, *chrF:
# character n-gram F-score for automatic MT evaluation*, 2015.
#
# ## Exercises
# 1. Write a similarity that multiplies the embedding cosine by the share of numbers
#    that agree between the two texts, and pass it as `Similarity(callable)`.
# 2. When would `lexical` beat `embed`? When would it fail badly?
