"""OmniOPD on many devices: omniopd.py's step functions under torchrun with FSDP2.

    torchrun --nproc_per_node=2 scale/train.py --steps 20                      # CPU (gloo), toy world
    torchrun --nproc_per_node=8 scale/train.py --student Qwen/Qwen2.5-7B \\
        --teacher openai:Qwen/Qwen2.5-72B-Instruct@http://teacher-node:8000/v1 --teacher-concurrency 64

Every option of omniopd.py works here, plus the teacher pool's (scale/teachers.py). What
changes is only where things run:
- the student and its frozen reference are sharded with FSDP2 (`fully_shard` on each
  decoder block, then the root; bf16 parameters with fp32 gradient reduction on GPU,
  fp32 on CPU);
- each step's prompts are split across ranks. Sampling (rollouts, drafts) runs with the
  student's full weights gathered on every rank, then the loss runs sharded. The loss
  divides by the token and fork counts summed over ranks and gradients are summed, so a
  step equals the one-process step on the same batch (tests/test_scale.py);
- all ranks' teacher requests of a step go to rank 0's TeacherPool at once (API teachers);
  a local HF teacher is loaded on every rank instead;
- rank 0 logs; checkpoints are torch.distributed.checkpoint folders that load at any world
  size, and training ends with a plain save_pretrained export in <out>/export.
At world size 1 it makes the same passes, with the same random numbers, as omniopd.py.
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

import omniopd
from omniopd_lib.common import seed_everything
from omniopd_lib import grading
import toyworld
from omniopd_lib import checkpoint, common, config
from omniopd_lib.config import option
from omniopd_lib import runs
from omniopd_lib.common import OmniOPDError
from omniopd_lib.data import batch_rows, load_data
from omniopd_lib.runs import StopRules, evaluation_result, step_figures, write_records
from omniopd_lib.tracking import MetricsLog, keep_metrics_until
from omniopd_lib.teachers import Teacher, parse_price, read_teacher_prompt
from scale.teachers import TeacherPool


@dataclass
class ScaleConfig(omniopd.Config):
    # --teacher may be given several times; their answers are pooled (see scale/teachers.py)
    teacher_rpm: int = option(0, "teacher requests per minute over all ranks (0 = no limit)")
    teacher_tpm: int = option(0, "teacher tokens per minute over all ranks, prompt + completion (0 = no limit)")
    teacher_cache: str = option("", "SQLite file of teacher answers (empty = <out>/teacher_cache.sqlite, 'off' = none)")
    wait_minutes: float = option(120.0, "how long a rank waits for the others in the exchanges of counts, metrics and "
                                        "teacher answers (gloo) before it gives up: longer than the slowest teacher step")


def parse_args(argv=None) -> ScaleConfig:
    """omniopd's command line plus the pool's options; repeated --teacher values are kept, joined by commas."""
    argv = list(sys.argv[1:] if argv is None else argv)
    teachers = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--teacher"]
    teachers += [a.split("=", 1)[1] for a in argv if a.startswith("--teacher=")]
    cfg = config.parse_args(argv, ScaleConfig, __doc__.split("\n\n")[0])
    cfg.teacher = ",".join(teachers) or cfg.teacher
    return cfg


# ----------------------------------------------------------------------------
# Processes, sharding, gathering

CONTROL = None  # the gloo group of the small CPU-side exchanges; made once by init_distributed


def init_distributed(cfg):
    """Join torchrun's process group: nccl with one GPU per rank (FSDP's collectives), gloo on CPU.
    Beside it, a gloo group with a long timeout carries the small exchanges (counts, metrics, teacher prompts
    and answers) as CPU tensors and objects: nccl has no CPU tensors, and its 10-minute timeout would end the
    ranks that wait while rank 0 waits for a slow or rate-limited API teacher. Returns (rank, world size)."""
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    init_control_group(cfg.wait_minutes)
    return dist.get_rank(), dist.get_world_size()


def init_control_group(wait_minutes: float):
    global CONTROL
    CONTROL = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=wait_minutes))


def shard_model(model, device_type: str):
    """FSDP2: fully_shard each decoder block, then the root (embeddings, final norm, LM head)."""
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device_type == "cuda"
              else MixedPrecisionPolicy())
    for block in model.model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


@contextlib.contextmanager
def gathered(model):
    """Full weights on every rank for sampling: one all-gather, then any number of local forward passes
    (ranks generate different lengths, so per-pass collectives would deadlock). Resharded on exit."""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def my_share(items: list, rank: int, world: int) -> list:
    """The rank's contiguous slice (GRPO's groups stay whole when the batch divides evenly)."""
    per_rank = len(items) // world
    return items[rank * per_rank:(rank + 1) * per_rank]


def all_reduce(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    """Numbers summed (or maxed) over ranks, on the CPU, through the gloo control group."""
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op, group=CONTROL)
    return tensor.tolist()


class GatheredTeacher(Teacher):
    """All ranks' requests of a step go to rank 0's TeacherPool as one batch; each rank gets its answers and the
    pool's meter. A fatal teacher error on rank 0 stops every rank with its message."""

    def __init__(self, pool, rank, world):
        self.pool, self.rank, self.world = pool, rank, world
        self.calls = self.failures = self.tokens = 0
        self.pool_meter = None

    def continuations(self, prefixes, n, max_tokens, draw="", rows=None):
        everyone = [None] * self.world
        dist.all_gather_object(everyone, (prefixes, rows or [None] * len(prefixes)), group=CONTROL)
        answers = [None] * self.world
        if self.rank == 0:
            try:
                flat = self.pool.continuations([p for ps, _ in everyone for p in ps], n, max_tokens, draw,
                                               [row for _, rs in everyone for row in rs])
                starts = [sum(len(ps) for ps, _ in everyone[:r]) for r in range(self.world + 1)]
                answers = [(flat[starts[r]:starts[r + 1]], self.pool.meter()) for r in range(self.world)]
            except OmniOPDError as error:
                answers = [str(error)] * self.world
        mine = [None]
        dist.scatter_object_list(mine, answers if self.rank == 0 else None, src=0, group=CONTROL)
        if isinstance(mine[0], str):
            raise OmniOPDError(mine[0])
        texts, meter = mine[0]
        self.calls, self.failures, self.tokens = meter["calls"], meter["failures"], meter["tokens"]
        self.pool_meter = meter
        return texts

    def meter(self) -> dict:
        return self.pool_meter or (self.pool.meter() if self.pool is not None else super().meter())


