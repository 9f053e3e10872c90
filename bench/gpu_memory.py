"""Peak memory and step time of OmniOPD in the paper's shapes, with no download.

    python bench/gpu_memory.py [--teacher-layers 28] [--batch-size 8] [--max-new-tokens 512]   # one shape
    python bench/gpu_memory.py --table                     # the grid below -> bench/results/memory_cuda.md
    python bench/gpu_memory.py --table --device cpu --student-layers 4 --teacher-layers 2 --length-divisor 4
                                                           # the same grid scaled down -> memory_cpu.md

Builds, from configs, a student shaped like Qwen2.5-0.5B and a teacher shaped like Qwen2.5-7B (random
weights; bf16 teacher, bf16 reference (fp32 on CPU), fp32 student with AdamW), and a byte-level tokenizer padded to Qwen's
151,936-token vocabulary, then runs two OmniOPD steps through omniopd.omniopd_collect, omniopd_loss and
omniopd.update (with gradient checkpointing, as the README's GPU preset) and reports the peak memory and the
seconds of the second step. Random weights rarely emit EOS, so every rollout runs to --max-new-tokens: an upper
bound for real solutions of that length.

--table runs, each in its own process: batch 8 × 512, 16 × 1024 and 8 × 2048 new tokens (each length divided by
--length-divisor), with the teacher on the same device and with the teacher served elsewhere (a loopback server
that echoes text, so only the trainer's own memory and time are counted), and with both scorers: the packed one
pass (rollout_and_drafts_forward) and the definition (every draft with its prefix written out).
Peak memory: the CUDA allocator's peak, or on CPU the process's peak resident set size (models included).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

import omniopd
from omniopd_lib.common import RunState
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import models
from omniopd_lib import teachers
import toyworld
from speed import PeakMemory  # (bench/ is on the path: this script's folder)

ROOT = Path(__file__).resolve().parent.parent

VOCAB = 151936
SHAPES = ((8, 512), (16, 1024), (8, 2048))   # batch × new tokens, as issue #10 asks
KEY_ENV = "GPU_MEMORY_BENCH_KEY"


def padded_tokenizer():
    """The toy byte-level tokenizer with dummy entries up to Qwen's vocabulary size."""
    from tokenizers import pre_tokenizers
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = toyworld.SPECIAL_TOKENS + symbols
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]
    return Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>",
                          eos_token="<eos>", pad_token="<pad>", padding_side="left")


def qwen_like(hidden, layers, heads, kv_heads, intermediate, dtype, tie, device):
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate, tie_word_embeddings=tie,
                         max_position_embeddings=4096, pad_token_id=0, eos_token_id=2)
    with device:
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = 2
    return model


class LocalTeacher(HFTeacher):
    """HFTeacher around an in-memory model (the bench builds models instead of loading them)."""

    def __init__(self, model, tokenizer):
        # on a GPU a bigger batch of continuations fits beside a 7B teacher's KV cache (8 GB for 128 × 1,100 tokens)
        batch = 128 if model.device.type == "cuda" else 32
        self.model, self.tokenizer, self.mode, self.temperature, self.max_batch = model, tokenizer, "completion", 1.0, batch
        self.calls = self.failures = self.tokens = 0
        self.shares_tokenizer = True   # as runs.setup finds: the same tokenizer, so L teacher tokens


def definition_scorer(model, rollout, drafts):
    """What omniopd_loss scored with before the packed pass: the response, then every draft with its prefix."""
    logits = omniopd.response_logits(model, rollout)
    if not drafts.chunk_ids:
        return logits, torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
    return logits, *omniopd.chunk_logprobs(model, drafts, pad_id=0)


