"""Fast paths, each tested equal to the definition it replaces in omniopd.py (tests/test_packed_scoring.py,
tests/test_correctness.py): the rollout and every draft scored in one packed forward pass, log-probabilities of
picked tokens and the full-vocabulary KLs with a single V-wide gradient, vocabulary-wide work a few positions at
a time; and the entropy signal the schedulers read (recorded while sampling, optionally smoothed)."""

import torch
import torch.nn.functional as F

from omniopd_lib.generation import positions


POSITIONS_AT_ONCE = 512   # vocabulary-wide work is done this many positions at a time


class PickedTokenLogprobs(torch.autograd.Function):
    """log π(token_n | ·) = z_{token_n} - logsumexp_v z_v at N picked (row, column) places of a B × S × V logits
    tensor, a few places at a time. Indexing and logsumexp under autograd would each leave a B × S × V gradient
    behind; this writes one, ∂/∂z_v = Σ over the picks at a place of g_n (1[v = token_n] - softmax(z)_v), with
    each place written once (an accumulating write of V-wide rows is threaded, so its sum order, and the
    last bits of the result, would change from run to run)."""

    @staticmethod
    def forward(ctx, logits_B_S_V, row_N, column_N, token_N):
        length = logits_B_S_V.shape[1]
        places_U, pick_to_place_N = torch.unique(row_N * length + column_N, return_inverse=True)
        logsumexp_U = torch.empty(places_U.shape[0], device=logits_B_S_V.device)
        for start in range(0, places_U.shape[0], POSITIONS_AT_ONCE):
            at = places_U[start:start + POSITIONS_AT_ONCE]
            logsumexp_U[start:start + POSITIONS_AT_ONCE] = torch.logsumexp(
                logits_B_S_V[at // length, at % length].float(), -1)
        ctx.save_for_backward(logits_B_S_V, row_N, column_N, token_N, places_U, pick_to_place_N, logsumexp_U)
        return logits_B_S_V[row_N, column_N, token_N].float() - logsumexp_U[pick_to_place_N]

    @staticmethod
    def backward(ctx, grad_N):
        logits_B_S_V, row_N, column_N, token_N, places_U, pick_to_place_N, logsumexp_U = ctx.saved_tensors
        (_, length, vocabulary), grad_N = logits_B_S_V.shape, grad_N.float()
        grad_B_S_V = torch.zeros(logits_B_S_V.shape, dtype=logits_B_S_V.dtype, device=logits_B_S_V.device)
        grad_U = torch.zeros_like(logsumexp_U).index_add_(0, pick_to_place_N, grad_N)   # Σ g_n at each place
        for start in range(0, places_U.shape[0], POSITIONS_AT_ONCE):
            at, chunk = places_U[start:start + POSITIONS_AT_ONCE], slice(start, start + POSITIONS_AT_ONCE)
            softmax_u_V = (logits_B_S_V[at // length, at % length].float() - logsumexp_U[chunk, None]).exp_()
            grad_B_S_V[at // length, at % length] = softmax_u_V.mul_(-grad_U[chunk, None]).to(grad_B_S_V.dtype)
        flat_N = (row_N * length + column_N) * vocabulary + token_N
        grad_B_S_V.view(-1).index_add_(0, flat_N, grad_N.to(grad_B_S_V.dtype))   # the 1[v = token_n] terms
        return grad_B_S_V, None, None, None


def a_few_positions_at_a_time(logits_B_T_V):
    """Index pairs (b, t:t + POSITIONS_AT_ONCE) covering B × T: vocabulary-wide work one slice at a time, on
    the logits as they are (a slice such as logits[:, :-1] would be copied whole by a flatten)."""
    batch, length = logits_B_T_V.shape[:2]
    return [(b, slice(start, start + POSITIONS_AT_ONCE)) for b in range(batch) for start in range(0, length, POSITIONS_AT_ONCE)]


class FullVocabularyKL(torch.autograd.Function):
    """KL(π_θ ‖ π_ref) = Σ_v p_v (log p_v - log q_v) per position, p = softmax(z), q = softmax(r), computed a few
    positions at a time. Autograd would keep log p, p, and their product, several B × T × V tensors; this keeps
    only the logits and recomputes the rest in backward, where ∂KL/∂z_v = p_v (log p_v - log q_v - KL)."""

    @staticmethod
    def forward(ctx, logits_B_T_V, reference_B_T_V):
        kl_B_T = kl_per_position(logits_B_T_V, reference_B_T_V, reference_first=False)
        ctx.save_for_backward(logits_B_T_V, reference_B_T_V, kl_B_T)
        return kl_B_T

    @staticmethod
    def backward(ctx, grad_kl_B_T):
        logits_B_T_V, reference_B_T_V, kl_B_T = ctx.saved_tensors
        grad_B_T_V = torch.empty(logits_B_T_V.shape, dtype=logits_B_T_V.dtype, device=logits_B_T_V.device)
        for at in a_few_positions_at_a_time(logits_B_T_V):
            logp, logq = F.log_softmax(logits_B_T_V[at].float(), -1), F.log_softmax(reference_B_T_V[at].float(), -1)
            gap = torch.where(logp > -float("inf"), logp - logq - kl_B_T[at][:, None], torch.zeros_like(logp))
            grad_B_T_V[at] = (grad_kl_B_T[at][:, None] * logp.exp() * gap).to(grad_B_T_V.dtype)
        return grad_B_T_V, None


class ReferenceFirstKL(torch.autograd.Function):
    """KL(π_ref ‖ π_θ) = Σ_v q_v (log q_v - log p_v) per position, p = softmax(z), q = softmax(r): the audit
    reading's anchor (the forward direction), a few positions at a time as FullVocabularyKL, with
    ∂KL/∂z_v = p_v - q_v."""

    @staticmethod
    def forward(ctx, logits_B_T_V, reference_B_T_V):
        ctx.save_for_backward(logits_B_T_V, reference_B_T_V)
        return kl_per_position(logits_B_T_V, reference_B_T_V, reference_first=True)

    @staticmethod
    def backward(ctx, grad_kl_B_T):
        logits_B_T_V, reference_B_T_V = ctx.saved_tensors
        grad_B_T_V = torch.empty(logits_B_T_V.shape, dtype=logits_B_T_V.dtype, device=logits_B_T_V.device)
        for at in a_few_positions_at_a_time(logits_B_T_V):
            p, q = F.softmax(logits_B_T_V[at].float(), -1), F.softmax(reference_B_T_V[at].float(), -1)
            grad_B_T_V[at] = (grad_kl_B_T[at][:, None] * (p - q)).to(grad_B_T_V.dtype)
        return grad_B_T_V, None


def kl_per_position(logits_B_T_V, reference_B_T_V, reference_first: bool):
    """KL(π_θ ‖ π_ref) = Σ_v p_v (log p_v - log q_v) per position, or with reference_first KL(π_ref ‖ π_θ) =
    Σ_v q_v (log q_v - log p_v), a few positions at a time, with 0 · log(0 / x) = 0 (a token the first
    distribution rules out adds nothing, even where the other rules it out too)."""
    kl_B_T = torch.empty(logits_B_T_V.shape[:2], device=logits_B_T_V.device)
    for at in a_few_positions_at_a_time(logits_B_T_V):
        logp, logq = F.log_softmax(logits_B_T_V[at].float(), -1), F.log_softmax(reference_B_T_V[at].float(), -1)
        kl_B_T[at] = (xlogratio(logq, logp) if reference_first else xlogratio(logp, logq)).sum(-1)
    return kl_B_T


def xlogratio(logp, logq):
    """p (log p - log q) per entry, 0 where p = 0: a token both models rule out (logit -inf, as a masked
    vocabulary has) adds nothing instead of 0 · (-inf + inf) = NaN."""
    return torch.where(logp > -float("inf"), logp.exp() * (logp - logq), torch.zeros_like(logp))


def packed_scoring_applies(model, rollout, drafts) -> bool:
    """Whether packed_rollout_and_drafts gives the definition's numbers for this model: it needs a custom 4D
    mask (SDPA or eager attention; flash attention takes none), forks to place the drafts, and no attention
    window narrower than the packed rows (a custom mask is passed through as it is, so a sliding-window layer
    would attend past its window)."""
    longest = rollout.prompt_ids_B_P.shape[1] + rollout.response_ids_B_T.shape[1] + max(
        (len(c) for chunks in drafts.chunk_ids for c in chunks), default=0)
    return (model.config._attn_implementation in ("sdpa", "eager") and bool(drafts.forks or not drafts.chunk_ids)
            and sliding_window_of(model.config) >= longest)


def packed_rollout_and_drafts(model, rollout, drafts):
    """Steps 1, 3 and 8 in one forward pass: the response y and, packed after it in the same row, every fresh
    draft of every fork of that rollout. A draft token attends to x, y_<t and its own chunk so far (a 4D
    attention mask), at positions continuing from t, so it gets exactly the score chunk_logprobs gives it with
    the prefix written out, while the prefix is computed once per rollout instead of once per draft. Draft 1,
    y_{t:t+|c|}, is read off the response's own logits, and so is every fresh draft's first token (all are
    scored by π_θ(·|x, y_<t)). Returns the response logits_B_T_V (for the anchor), ℓ_F_K and |c|_F_K."""
    prompt_B_P, response_B_T = rollout.prompt_ids_B_P, rollout.response_ids_B_T
    (B, P), T, device = prompt_B_P.shape, response_B_T.shape[1], response_B_T.device
    width = P + T
    real_B_W = torch.cat([rollout.prompt_mask_B_P, rollout.response_mask_B_T], 1).bool()
    # where each fresh draft goes: row b, starting column; every block is as wide as the longest chunk
    block = max((len(c) for chunks in drafts.chunk_ids for c in chunks[1:]), default=0)
    blocks_by_row = [[] for _ in range(B)]
    for f, (b, t) in enumerate(drafts.forks):
        for k in range(1, len(drafts.chunk_ids[f])):
            blocks_by_row[b].append((f, k, t))
    extra = block * max((len(row) for row in blocks_by_row), default=0)
    ids_B_S = torch.full((B, width + extra), 0, dtype=torch.long, device=device)
    ids_B_S[:, :width] = torch.cat([prompt_B_P, response_B_T], 1)
    position_B_S = torch.zeros_like(ids_B_S)
    position_B_S[:, :width] = positions(real_B_W.long())
    # allowed_B_S_S[b, q, k]: may the token in column q attend to column k
    allowed_B_S_S = torch.zeros(B, width + extra, width + extra, dtype=torch.bool, device=device)
    allowed_B_S_S[:, :width, :width] = torch.ones(width, width, dtype=torch.bool, device=device).tril() & real_B_W[:, None]
    # a draft token's score needs the logits of the token before it: (row, kept column, token, draft index)
    rows, columns, tokens, targets = [], [], [], []
    for b, row_blocks in enumerate(blocks_by_row):
        prompt_length = int(rollout.prompt_mask_B_P[b].sum())
        for i, (f, k, t) in enumerate(row_blocks):
            chunk, start = drafts.chunk_ids[f][k], width + i * block
            n = len(chunk)
            ids_B_S[b, start:start + n] = torch.tensor(chunk, device=device)
            position_B_S[b, start:start + n] = prompt_length + t + torch.arange(n, device=device)
            allowed_B_S_S[b, start:start + n, :P] = rollout.prompt_mask_B_P[b].bool()
            allowed_B_S_S[b, start:start + n, P:P + t] = True
            allowed_B_S_S[b, start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            # token 0 is scored by the response logits at t; token j by the block's column j - 1
            rows += [b] * n
            columns += [t] + [T + 1 + i * block + j for j in range(n - 1)]
            tokens += chunk
            targets += [f * len(drafts.chunk_ids[f]) + k] * n
    for f, (b, t) in enumerate(drafts.forks):   # draft 1 is what the student wrote: y_t .. y_{t+|c|-1}
        n = len(drafts.chunk_ids[f][0])
        rows += [b] * n
        columns += list(range(t, t + n))
        tokens += response_B_T[b, t:t + n].tolist()
        targets += [f * len(drafts.chunk_ids[f])] * n
    allowed_B_S_S |= torch.eye(width + extra, dtype=torch.bool, device=device)  # no row attends to nothing
    logits = model(input_ids=ids_B_S, attention_mask=attention_bias(allowed_B_S_S, model), position_ids=position_B_S,
                   logits_to_keep=T + 1 + extra).logits.float()
    num_forks = len(drafts.chunk_ids)
    num_drafts = len(drafts.chunk_ids[0]) if num_forks else 0
    lengths_F_K = torch.tensor([[len(c) for c in chunks] for chunks in drafts.chunk_ids], device=device).view(
        num_forks, num_drafts)
    logprobs_F_K = torch.zeros(num_forks * num_drafts, device=device)
    if rows:
        token_logprobs = PickedTokenLogprobs.apply(logits, *(torch.tensor(x, device=device) for x in (rows, columns, tokens)))
        logprobs_F_K = logprobs_F_K.index_add(0, torch.tensor(targets, device=device), token_logprobs)
    return logits[:, :T], logprobs_F_K.view(num_forks, num_drafts), lengths_F_K


def sliding_window_of(config) -> float:
    """The narrowest attention window of any layer (Mistral, Gemma-2/3, Qwen2 with use_sliding_window), or inf
    when every layer sees the whole sequence."""
    config = getattr(config, "text_config", None) or config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    slides = (any("sliding" in kind for kind in layer_types) if layer_types
              else getattr(config, "use_sliding_window", True))
    return window if window and slides else float("inf")


def attention_bias(allowed_B_S_S, model):
    """A custom 4D attention mask as the model's attention takes it: boolean for SDPA, additive for eager."""
    if model.config._attn_implementation == "sdpa":
        return allowed_B_S_S[:, None]
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed_B_S_S.shape, dtype=dtype, device=allowed_B_S_S.device).masked_fill(
        ~allowed_B_S_S, torch.finfo(dtype).min)[:, None]


class EntropyRecorder:
    """A logits processor that keeps H_t = -Σ_v π_θ(v|x, y_<t) log π_θ(v|x, y_<t) of every generation step.
    generate() applies it before the temperature, so it sees π_θ itself, and the rollout needs no second
    forward pass to find its forks."""

    def __init__(self):
        self.steps = []

    def __call__(self, input_ids, scores):
        self.steps.append(entropy_of(scores))
        return scores


def entropy_of(logits_N_V):
    """H = -Σ_v p log p per row."""
    logp_N_V = F.log_softmax(logits_N_V.float(), dim=-1)
    return -(logp_N_V.exp() * logp_N_V).sum(-1)


def token_logprobs_and_entropy(logits_B_T_V, tokens_B_T):
    """log π_θ(y_t | x, y_<t), with gradient, and H_t = -Σ_v π_θ(v | x, y_<t) log π_θ(v | x, y_<t) without (a metric and
    the scheduler's signal), computed a few positions at a time: no second B × T × V tensor."""
    logprobs_B_T = token_logprobs(logits_B_T_V, tokens_B_T)
    entropy_B_T = torch.empty(tokens_B_T.shape, device=logits_B_T_V.device)
    with torch.no_grad():
        for at in a_few_positions_at_a_time(logits_B_T_V):
            entropy_B_T[at] = entropy_of(logits_B_T_V[at])
    return logprobs_B_T, entropy_B_T


def token_logprobs(logits_B_T_V, tokens_B_T):
    """log π_θ(y_t | x, y_<t) = z_{y_t} - logsumexp_v z_v: no V-wide tensor of log-probabilities."""
    return logits_B_T_V.gather(-1, tokens_B_T.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits_B_T_V, -1)
