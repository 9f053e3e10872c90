"""Are bf16 logits precise enough for the anchor? (issue #15, review item)

Under bf16 autocast the LM head's output is bf16: 8 bits of mantissa, so near logit 20 its steps are
0.125. This computes the anchor KL(π_θ ‖ π_ref) over a sampled rollout and its gradient three ways on the
same tokens and weights, and prints each against fp32 throughout:
  bf16        autocast for the whole forward (what a CUDA run did before this measurement)
  bf16+head32 autocast for the decoder, the LM head in fp32 from the bf16 hidden states
Models: SmolLM2-135M-Instruct (a real pretrained LLM, offline; needs requirements-real.txt) and random
weights in Qwen2.5-0.5B's shapes (V = 151,936). The student is the reference plus a small perturbation,
so the KL is of the size training produces. CPU autocast rounds to bf16 like CUDA's does (the
accumulation order differs).

    python bench/bf16_logits.py            # both models, about 5 minutes on 2 cores
"""

import argparse

import torch
import torch.nn.functional as F

import omniopd
from omniopd_lib import models
import toyworld
from omniopd_lib.generation import positions


def logits_of(model, rollout, precision):
    """Response logits in fp32 (as omniopd keeps them), from a forward pass at the given precision."""
    ids = torch.cat([rollout.prompt_ids_B_P, rollout.response_ids_B_T], 1)
    mask = torch.cat([rollout.prompt_mask_B_P, rollout.response_mask_B_T], 1)
    keep = rollout.response_ids_B_T.shape[1] + 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
        hidden = hidden[:, -keep:]
        if precision == "bf16":
            logits = model.lm_head(hidden)
    if precision != "bf16":
        with torch.autocast("cpu", enabled=False):
            logits = F.linear(hidden.float(), model.lm_head.weight.float())
    return logits[:, :-1].float()


def measure(name, student, reference, tokenizer, batch, length):
    torch.manual_seed(0)
    questions = [r["question"] for r in toyworld.make_problems(batch, "test", 0)]
    rollout = omniopd.sample_rollouts(student, tokenizer, questions, omniopd.Config(max_new_tokens=length))
    results = {}
    for precision in ("fp32", "bf16", "bf16+head32"):
        student.zero_grad(set_to_none=True)
        with torch.no_grad():
            reference_logits = logits_of(reference, rollout, precision)
        logits = logits_of(student, rollout, precision)
        kl = omniopd.anchor_kl(logits, reference_logits, rollout.response_mask_B_T)
        kl.backward()
        grad = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]).double()
        results[precision] = (kl.item(), grad, logits.detach().abs().max().item())
    kl32, grad32, top = results["fp32"]
    tokens = int(rollout.response_mask_B_T.sum())
    print(f"\n{name}: {tokens} generated tokens, largest |logit| {top:.1f}")
    print(f"  {'precision':<12} {'anchor KL':>12} {'KL rel. err':>12} {'grad rel. err':>14} {'grad cosine':>12}")
    for precision, (kl, grad, _) in results.items():
        error = (grad - grad32).norm().item() / grad32.norm().item()
        cosine = F.cosine_similarity(grad, grad32, dim=0).item()
        print(f"  {precision:<12} {kl:12.6f} {abs(kl - kl32) / kl32:12.2%} {error:14.2%} {cosine:12.5f}")


def perturbed_copy(model, scale, seed=0):
    import copy
    student = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * p.std() * torch.randn_like(p))
    return student.train()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--perturbation", type=float, default=0.01, help="student = reference + this × std × noise")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        from omniopd_tools.real_models import smollm2_folder
        reference, tokenizer = models.load_model(str(smollm2_folder()), "student", torch.device("cpu"))
        measure("SmolLM2-135M-Instruct (pretrained)", perturbed_copy(reference, args.perturbation), reference.eval(),
                tokenizer, args.batch, args.length)
    except ImportError as error:
        print(f"SmolLM2 skipped ({error}): pip install -r requirements-real.txt")
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    shape = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                        eos_token_id=2, pad_token_id=0)
    reference = Qwen2ForCausalLM(shape).eval()
    tokenizer = toyworld.build_char_tokenizer()
    measure("random weights, Qwen2.5-0.5B shapes", perturbed_copy(reference, args.perturbation), reference,
            tokenizer, args.batch, args.length)


if __name__ == "__main__":
    main()