def one_run(args) -> dict:
    """Two OmniOPD steps in one shape; the figures of the second (the first also pays for warm-up)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    tokenizer = padded_tokenizer()
    student = qwen_like(896, args.student_layers, 14, 2, 4864, torch.float32, True, device)   # Qwen2.5-0.5B
    student.gradient_checkpointing_enable()                                                   # as the GPU preset
    # on CPU, a bf16 matmul on a strided input (the response's hidden states, as logits_to_keep slices them) takes
    # a slow path: 26 s against 0.66 s for the whole tensor, measured on the teacher's head; so fp32 there
    reference_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reference = qwen_like(896, args.student_layers, 14, 2, 4864, reference_dtype, True, device).requires_grad_(False)
    models.fp32_output_head(student)                                                         # as runs.setup
    models.fp32_output_head(reference)
    if args.teacher == "served":
        from omniopd_tools.serve import start_in_thread
        server = start_in_thread("echo")
        os.environ[KEY_ENV] = "not-a-secret"
        teacher = teachers.OpenAITeacher("echo", f"http://127.0.0.1:{server.server_address[1]}/v1", KEY_ENV,
                                        "completion", concurrency=64)
    else:
        teacher = LocalTeacher(qwen_like(3584, args.teacher_layers, 28, 4, 18944, torch.bfloat16, False,
                                         device).requires_grad_(False), tokenizer)               # Qwen2.5-7B
    if args.scorer == "definition":
        omniopd.rollout_and_drafts_forward = definition_scorer
    cfg = omniopd.Config(student="qwen-like", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         similarity="lexical", entropy_threshold=0.0, objective=args.objective).resolved()
    collect, loss_function = omniopd.method_functions(cfg)
    run = RunState(student, tokenizer, reference, teacher, Similarity("lexical"),
                           torch.optim.AdamW(student.parameters(), lr=cfg.lr))
    rows = [{"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)} for i in range(args.batch_size)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    result = {}
    for step in range(args.steps):
        with PeakMemory(device) as peak:
            started = time.perf_counter()
            try:
                with autocast:
                    batch = collect(run, rows, cfg)
                    with run.clock("loss"):
                        loss, metrics = loss_function(run, batch, cfg)
                with run.clock("backward"):
                    omniopd.update(run, loss, cfg.grad_clip)
            except torch.OutOfMemoryError:
                return {"out_of_memory": True}
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        total_gib = peak.start / 2**30 + peak.gib     # the weights and optimizer state included
        forks = batch.num_forks
        stages = {k[5:]: v for k, v in run.clock.take().items() if k.startswith("time/")}
        result = {"seconds": seconds, "peak_gib": total_gib, "step_gib": peak.gib, "forks": forks,
                  "length": batch.metrics.get("rollout/length", 0.0), "stages": stages}
        print(f"step {step + 1}: {seconds:.1f} s, peak memory {total_gib:.1f} GiB ({peak.gib:.2f} above the start), "
              f"forks or chunks {forks}, rollout length {result['length']:.0f}, loss {loss.item():.4f}, "
              f"stages {' '.join(f'{k} {v:.1f}' for k, v in stages.items())}", file=sys.stderr, flush=True)
    return result


def table(args):
    """Every shape × teacher placement × scorer, each in a fresh process, into bench/results/memory_<device>.md."""
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    lines = [f"# Peak memory and seconds per OmniOPD step ({name})", "",
             f"`python bench/gpu_memory.py {' '.join(sys.argv[1:])}`", "",
             f"Student: Qwen2.5-0.5B's shape with {args.student_layers} of its 24 layers (fp32, AdamW, gradient "
             f"checkpointing); reference ({'bf16' if device.type == 'cuda' else 'fp32 on CPU'}) and teacher (bf16): "
             f"the student's shape and Qwen2.5-7B's with {args.teacher_layers} of its 28 layers; vocabulary 151,936; K = 4 drafts of L = 16, M = 4. Lengths: issue #10's shapes divided "
             f"by {args.length_divisor}. Served: the teacher is a loopback server that echoes text, so only the "
             "trainer's memory and time count. The second of two steps; random weights, so every rollout runs to "
             "its full length.", "",
             "Peak: the whole process (models and optimizer state included); step: the peak above what was "
             "resident when the step began (activations, logits, KV caches, gradients).", "",
             "| batch × new tokens | teacher | peak GiB, definition scorer | peak GiB, packed | ratio | "
             "step GiB, definition | step GiB, packed | ratio | s/step, definition | s/step, packed | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch_size, new_tokens in SHAPES:
        new_tokens //= args.length_divisor
        for placement in ("same device", "served"):
            figures = {}
            for scorer in ("definition", "packed"):
                command = [sys.executable, __file__, "--device", args.device, "--batch-size", str(batch_size),
                           "--max-new-tokens", str(new_tokens), "--student-layers", str(args.student_layers),
                           "--teacher-layers", str(args.teacher_layers), "--scorer", scorer, "--json",
                           "--teacher", "served" if placement == "served" else "local"]
                done = subprocess.run(command, capture_output=True, text=True)
                figures[scorer] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                                   else {"failed": done.stderr.strip().splitlines()[-1:]})
                print(batch_size, new_tokens, placement, scorer, figures[scorer], flush=True)
            lines.append(f"| {batch_size} × {new_tokens} | {placement} | " + " | ".join(cells(figures)) + " |")
    out = ROOT / "bench" / "results" / f"memory_{device.type}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def check(args):
    """The prepared GPU check (bench/gpu_check.sh): Qwen2.5-0.5B/7B shapes at 8 × 512 and 16 × 1024 for both
    readings, packed scorer, teacher on the same device, each in its own process under a time limit, into
    bench/results/gpu.md (or --results)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    lines = [f"# The GPU check ({name}, {time.strftime('%Y-%m-%d')})", "",
             f"`bash bench/gpu_check.sh` → `python bench/gpu_memory.py {' '.join(sys.argv[1:])}`. Student: "
             f"Qwen2.5-0.5B's shape ({args.student_layers} layers, fp32, AdamW, gradient checkpointing), reference "
             f"bf16, teacher Qwen2.5-7B's shape ({args.teacher_layers} layers, bf16) on the same GPU; random weights, "
             "so every rollout runs to its full length; vocabulary 151,936; φ lexical. The drafts reading: K = 4, "
             "L = 16, M = 4, B = 4 forks per rollout; the audit reading: its public defaults (M = 10 chunks of "
             f"C = 50, N = 10 continuations). Figures of the last of {args.steps} step(s) "
             f"(a first step also pays for warm-up). Lengths divided by {args.length_divisor}.", "",
             "| batch × new tokens | objective | peak GiB | step GiB | s/step | forks or chunks | stage seconds |",
             "|---|---|---|---|---|---|---|"]
    for batch_size, new_tokens in SHAPES[:2]:
        new_tokens //= args.length_divisor
        for objective in ("drafts", "audit"):
            command = [sys.executable, __file__, "--device", args.device, "--batch-size", str(batch_size),
                       "--max-new-tokens", str(new_tokens), "--student-layers", str(args.student_layers),
                       "--teacher-layers", str(args.teacher_layers), "--objective", objective,
                       "--steps", str(args.steps), "--json"]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.run_seconds)
                result = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                          else {"failed": (done.stderr.strip().splitlines() or ["?"])[-1][:160]})
            except subprocess.TimeoutExpired:
                result = {"failed": f"over {args.run_seconds} s"}
            print(batch_size, new_tokens, objective, result, flush=True)
            if "seconds" in result:
                stages = ", ".join(f"{k} {v:.1f}" for k, v in result["stages"].items())
                lines.append(f"| {batch_size} × {new_tokens} | {objective} | {result['peak_gib']:.1f} | "
                             f"{result['step_gib']:.1f} | {result['seconds']:.1f} | {result['forks']} | {stages} |")
            else:
                lines.append(f"| {batch_size} × {new_tokens} | {objective} | "
                             f"{'out of memory' if 'out_of_memory' in result else result['failed']} | | | | |")
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            Path(args.results).write_text("\n".join(lines) + "\n")   # after each run: a cut-off check keeps it
    print("\n".join(lines))