def make_pool_teacher(cfg, rank, world):
    """openai: teachers go through rank 0's pool; None means: omniopd's local HF teacher on each rank."""
    teachers = cfg.teacher.split(",")
    if not all(t.startswith("openai:") for t in teachers):
        if len(teachers) > 1:
            raise OmniOPDError("several --teacher values must all be openai: endpoints")
        return None
    pool = None
    if rank == 0:
        prices = parse_price(cfg.teacher_price) or (0.0, 0.0)
        cache = None if cfg.teacher_cache == "off" else (cfg.teacher_cache or str(Path(cfg.out) / "teacher_cache.sqlite"))
        pool = TeacherPool(teachers, cfg.teacher_base_url, cfg.teacher_api_key_env, cfg.teacher_mode,
                           cfg.teacher_temperature, cfg.teacher_timeout, cfg.teacher_retries, cfg.teacher_concurrency,
                           cfg.teacher_rpm, cfg.teacher_tpm, cache, prices,
                           reasoning_effort=cfg.teacher_reasoning_effort)
        if cfg.teacher_prompt:
            pool.prompt = read_teacher_prompt(cfg.teacher_prompt)
    return GatheredTeacher(pool, rank, world)


# ----------------------------------------------------------------------------
# Setup and one distributed step

def setup(cfg, rank, world):
    """runs.setup (omniopd.py's) on every rank (its own seed), then the student and reference sharded and a fresh
    AdamW over the sharded parameters; --resume loads a torch.distributed.checkpoint folder."""
    local = dataclasses.replace(cfg, seed=cfg.seed + rank, resume="")
    run = runs.setup(local, teacher=make_pool_teacher(cfg, rank, world) if cfg.method != "grpo" else None)
    device_type = run.student.device.type
    shard_model(run.student, device_type)
    if run.reference is not None:
        shard_model(run.reference, device_type)
    run.optimizer = torch.optim.AdamW(run.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.forwards = 0

    def count_forward(*_):
        run.forwards += 1
    run.student.register_forward_pre_hook(count_forward)
    if cfg.resume:
        load_checkpoint(run, cfg, rank, world)
    return run


def distributed_step(run, batch, cfg) -> tuple[float, dict]:
    """The method's loss on this rank's share, with the denominators summed over ranks, then one update
    equal to the one-process update. Returns the global loss and the rank's metrics; a non-finite global loss
    is skipped on every rank."""
    batch.num_tokens, batch.num_forks, batch.num_rollouts = (
        int(x) for x in all_reduce([batch.num_tokens, batch.num_forks, batch.num_rollouts]))
    _, loss_fn = omniopd.method_functions(cfg)
    before = run.forwards
    with run.clock("loss"):
        loss, metrics = loss_fn(run, batch, cfg)
    # every rank must make the same sharded forward passes (each one all-gathers): a rank with no forks
    # or no solutions makes up the difference with passes that add exactly zero to its loss
    missing = int(all_reduce([run.forwards - before], dist.ReduceOp.MAX)[0]) - (run.forwards - before)
    for _ in range(missing):
        token = torch.tensor([[run.tokenizer.pad_token_id]], device=run.student.device)
        loss = loss + 0.0 * run.student(input_ids=token).logits.float().sum()
    total = all_reduce([loss.item()])[0]
    metrics["loss/total"] = total
    if math.isfinite(total):
        # each rank's loss is its share of the global mean and FSDP averages gradients over ranks,
        # so the share is scaled by the world size: the update is the one-process update
        with run.clock("backward"):
            metrics["grad/norm"] = omniopd.update(run, loss * dist.get_world_size(), cfg.grad_clip)
    else:
        metrics["loss/nonfinite_skipped"] = 1
    return total, metrics


def combine_metrics(metrics: dict, rollouts_here: int, summed: tuple = ()) -> dict:
    """Loss parts and the counts a reading declares (its Objective's `summed`) add up over ranks; everything else
    is averaged over the ranks that report it, but
    audit/fraction, which is the summed audited tokens over the summed generated ones. Records (audit/records)
    are every rank's, in rank order, each rollout numbered in the whole batch (rank r's first rollout follows
    ranks 0..r-1's)."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (metrics, rollouts_here), group=CONTROL)
    combined = {}
    for key in sorted({k for m, _ in everyone for k in m}):
        values = [(m[key], sum(n for _, n in everyone[:rank])) for rank, (m, _) in enumerate(everyone) if key in m]
        adds_up = key.startswith(("loss/", *summed)) and key != "loss/total"
        if isinstance(values[0][0], list):
            combined[key] = [{**record, "rollout": record["rollout"] + first} if "rollout" in record else record
                             for value, first in values for record in value]
        else:
            combined[key] = sum(v for v, _ in values) / (1 if adds_up else len(values))
    if "audit/generated" in combined:
        combined["audit/fraction"] = combined["audit/tokens"] / max(combined["audit/generated"], 1)
    combined["loss/total"] = metrics["loss/total"]  # already the global loss
    return combined


def global_figures(figures: dict, teacher) -> dict:
    """step_figures over the whole run: a pool's meter is global already (every rank holds rank 0's), while
    local teachers, one per rank, each count their own work, which adds up."""
    if teacher is None or isinstance(teacher, GatheredTeacher):
        return figures
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {k: v for k, v in figures.items() if k.startswith(("teacher/", "bill/"))},
                           group=CONTROL)
    return {**figures, **{key: sum(meter[key] for meter in everyone) for key in everyone[0]}}


POOL_COUNTERS = checkpoint.TEACHER_COUNTERS + ("cached", "retried")


def counter_holder(teacher):
    """What counts this rank's teacher work: rank 0's pool behind a GatheredTeacher (other ranks hold none), else
    the rank's own teacher (a local model on every rank)."""
    if isinstance(teacher, GatheredTeacher):
        return teacher.pool if teacher.rank == 0 else None
    return teacher


