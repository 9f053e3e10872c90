"""Where a step's time and memory go (issue #10), every figure a ratio to a baseline measured in the same run.

    pip install -r bench/requirements.txt       # TRL, for the GKDTrainer comparison only
    python bench/speed.py                        # CPU: about 10 minutes on 2 cores -> bench/results/speed.md
    python bench/speed.py --device cuda          # on a GPU machine (peak memory from the CUDA allocator)

1. Scoring: the loss's forward and backward with every draft written out with its prefix
   (response_logits + chunk_logprobs, the definition) against one packed pass per rollout
   (rollout_and_drafts_forward): forward tokens, time and peak memory, at F·K = 64 drafts of
   L = 16 on prefixes of 256 tokens and more.
1b. The anchor's full-vocabulary KL: autograd through the formula against FullVocabularyKL.
2. A whole OmniOPD step against a whole OPD step on the toy comparison's shapes, with the stage profile.
3. The OmniOPD step as B, K, M and L double: the fitted exponent of each.
4. Our OPD step against TRL's GKDTrainer (lmbda 1: on-policy; beta 1: reverse KL) on the same student,
   teacher, prompts and generation length.
5. The teacher's bill (issue #25): the same forks' prefixes (SmolLM2-135M-Instruct's own rollouts on chain_sum)
   sent to llama.cpp's server serving SmolLM2, and to a loopback server that honours `n`, the way the code did
   before (one request per continuation, every request of a step at once) and as now (one request with n = M
   per prefix, a rollout's nested prefixes in order): requests, prompt tokens billed, cached prompt tokens and
   teacher wall time per step. Then the toy step again with an API teacher, whose requests overlap drafting.
Times are min and median of --repeats runs. CPU peak memory is the process's peak resident set size,
reset before each measurement (/proc/self/clear_refs), minus what was resident before it.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
from omniopd_lib import data  # noqa: E402
from omniopd_lib import models  # noqa: E402
from omniopd_lib import teachers  # noqa: E402
import toyworld  # noqa: E402
from omniopd_lib.data import batch_rows
from omniopd_lib.fastpaths import FullVocabularyKL
from omniopd_lib.runs import setup

LINES = []


def say(line=""):
    print(line, flush=True)
    LINES.append(line)


class PeakMemory:
    """Peak memory of the code inside `with`, above what was in use when it started (GiB)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")   # resets the peak resident set size
            self.start = resident("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.gib = (torch.cuda.max_memory_allocated() - self.start) / 2**30
        else:
            self.gib = (resident("VmHWM") - self.start) / 2**30


def resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def timed(function, repeats):
    """(min, median) seconds of `repeats` calls, after one call to warm up."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return min(seconds), statistics.median(seconds)


# 1. Scoring ------------------------------------------------------------------------------------------

def scoring_setup(device):
    """Random weights and tokens in a mid-sized shape: what matters here is sequence lengths, not values.
    Returns {scorer name: function}, the forward token counts, and a description."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32768, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    model = Qwen2ForCausalLM(config).to(device)
    rollouts, prompt, response, forks_per_rollout, K, L = 4, 192, 160, 4, 4, 16
    prompt_ids = torch.randint(10, 32000, (rollouts, prompt), device=device)
    response_ids = torch.randint(10, 32000, (rollouts, response), device=device)
    rollout = omniopd.Rollout(prompt_ids, torch.ones_like(prompt_ids), response_ids, torch.ones_like(response_ids))
    forks = [(b, 64 + 16 * i) for b in range(rollouts) for i in range(forks_per_rollout)]   # prefixes 256..304
    chunks = [[response_ids[b, t:t + L].tolist()] + [torch.randint(10, 32000, (L,)).tolist() for _ in range(K - 1)]
              for b, t in forks]
    drafts = omniopd.Drafts([prompt_ids[b].tolist() + response_ids[b, :t].tolist() for b, t in forks], chunks, forks)
    target = torch.full((len(forks), K), 1 / K, device=device)

    def definition():
        model.zero_grad(set_to_none=True)
        logits = omniopd.response_logits(model, rollout)
        logprobs, lengths = omniopd.chunk_logprobs(model, drafts, 0)
        (omniopd.chunk_loss(target, logprobs, lengths) + logits.logsumexp(-1).mean() * 1e-3).backward()

    def packed():
        model.zero_grad(set_to_none=True)
        logits, logprobs, lengths = omniopd.rollout_and_drafts_forward(model, rollout, drafts)
        (omniopd.chunk_loss(target, logprobs, lengths) + logits.logsumexp(-1).mean() * 1e-3).backward()

    tokens = {"definition (prefix written out per draft)": rollouts * (prompt + response) + sum(
                  len(p) + L for p in drafts.prefix_ids for _ in range(K)),
              "packed, one pass": rollouts * (prompt + response + forks_per_rollout * (K - 1) * L)}
    about = (f"F·K = {len(forks) * K} drafts of L = {L} on prefixes of 256-304 tokens ({rollouts} rollouts of "
             f"{prompt} + {response} tokens; Qwen2 4 layers × 256, V = 32,768; forward + backward)")
    return {"definition (prefix written out per draft)": definition, "packed, one pass": packed}, tokens, about


def memory_in_own_process(part, name, device) -> float:
    """Peak memory of one call of a variant, in a fresh process: in a process that ran the other variant
    first, the allocator would hand back memory it kept, and the second would look free."""
    import json
    import subprocess
    done = subprocess.run([sys.executable, __file__, "--device", device.type, "--memory-of", f"{part}:{name}"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["gib"]


def scoring(args, device):
    scorers, tokens, about = scoring_setup(device)
    results = {name: (*timed(function, args.repeats), memory_in_own_process("scoring", name, device))
               for name, function in scorers.items()}
    say(f"## 1. Scoring: {about}")
    say()
    say("| scorer | forward tokens | ratio | time min / median (s) | ratio | peak memory (GiB) | ratio |")
    say("|---|---|---|---|---|---|---|")
    base, base_tokens = results["definition (prefix written out per draft)"], tokens["definition (prefix written out per draft)"]
    for name, (fastest, median, gib) in results.items():
        say(f"| {name} | {tokens[name]:,} | {tokens[name] / base_tokens:.2f} | {fastest:.3f} / {median:.3f} | "
            f"{median / base[1]:.2f} | {gib:.3f} | {gib / base[2]:.2f} |")
    say(f"\nPacked: {base_tokens / tokens['packed, one pass']:.1f}× fewer forward tokens, "
        f"{base[1] / results['packed, one pass'][1]:.1f}× faster, "
        f"{base[2] / max(results['packed, one pass'][2], 1e-9):.1f}× less peak memory.")


def anchor_setup(device):
    """The anchor's full-vocabulary KL and its backward on 4 × 512 positions, V = 32,768 (fp32 logits, 256 MiB
    each): autograd through the formula, as omniopd.py computed it before, against FullVocabularyKL."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    logits = torch.randn(4, 512, 32768, device=device, requires_grad=True)
    reference = torch.randn(4, 512, 32768, device=device)

    def formula():
        logits.grad = None
        logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(reference, -1)
        (logp.exp() * (logp - ref_logp)).sum(-1).mean().backward()

    def lean():
        logits.grad = None
        FullVocabularyKL.apply(logits, reference).mean().backward()
    return {"autograd through the formula (before)": formula, "FullVocabularyKL (now)": lean}


def anchor(args, device):
    variants = anchor_setup(device)
    results = {name: (*timed(function, args.repeats), memory_in_own_process("anchor", name, device))
               for name, function in variants.items()}
    say("\n## 1b. The anchor's full-vocabulary KL, forward and backward, 4 × 512 positions, V = 32,768")
    say()
    say("| computed by | time min / median (s) | ratio | peak memory above the logits (GiB) | ratio |")
    say("|---|---|---|---|---|")
    base = results["autograd through the formula (before)"]
    for name, (fastest, median, gib) in results.items():
        say(f"| {name} | {fastest:.3f} / {median:.3f} | {median / base[1]:.2f} | {gib:.3f} | {gib / base[2]:.2f} |")


# 2-3. Whole steps ------------------------------------------------------------------------------------------

def toy_run(device, **options):
    options = {"similarity": "embed", **options}
    cfg = omniopd.Config(eval_size=0, out="/tmp/omniopd-speed", device=device.type,
                         **{**toyworld.world_options("toy"), **options}).resolved()
    run = setup(cfg)
    rows = data.load_rows("toy", "train", 0)
    return run, rows, cfg


def step_seconds(run, rows, cfg, repeats):
    """(min, median) of whole steps (collect, loss, backward, update) and the median stage profile."""
    collect, loss_fn = omniopd.method_functions(cfg)
    profiles = []

    def one_step():
        batch = collect(run, batch_rows(rows, run.step, cfg), cfg)
        with run.clock("loss"):
            loss, _ = loss_fn(run, batch, cfg)
        with run.clock("backward"):
            omniopd.update(run, loss, cfg.grad_clip)
        run.step += 1
        profiles.append(run.clock.take())
    fastest, median = timed(one_step, repeats)
    stages = sorted({k for p in profiles for k in p})
    return fastest, median, {k: statistics.median(p.get(k, 0.0) for p in profiles) for k in stages}


def whole_steps(args, device):
    say("\n## 2. A whole step on the toy comparison's shapes (batch 16, rollouts up to 48 tokens, K = M = 4, L = 16)")
    say()
    say("| method | step min / median (s) | ratio to OPD | stage medians (s) |")
    say("|---|---|---|---|")
    results = {}
    for name, options in (("OPD, sampled-token", {"method": "opd"}), ("OmniOPD", {})):
        run, rows, cfg = toy_run(device, **options)
        results[name] = step_seconds(run, rows, cfg, args.repeats)
    base = results["OPD, sampled-token"][1]
    for name, (fastest, median, stages) in results.items():
        say(f"| {name} | {fastest:.3f} / {median:.3f} | {median / base:.2f} | {profile(stages)} |")

    say("\n## 3. The OmniOPD step as B, K, M and L double (exponent = log2 of the time ratio; 1 = linear)")
    say()
    say("| doubled | step median (s) | ratio to base | exponent |")
    say("|---|---|---|---|")
    base_options = {"batch_size": 8, "num_drafts": 4, "teacher_samples": 4, "chunk_len": 8, "fork_gap": 8}
    run, rows, cfg = toy_run(device, **base_options)
    base = step_seconds(run, rows, cfg, args.repeats)[1]
    say(f"| none (B 8, K 4, M 4, L 8; fork gap 8 throughout) | {base:.3f} | 1.00 | |")
    for field, label in (("batch_size", "B"), ("num_drafts", "K"), ("teacher_samples", "M"), ("chunk_len", "L")):
        doubled = dataclasses.replace(cfg, **{field: 2 * base_options[field]})   # the fork gap stays 8
        median = step_seconds(run, rows, doubled, args.repeats)[1]
        say(f"| {label} | {median:.3f} | {median / base:.2f} | {__import__('math').log2(median / base):.2f} |")


# 4. TRL -------------------------------------------------------------------------------------------------

CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n{% else %}"
        "Answer: {{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}Answer: {% endif %}")


def against_trl(args, device):
    say("\n## 4. Our OPD step against TRL's GKDTrainer (on-policy, reverse KL), identical models and batch")
    say()
    try:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        import trl
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as error:
        say(f"TRL not installed ({error}): pip install -r bench/requirements.txt")
        return
    batch_size, length = 16, 48
    run, rows, cfg = toy_run(device, method="opd", batch_size=batch_size, max_new_tokens=length)
    ours = step_seconds(run, rows, cfg, args.repeats)
    student, tokenizer = models.load_model("toy", "student", device)
    teacher, _ = models.load_model("toy", "teacher", device)
    tokenizer.chat_template = CHAT   # the toy tokenizer has none; this one writes our plain prompt
    messages = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
                for r in rows[:256]]
    trainer = GKDTrainer(model=student, teacher_model=teacher, processing_class=tokenizer,
                         train_dataset=Dataset.from_dict({"messages": messages}),
                         args=GKDConfig(output_dir="/tmp/omniopd-speed-trl", per_device_train_batch_size=batch_size,
                                        lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=length,
                                        learning_rate=cfg.lr, report_to=[], use_cpu=device.type == "cpu",
                                        bf16=False, max_length=256, logging_steps=10**6))
    rows_trl = {"TRL GKDTrainer": timed(trl_step_function(trainer), args.repeats)}
    try:
        from trl import DistillationConfig, DistillationTrainer
        student, _ = models.load_model("toy", "student", device)
        distill = DistillationTrainer(   # always on-policy; beta 1 is reverse KL; reads prompts only
            model=student, teacher_model=teacher, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": [m[:1] for m in messages]}),
            args=DistillationConfig(output_dir="/tmp/omniopd-speed-trl2", per_device_train_batch_size=batch_size,
                                    beta=1.0, temperature=1.0, top_k=0, top_p=1.0, max_completion_length=length,
                                    learning_rate=cfg.lr, report_to=[], use_cpu=device.type == "cpu", bf16=False,
                                    logging_steps=10**6))
        rows_trl["TRL DistillationTrainer"] = timed(trl_step_function(distill), args.repeats)
    except (ImportError, TypeError, ValueError) as error:
        say(f"(DistillationTrainer not measured: {type(error).__name__}: {str(error)[:120]})")
    theirs = rows_trl["TRL GKDTrainer"]
    say(f"TRL {trl.__version__}. Both: the toy student and teacher, {batch_size} prompts, sampling at τ = 1 up to "
        f"{length} new tokens, one AdamW step.")
    say()
    say("| step | min / median (s) | ratio to TRL GKDTrainer |")
    say("|---|---|---|")
    for name, (fastest, median) in rows_trl.items():
        say(f"| {name} | {fastest:.3f} / {median:.3f} | {median / theirs[1]:.2f} |")
    say(f"| ours, --method opd | {ours[0]:.3f} / {ours[1]:.3f} | {ours[1] / theirs[1]:.2f} |")


# 5. The teacher's bill ---------------------------------------------------------------------------------------

class OneRequestPerContinuation(teachers.OpenAITeacher):
    """The API teacher as it was before issue #25: each of a prefix's M continuations its own request, and every
    request of a step in flight at once, in no order (the baseline the bill is measured against)."""

    def continuations(self, prefixes, n, max_tokens, draw="", rows=None):
        rows = rows or [None] * len(prefixes)
        messages = [teachers.teacher_message(teachers.teacher_template(self), p, r) for p, r in zip(prefixes, rows)]
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(lambda m: self.one_request(m, max_tokens)[0], [m for m in messages
                                                                                    for _ in range(n)]))
        self.calls += len(answers)
        return [[a for a in answers[i * n:(i + 1) * n] if a is not None] or None for i in range(len(prefixes))]


def fork_prefixes(steps, batch_size, seed=0):
    """Per step: the decoded prefixes s_t of SmolLM2's forks on its own chain_sum rollouts, and their rows, as
    omniopd_collect builds them (forks per rollout in ascending order)."""
    from bench.real_lm import write_data
    from omniopd_tools.real_models import smollm2_folder
    train, _ = write_data(Path("/tmp/omniopd-speed-teacher"), 200, 10)
    cfg = omniopd.Config(student=str(smollm2_folder()), teacher="", data=train, batch_size=batch_size,
                         max_new_tokens=64, prompt_template="plain", device="cpu", seed=seed, eval_size=0,
                         out="/tmp/omniopd-speed-teacher/run").resolved()
    run = setup(cfg, teacher=teachers.Teacher())
    rows, made = data.load_rows(train, "train", 0), []
    for step in range(steps):
        batch = batch_rows(rows, step, cfg)
        rollout, entropy = omniopd.rollouts_with_entropy(run, batch, cfg)
        forks = omniopd.select_forks(entropy, rollout.response_mask_B_T, cfg.audit_budget, cfg.fork_gap,
                                     cfg.entropy_threshold, cfg.entropy_window, cfg.audit_ratio, cfg.fork_selection)
        prefixes = omniopd.teacher_prefix_texts(run.tokenizer, rollout, forks, [r["question"] for r in batch], cfg)
        made.append((prefixes, [batch[b] for b, _ in forks]))
    return made, cfg


def bill_per_step(teacher, steps, cfg, server_usage=None):
    """Means per step of requests, prompt tokens, cached prompt tokens (the teacher's meter: the server's own usage
    figures) and the teacher's wall time, over the given steps' prefixes."""
    started = time.perf_counter()
    for prefixes, rows in steps:
        teacher.continuations(prefixes, cfg.teacher_samples, 2 * cfg.chunk_len, rows=rows)
    seconds = time.perf_counter() - started
    per_step = {name: getattr(teacher, name) / len(steps) for name in ("requests", "prompt_tokens", "cached_tokens")}
    return {**per_step, "seconds": seconds / len(steps), "failures": teacher.failures}


def teacher_section(args, device):
    say("\n## 5. The teacher's bill per step: before (one request per continuation, all at once) and now (one "
        "request per prefix with n = M, a rollout's prefixes in order)")
    say()
    try:
        import llama_cpp.server  # noqa: F401
        from omniopd_tools.real_models import LlamaServer, smollm2_gguf
    except ImportError as error:
        say(f"llama-cpp-python not installed ({error}): pip install -r requirements-real.txt")
        return
    from omniopd_tools.serve import start_in_thread
    steps, cfg = fork_prefixes(args.teacher_steps, 8)
    forks = statistics.mean(len(prefixes) for prefixes, _ in steps)
    os.environ["OMNIOPD_SPEED_KEY"] = "sk-speed-loopback"
    say(f"SmolLM2-135M-Instruct's own rollouts on chain_sum (8 per step, up to 64 tokens, {args.teacher_steps} "
        f"steps, {forks:.1f} forks per step), M = {cfg.teacher_samples}, up to {2 * cfg.chunk_len} teacher tokens "
        "each, concurrency 8 unless said. Means per step; the same prefixes for every row. Load average at the "
        f"start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    say()
    say("| server | client | requests | prompt tokens billed | ratio | cached prompt tokens | teacher wall time (s) "
        "| ratio |")
    say("|---|---|---|---|---|---|---|---|")
    from omniopd_tools.real_models import smollm2_folder
    with LlamaServer(smollm2_gguf(), "sk-speed-loopback", threads=max(1, (os.cpu_count() or 2) // 2)) as llama:
        batching = start_in_thread(str(smollm2_folder()))
        servers = (("llama.cpp (llama-cpp-python), SmolLM2 GGUF", llama.url, "smollm2", "chat"),
                   ("transformers (omniopd_tools/serve.py), SmolLM2: honours n, batches requests",
                    f"http://127.0.0.1:{batching.server_address[1]}/v1", "smollm2", "chat"))
        for server, url, model, mode in servers:
            figures = {}
            for client, kind, concurrency in (
                    ("before: one request per continuation", OneRequestPerContinuation, 8),
                    ("now: n per request, prefixes in order", teachers.OpenAITeacher, 8),
                    ("now, concurrency 1: one rollout's chain at a time", teachers.OpenAITeacher, 1)):
                teacher = kind(model, url, "OMNIOPD_SPEED_KEY", mode=mode, concurrency=concurrency)
                figures[client] = bill_per_step(teacher, steps, cfg)
            before = next(iter(figures.values()))
            for client, f in figures.items():
                say(f"| {server} | {client} | {f['requests']:.1f} | {f['prompt_tokens']:,.0f} | "
                    f"{f['prompt_tokens'] / max(1, before['prompt_tokens']):.2f} | {f['cached_tokens']:,.0f} | "
                    f"{f['seconds']:.2f} | {f['seconds'] / before['seconds']:.2f} |")
        batching.shutdown()
    say()
    say("llama.cpp's Python server drops `n` (it answers one choice), so the client falls back to one request per "
        "continuation, said once, and the prompt tokens billed stay as they were; it reports no cached tokens, and "
        "its time is decoding, one request at a time. A server that honours `n` (OpenAI, vLLM, SGLang; here "
        "omniopd_tools/serve.py with the same model in transformers, which counts a prompt's tokens shared with an "
        "earlier prompt as cached, as providers report them) bills each prefix once.")

    say("\n## 5b. The toy step again, with the teacher behind an API (its requests in flight while the student "
        "drafts)")
    say()
    say("| method | step min / median (s) | ratio to OPD | stage medians (s) |")
    say("|---|---|---|---|")
    run, rows, cfg = toy_run(device, method="opd")
    opd = step_seconds(run, rows, cfg, args.repeats)
    say(f"| OPD, sampled-token | {opd[0]:.3f} / {opd[1]:.3f} | 1.00 | {profile(opd[2])} |")
    latency, server = 0.1, start_in_thread("echo", latency=0.1)
    os.environ["OPENAI_API_KEY"] = "sk-speed-loopback"
    api = {"teacher": "openai:echo", "teacher_mode": "completion",
           "teacher_base_url": f"http://127.0.0.1:{server.server_address[1]}/v1"}
    for name, options in (("OmniOPD, local teacher", {}),
                          (f"OmniOPD, API teacher ({latency * 1000:.0f} ms per request, echo)", api),
                          ("OmniOPD, API teacher, φ lexical", {**api, "similarity": "lexical"})):
        run, rows, cfg = toy_run(device, **{"similarity": "embed", **options})
        fastest, median, stages = step_seconds(run, rows, cfg, args.repeats)
        say(f"| {name} | {fastest:.3f} / {median:.3f} | {median / opd[1]:.2f} | {profile(stages)} |")
    server.shutdown()
    say()
    say("The echo server stands in for a remote API: it answers after a fixed latency and costs this machine no "
        "compute, so the API rows show what the student itself spends. time/teacher is the teacher's own time; "
        "teacher_wait what is left of it after drafting.")


def profile(stages: dict) -> str:
    return ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in stages.items())


def trl_step_function(trainer):
    """One TRL step as its train() loop makes it: training_step (generate, loss, backward), then AdamW."""
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    trainer.current_gradient_accumulation_steps = 1   # train() sets this; we call training_step directly
    batches = iter(trainer.get_train_dataloader())

    def step():
        trainer.training_step(trainer.model, next(batches), None)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=[name for name, _ in PARTS], default=None,
                        help="measure one part and replace its section in --results")
    parser.add_argument("--teacher-steps", type=int, default=3, help="steps of prefixes in part 5")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "speed.md"))
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)   # internal: PART:NAME, one variant's peak, alone
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_of:
        import json
        part, name = args.memory_of.split(":", 1)
        function = (scoring_setup(device)[0] if part == "scoring" else anchor_setup(device))[name]
        with PeakMemory(device) as memory:
            function()
        print(json.dumps({"gib": memory.gib}))
        return
    torch.set_num_threads(os.cpu_count() or 2)
    say(f"# Speed and memory (`python bench/speed.py --device {args.device}`, {args.repeats} repeats, "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else f'CPU, {os.cpu_count()} cores'})")
    say()
    header = len(LINES)
    for part, function in PARTS:
        if args.only in (None, part):
            function(args, device)
    results = Path(args.results)
    if args.only is None:
        results.write_text("\n".join(LINES) + "\n")
    elif results.exists():   # this part's sections replace their namesakes; the rest stays as measured
        write_sections(results, "\n".join(LINES[header:]))


def write_sections(results: Path, measured: str) -> None:
    """Replace (or append) each '## N.' section of `measured` in the results file, keeping the others."""
    text = results.read_text()
    for section in measured.split("\n## ")[1:]:
        number = section.split(" ", 1)[0]
        head, *sections = [piece.strip("\n") for piece in text.split("\n## ")]
        if any(old.split(" ", 1)[0] == number for old in sections):
            sections = [section.strip("\n") if old.split(" ", 1)[0] == number else old for old in sections]
        else:
            sections.append(section.strip("\n"))
        text = "\n\n## ".join([head, *sections])
    results.write_text(text.rstrip("\n") + "\n")


PARTS = (("scoring", scoring), ("anchor", anchor), ("steps", whole_steps), ("trl", against_trl),
         ("teacher", teacher_section))


if __name__ == "__main__":
    main()
