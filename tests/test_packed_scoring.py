"""One forward pass scores the rollout and every draft (omniopd.rollout_and_drafts_forward, issue #10).
Parity with the definition, chunk_logprobs (each draft with its prefix written out) plus response_logits:
the loss and every gradient agree within 1e-5 in fp32."""

import dataclasses

import pytest
import torch

import omniopd
from omniopd_lib import data
from omniopd_lib import models
from omniopd_lib import fastpaths
from omniopd_lib.data import batch_rows
from omniopd_lib.generation import encode_prompts, generate, stop_token_ids
from omniopd_lib.runs import setup

TOLERANCE = 1e-5


def collected(student, teacher, seed=1, **options):
    cfg = omniopd.Config(student=student, teacher=teacher, batch_size=6, seed=seed, similarity="lexical",
                         entropy_threshold=0.0, max_new_tokens=24, chunk_len=6, **options).resolved()
    run = setup(cfg)
    rows = batch_rows(data.load_rows("toy", "train", seed), 0, cfg)
    batch = omniopd.omniopd_collect(run, rows, cfg)
    assert batch.num_forks >= 3
    return run, batch, cfg


def definition_loss(run, batch, cfg):
    """Steps 7-8 computed the plain way: the response once, then every draft with its whole prefix."""
    logits_B_T_V = omniopd.response_logits(run.student, batch.rollout)
    logprobs_F_K, lengths_F_K = omniopd.chunk_logprobs(run.student, batch.drafts, run.tokenizer.pad_token_id)
    chunk = omniopd.chunk_loss(batch.target_F_K, logprobs_F_K, lengths_F_K, cfg.length_norm, cfg.chunk_loss,
                               batch.num_forks)
    return chunk + cfg.kl_beta * omniopd.anchor_term(run, batch.rollout, logits_B_T_V, cfg, batch.num_tokens)


def loss_and_gradients(run, loss_fn, batch, cfg):
    run.student.zero_grad(set_to_none=True)
    loss = loss_fn(run, batch, cfg)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in run.student.named_parameters() if p.grad is not None}


def assert_parity(run, batch, cfg):
    with torch.no_grad():    # the drafts' scores themselves, before any loss
        packed = omniopd.rollout_and_drafts_forward(run.student, batch.rollout, batch.drafts)[1]
        plain = omniopd.chunk_logprobs(run.student, batch.drafts, run.tokenizer.pad_token_id)[0]
    assert (packed - plain).abs().max().item() < TOLERANCE
    loss_plain, grads_plain = loss_and_gradients(run, definition_loss, batch, cfg)
    loss_packed, grads_packed = loss_and_gradients(run, omniopd.omniopd_loss, batch, cfg)
    assert loss_packed == pytest.approx(loss_plain, abs=TOLERANCE)
    assert grads_plain.keys() == grads_packed.keys()
    worst = max((grads_packed[n] - grads_plain[n]).abs().max().item() for n in grads_plain)
    assert worst < TOLERANCE, worst
    assert max(g.abs().max().item() for g in grads_plain.values()) > 1e-3   # the gradients are not all ~0


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_scoring_equals_the_definition_on_the_toy_models(attention):
    run, batch, cfg = collected("toy", "toy")
    run.student.set_attn_implementation(attention)
    with torch.no_grad():   # one update first, so that the anchor has something to measure
        for p in run.student.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    assert_parity(run, batch, cfg)


def test_packed_scoring_equals_the_definition_on_a_bpe_model_with_checkpointing(qwen_like_path):
    run, batch, cfg = collected(qwen_like_path, qwen_like_path, seed=2, gradient_checkpointing=True)
    assert_parity(run, batch, cfg)


def test_a_step_with_no_forks_scores_only_the_rollout():
    run, batch, cfg = collected("toy", "toy", seed=4)
    empty = dataclasses.replace(batch, drafts=omniopd.Drafts([], [], []), target_F_K=torch.zeros(0, 4), num_forks=0)
    logits, logprobs, lengths = omniopd.rollout_and_drafts_forward(run.student, empty.rollout, empty.drafts)
    assert logprobs.numel() == 0 and torch.allclose(logits, omniopd.response_logits(run.student, batch.rollout),
                                                     atol=1e-5)
    loss, metrics = omniopd.omniopd_loss(run, empty, cfg)
    assert metrics["loss/chunk"] == 0.0 and torch.isfinite(loss)


def test_picked_token_logprobs_equal_autograd_through_log_softmax():
    """PickedTokenLogprobs (position slices, a gradient written only where picked) against log_softmax and
    indexing under autograd, with places picked more than once (draft 1 and a fresh draft share column t)
    and more places than one slice holds."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 40, 50)).requires_grad_()
    picked = fastpaths.POSITIONS_AT_ONCE + 61
    row, column, token = torch.randint(3, (picked,)), torch.randint(40, (picked,)), torch.randint(50, (picked,))
    weights = torch.randn(picked)
    expected = torch.log_softmax(logits, -1)[row, column, token]
    (expected * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    got = fastpaths.PickedTokenLogprobs.apply(logits, row, column, token)
    (got * weights).sum().backward()
    assert torch.allclose(got, expected, atol=TOLERANCE)
    assert torch.allclose(logits.grad, expected_grad, atol=TOLERANCE)


def test_n_samples_of_a_prompt_share_one_prefill_and_equal_num_return_sequences(qwen_like_path):
    """generate(n > 1) runs each prompt through the model once and copies its KV cache n times; the tokens are
    those of transformers' own num_return_sequences = n (which runs each prompt n times), drawn from the same
    random stream, with left padding in the batch."""
    from transformers import GenerationConfig
    model, tokenizer = models.load_model(qwen_like_path, "student", torch.device("cpu"))
    prompts = encode_prompts(tokenizer, ["Ann has 3 pens.", "Ben has 12 cats and 4 dogs. How many?"],
                                     omniopd.Config.prompt_template, torch.device("cpu"))
    rows_seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: rows_seen.append(tuple(out.shape[:2])))
    torch.manual_seed(0)
    ours = generate(model, tokenizer, prompts.input_ids, prompts.attention_mask, 10, 1.0, n=3)
    hook.remove()
    width = prompts.input_ids.shape[1]
    assert rows_seen[0] == (2, width - 1), "the prompts, once each"
    assert all(rows == 6 and length == 1 for rows, length in rows_seen[1:]), "then one token at a time, 3 per prompt"
    config = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              num_return_sequences=3, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stop_token_ids(model, tokenizer))
    model.generation_config = GenerationConfig()
    torch.manual_seed(0)
    theirs = model.generate(**prompts, generation_config=config)[:, width:]
    assert torch.equal(ours, theirs)