def cells(figures):
    """Table cells for one row: each scorer's total peak, step peak and time, and packed / definition."""
    def shown(result, key, fmt):
        if "out_of_memory" in result:
            return "out of memory"
        return format(result[key], fmt) if key in result else "failed"
    before, after = figures["definition"], figures["packed"]
    ratio = lambda key: (f"{after[key] / before[key]:.2f}" if key in before and key in after else "")  # noqa: E731
    return [cell for key, fmt in (("peak_gib", ".2f"), ("step_gib", ".2f"), ("seconds", ".1f"))
            for cell in (shown(before, key, fmt), shown(after, key, fmt), ratio(key))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--student-layers", type=int, default=24, help="24 = Qwen2.5-0.5B's depth")
    parser.add_argument("--teacher-layers", type=int, default=28, help="28 = Qwen2.5-7B's depth")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--teacher", choices=["local", "served"], default="local")
    parser.add_argument("--scorer", choices=["packed", "definition"], default="packed")
    parser.add_argument("--table", action="store_true", help="the whole grid, written to bench/results")
    parser.add_argument("--length-divisor", type=int, default=1, help="--table: divide every length by this")
    parser.add_argument("--objective", choices=["drafts", "audit"], default="drafts")
    parser.add_argument("--steps", type=int, default=2, help="steps per run; the last one's figures count")
    parser.add_argument("--check", action="store_true", help="the GPU check's grid (both readings) -> --results")
    parser.add_argument("--run-seconds", type=int, default=150, help="--check: time limit of each run")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "gpu.md"))
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)   # internal: one run's figures
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 2)
    if args.check:
        check(args)
    elif args.table:
        table(args)
    elif args.json:
        print(json.dumps(one_run(args)))
    else:
        one_run(args)


if __name__ == "__main__":
    main()
