"""Peak GPU memory and step time of OmniOPD in the paper's shapes, with no download.

    python bench/gpu_memory.py [--teacher-layers 28] [--batch-size 8] [--max-new-tokens 512]

Builds, from configs, a student shaped like Qwen2.5-0.5B and a teacher shaped like
Qwen2.5-7B (random weights; bf16 teacher and reference, fp32 student with AdamW), and
a byte-level tokenizer padded to Qwen's 151,936-token vocabulary, then runs two OmniOPD
steps through omniopd.omniopd_loss and omniopd.update and prints the peak memory and
the seconds per step (with --gradient-checkpointing, as the README's GPU preset). Random weights rarely emit EOS, so every rollout runs to
--max-new-tokens: an upper bound for real solutions of that length.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import omniopd  # noqa: E402
import toyworld  # noqa: E402

VOCAB = 151936


def padded_tokenizer():
    """The toy byte-level tokenizer with dummy entries up to Qwen's vocabulary size."""
    from tokenizers import pre_tokenizers
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = toyworld.SPECIAL_TOKENS + symbols
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]
    return Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>",
                          eos_token="<eos>", pad_token="<pad>", padding_side="left")


def qwen_like(hidden, layers, heads, kv_heads, intermediate, dtype, tie):
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate, tie_word_embeddings=tie,
                         max_position_embeddings=4096, pad_token_id=0, eos_token_id=2)
    with torch.device("cuda"):
        return Qwen2ForCausalLM(config).to(dtype)


class LocalTeacher(omniopd.HFTeacher):
    """HFTeacher around an in-memory model (the bench builds models instead of loading them)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.mode, self.temperature, self.max_batch = model, tokenizer, "completion", 1.0, 32
        self.calls = self.failures = self.tokens = 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-layers", type=int, default=28, help="28 = Qwen2.5-7B's depth")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = padded_tokenizer()
    student = qwen_like(896, 24, 14, 2, 4864, torch.float32, True)          # Qwen2.5-0.5B
    student.gradient_checkpointing_enable()                                  # as --gradient-checkpointing does
    reference = qwen_like(896, 24, 14, 2, 4864, torch.bfloat16, True).requires_grad_(False)
    teacher = qwen_like(3584, args.teacher_layers, 28, 4, 18944, torch.bfloat16, False).requires_grad_(False)
    for model in (student, reference, teacher):
        model.generation_config.eos_token_id = 2
    omniopd.fp32_output_head(student)                                        # as omniopd.setup does
    omniopd.fp32_output_head(reference)
    print(f"student {sum(p.numel() for p in student.parameters()) / 1e9:.2f}B params, "
          f"teacher {sum(p.numel() for p in teacher.parameters()) / 1e9:.2f}B params", flush=True)
    cfg = omniopd.Config(student="qwen-like", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         similarity="lexical", entropy_threshold=0.0).resolved()
    run = omniopd.RunState(student, tokenizer, reference, LocalTeacher(teacher, tokenizer),
                           omniopd.Similarity("lexical"), torch.optim.AdamW(student.parameters(), lr=cfg.lr))
    rows = [{"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)} for i in range(args.batch_size)]
    for step in range(2):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        started = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, metrics = omniopd.omniopd_loss(run, omniopd.omniopd_collect(run, rows, cfg), cfg)
        omniopd.update(run, loss, cfg.grad_clip)
        torch.cuda.synchronize()
        print(f"step {step + 1}: {time.time() - started:.1f} s, peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, forks {metrics['forks/count']}, "
              f"rollout length {metrics['rollout/length']:.0f}, loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