def restore_counters(teacher, counters: dict) -> None:
    """The saved counters, each a count; nothing else (a pool's dollars follow from its tokens)."""
    holder = counter_holder(teacher)
    for name, value in counters.items():
        if holder is not None and name in POOL_COUNTERS and type(getattr(holder, name, None)) is int \
                and checkpoint.is_count(value):
            setattr(holder, name, value)


# ----------------------------------------------------------------------------
# Checkpoints: sharded, loadable at any world size; export to a plain folder

def save_checkpoint(run, cfg, rank, world) -> Path:
    """Weights and optimizer through torch.distributed.checkpoint (each rank writes its shards), each
    rank's RNG, and on rank 0 the step, config and tokenizer; written to a temporary folder and renamed."""
    root = Path(cfg.out) / "checkpoints"
    partial, final = root / f".partial-step-{run.step:06d}", root / f"step-{run.step:06d}"
    if rank == 0:
        checkpoint.fresh_partial_folder(root, run.step)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(run.student, run.optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(partial))
    torch.save(common.rng_state(), partial / f"rng-rank{rank}.pt")
    holder = counter_holder(run.teacher)   # the bill goes on after a resume
    (partial / f"teacher-rank{rank}.json").write_text(json.dumps(
        {name: getattr(holder, name) for name in POOL_COUNTERS if type(getattr(holder, name, None)) is int}))
    dist.barrier()
    if rank == 0:
        run.tokenizer.save_pretrained(partial)
        (partial / "trainer.json").write_text(json.dumps({"step": run.step, "world_size": world,
                                                          "config": dataclasses.asdict(cfg)}, indent=1))
        checkpoint.publish_step_folder(partial, final, cfg.keep_checkpoints)
    dist.barrier()
    return final


def saved_counters(path: Path, saved_world: int, rank: int, world: int) -> dict:
    """This rank's teacher counters from a checkpoint: its own where the world size is the same, else rank 0 takes
    every rank's sum (older checkpoints have none: the bill then starts again from zero)."""
    def read(r):
        try:
            counters = json.loads((path / f"teacher-rank{r}.json").read_text())
        except (OSError, ValueError, RecursionError):   # untrusted, like the rest of a checkpoint
            return {}
        return counters if isinstance(counters, dict) else {}
    if saved_world == world:
        return read(rank)
    if rank != 0:
        return {}
    every = [read(r) for r in range(saved_world)]
    return {name: sum(c.get(name, 0) for c in every if type(c.get(name, 0)) in (int, float))
            for name in {n for c in every for n in c}}


def load_checkpoint(run, cfg, rank, world):
    """Reshards as needed (saved on N ranks, loaded on M). RNG streams continue exactly when N = M;
    otherwise each rank reseeds from (seed, step, rank) and says so."""
    path = Path(cfg.resume)
    if not (path / "trainer.json").exists():
        raise OmniOPDError(f"{path} is not a scale/ checkpoint (no trainer.json)")
    saved = json.loads((path / "trainer.json").read_text())
    checkpoint.check_resumable(saved.get("config", {}), cfg)   # as runs.setup: what may change, and what may not
    model_state, optimizer_state = get_state_dict(run.student, run.optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(run.student, run.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for group in run.optimizer.param_groups:   # the saved groups carry the old run's settings
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.step = saved["step"]
    restore_counters(run.teacher, saved_counters(path, saved["world_size"], rank, world))
    if run.teacher is not None:   # the first step after the resume is billed from the restored meter
        run.teacher.meter_at_last_step = run.teacher.meter()
    if saved["world_size"] == world:
        common.set_rng_state(common.load_plain_state(path / f"rng-rank{rank}.pt"))
    else:
        seed_everything(cfg.seed * 1_000_003 + run.step * 1009 + rank)
        if rank == 0:
            print(f"note: checkpoint saved on {saved['world_size']} ranks, resumed on {world}: weights, optimizer "
                  f"and step are exact; sampling continues from fresh seeds", file=sys.stderr)


def export(run, cfg, rank) -> Path:
    """The student as a plain save_pretrained folder (full weights gathered to rank 0), loadable anywhere."""
    full = get_model_state_dict(run.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    folder = Path(cfg.out) / "export"
    if rank == 0:
        run.student.save_pretrained(folder, state_dict=full)
        run.tokenizer.save_pretrained(folder)
    dist.barrier()
    return folder


# ----------------------------------------------------------------------------
# Evaluation and the training loop

def run_eval(run, rows, cfg, tag, rank, world) -> dict:
    """Each rank evaluates its share with gathered weights; rank 0 writes every record and the accuracy."""
    saved = common.rng_state()  # as in runs.run_eval: evaluating never changes what training samples
    with gathered(run.student):
        _, records = grading.evaluate(run.student, run.tokenizer, rows[rank::world], cfg, cfg.eval_samples)
    common.set_rng_state(saved)
    everyone = [None] * world
    dist.all_gather_object(everyone, records, group=CONTROL)
    records = [r for rank_records in everyone for r in rank_records]
    if rank == 0:
        write_records(cfg, tag, records)
    return evaluation_result(records, cfg)


def train(cfg: ScaleConfig) -> dict:
    """omniopd.train's loop, distributed: the same data, steps, metrics and evaluations."""
    omniopd.check_config(cfg)
    if cfg.lora_rank:
        raise OmniOPDError("--lora-rank: scale/ does not train LoRA adapters yet (FSDP2 around PEFT's layers is "
                                   "neither wired nor tested); omniopd.py trains them on one device")
    rank, world = init_distributed(cfg)
    if cfg.batch_size % world:
        raise OmniOPDError(f"--batch-size {cfg.batch_size} must divide evenly over {world} ranks")
    if cfg.method == "grpo" and (cfg.batch_size // world) % cfg.group_size:
        raise OmniOPDError(f"grpo: each of {world} ranks gets {cfg.batch_size // world} rollouts, not a multiple "
                                   f"of --group-size {cfg.group_size}; a group split over ranks would be normalised "
                                   f"over part of its samples")
    out = Path(cfg.out)
    held, refusal = None, ""
    if rank == 0:   # one run per folder, as omniopd.train; every rank learns whether rank 0 got the lock
        out.mkdir(parents=True, exist_ok=True)
        try:
            held = common.lock_folder(out)
            (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        except OmniOPDError as error:
            refusal = str(error)
    if all_reduce([float(bool(refusal))])[0]:
        raise OmniOPDError(refusal or f"another run is writing to {out}")
    with contextlib.nullcontext() if held is None else contextlib.closing(held):
        return train_in(cfg, out, rank, world)


def train_in(cfg: ScaleConfig, out: Path, rank: int, world: int) -> dict:
    """train's body, in a run folder rank 0 holds."""
    train_rows, eval_rows = load_data(cfg)
    run = setup(cfg, rank, world)
    if cfg.resume and rank == 0:
        keep_metrics_until(out / "metrics.jsonl", run.step)
    collect, _ = omniopd.method_functions(cfg)
    stops = StopRules()   # as omniopd.train: non-finite losses, and a teacher that stops answering
    summary = {"before": run_eval(run, eval_rows, cfg, f"step-{run.step:06d}", rank, world)}
    log = MetricsLog(cfg) if rank == 0 else None    # metrics.jsonl and --report-to, on rank 0
    if log:
        log.write({"step": run.step, **summary["before"]}, to_file=False)
    batch = None
    for _ in range(run.step, cfg.steps):
        started = time.time()
        rows = my_share(batch_rows(train_rows, run.step, cfg), rank, world)
        with gathered(run.student):
            batch = collect(run, rows, cfg)
        _, metrics = distributed_step(run, batch, cfg)
        metrics.update(run.clock.take())
        run.step += 1
        metrics = combine_metrics(metrics, len(rows),
                                  omniopd.OBJECTIVES[cfg.objective].summed if cfg.method == "omniopd" else ())
        stops.count(metrics)
        metrics.update(global_figures(step_figures(run.step, started, run.teacher), run.teacher))
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
            metrics.update(run_eval(run, eval_rows, cfg, f"step-{run.step:06d}", rank, world))
        if log:   # the run's page (view.jsonl) shows rank 0's share of the steps it records
            log.forks(batch, run.step, rows, run.tokenizer)
        if log:   # before the checkpoint: a step a checkpoint holds is always in metrics.jsonl
            log.write(metrics)
            print(f"step {run.step}/{cfg.steps} loss {metrics['loss/total']:.4f} "
                  f"({metrics['time/step']:.1f} s)", flush=True)
        if cfg.save_every and run.step % cfg.save_every == 0 and stops.may_save():
            save_checkpoint(run, cfg, rank, world)
        stops.check(run.step, metrics, out, lambda: save_checkpoint(run, cfg, rank, world))
    summary["checkpoint"] = str(save_checkpoint(run, cfg, rank, world))
    summary["export"] = str(export(run, cfg, rank))
    summary["after"] = run_eval(run, eval_rows, cfg, f"step-{run.step:06d}", rank, world)
    if log:
        log.write({"step": run.step, **summary["after"]})
        log.close()
    return summary


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.student in toyworld.OFFLINE_WORLDS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        summary = train(cfg)
    except OmniOPDError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"held-out accuracy: before {summary['before']['eval/accuracy']:.1%}, "
              f"after {summary['after']['eval/accuracy']:.1%}; checkpoint {summary['checkpoint']}, "
              f"export {summary['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
