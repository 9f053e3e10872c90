"""A run's plumbing, shared by omniopd.py's loop and scale/'s: what a run loads (setup), the run folder (held by one run at a time), the
rules that stop a run early, what each step adds to its metrics besides the method's own, evaluation records,
and the summary printed at the end."""

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from omniopd_lib.checkpoint import restore, resume_state
from omniopd_lib.codetask import Limits
from omniopd_lib.common import (OmniOPDError, RunState, device_of, lock_folder, rng_state, seed_everything,
                                set_rng_state)
from omniopd_lib.config import offline_if_the_world_is, parse_args
from omniopd_lib.generation import PLAIN_TEMPLATE
from omniopd_lib.grading import evaluate
from omniopd_lib.models import load_reference, load_student
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher, cancel_every_teacher, keep_ledger, make_teacher, ready_teacher
from omniopd_lib.tracking import TEACHER_COUNTERS


def setup(cfg, teacher=None) -> RunState:
    """Load the student (from --resume if given), the frozen reference (always the starting weights), the teacher
    (make_teacher's unless one is given; GRPO has none), the similarity (omniopd only) and the AdamW optimizer
    over the trainable parameters; then resume."""
    device, state = device_of(cfg), resume_state(cfg)
    seed_everything(cfg.seed)
    student, tokenizer, lora = load_student(cfg, device)
    reference = load_reference(cfg, lora, device)
    if cfg.method != "grpo":   # GRPO learns from rewards alone
        teacher = ready_teacher(teacher or make_teacher(cfg, device), cfg, tokenizer)
    if cfg.method == "opd" and not isinstance(teacher, HFTeacher):
        raise OmniOPDError("--method opd needs the teacher's logits: give a local model, not openai:")
    if cfg.method == "opd" and not teacher.shares_tokenizer:
        raise OmniOPDError("--method opd needs a teacher with the student's tokenizer; this teacher's differs")
    checker = ((Limits(seconds=cfg.checker_timeout, memory_mb=cfg.checker_memory_mb), cfg.checker_workers)
               if cfg.task == "code" else None)   # --similarity answer on code runs the tests
    similarity = Similarity(cfg.similarity, cfg.similarity_model, device, checker) if cfg.method == "omniopd" else None
    trainable = [p for p in student.parameters() if p.requires_grad]   # with LoRA, the adapter's alone
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = RunState(student, tokenizer, reference, teacher, similarity, optimizer, lora=lora)
    if state is not None:
        restore(run, state, cfg)
    if teacher is not None:   # billed from the checkpoint's meter; a ledger adds what a killed step spent
        teacher.meter_at_last_step = {**teacher.meter(), **(keep_ledger(teacher, cfg.out, cfg.resume or None) or {})}
    return run


@contextlib.contextmanager
def run_folder(cfg):
    """<out>, created, locked for this run (a second run on it is refused in one line) and holding config.json."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        held = lock_folder(out)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    except OSError as error:
        raise OmniOPDError(f"cannot write to output folder {out}: {error.strerror}") from None
    with contextlib.closing(held):
        yield out


STOP_AFTER = 3  # steps in a row with a non-finite loss, or with no usable teacher answer, stop the run


class StopRules:
    """When a run stops early: STOP_AFTER steps in a row whose loss was not finite (none was applied: it stops,
    naming the last checkpoint, which holds the last good weights), or in which the teacher gave no usable answer
    (it saves its progress, then stops). A checkpoint is never saved right after a non-finite step."""

    def __init__(self):
        self.nonfinite_in_a_row = self.silent_in_a_row = 0

    def count(self, metrics: dict) -> None:
        """After a step: marks a skipped (non-finite) step in its metrics and counts both kinds of bad step."""
        if math.isfinite(metrics["loss/total"]):
            self.nonfinite_in_a_row = 0
        else:
            metrics["loss/nonfinite_skipped"] = 1
            self.nonfinite_in_a_row += 1
        # every fork (drafts), every chunk (audit: dropped for want of N answers) or every solution (sft) unanswered
        silent = (metrics.get("forks/count", 0) > 0 and metrics["forks/skipped"] == metrics["forks/count"]
                  or metrics.get("audit/dropped", 0) > 0 and metrics.get("audit/chunks", 0) == 0
                  or metrics.get("sft/solutions", 1) == 0)
        self.silent_in_a_row = self.silent_in_a_row + 1 if silent else 0

    def may_save(self) -> bool:
        return not self.nonfinite_in_a_row

    def check(self, step: int, metrics: dict, out: Path, save) -> None:
        """Raise the one-line stop when either count reaches STOP_AFTER; save() writes the progress checkpoint."""
        if self.nonfinite_in_a_row == STOP_AFTER:
            last = sorted((out / "checkpoints").glob("step-*"))
            raise OmniOPDError(f"the loss was not finite {STOP_AFTER} steps in a row (steps {step - 2}-{step}); "
                               f"none was applied. Stopped; last checkpoint: {last[-1] if last else 'none saved'}")
        if self.silent_in_a_row == STOP_AFTER:
            saved = save()
            raise OmniOPDError(f"the teacher gave no usable answer {STOP_AFTER} steps in a row "
                               f"({metrics.get('teacher/failures', 0)} failed requests in all): check --teacher and "
                               f"--teacher-base-url. Stopped; progress saved in {saved}")


BILL = ("requests", "prompt_tokens", "cached_tokens", "tokens", "dollars")


def step_figures(step: int, started: float, teacher) -> dict:
    """What every step logs besides the method's metrics and its stages' times: its number, its time, the
    teacher's meter since the run began (teacher/*: a pool's whole meter, else the counters every teacher keeps)
    and this step's share of the bill (bill/*: requests, prompt, cached and completion tokens, dollars)."""
    meter = teacher.meter() if teacher is not None else dict.fromkeys(TEACHER_COUNTERS, 0)   # GRPO has none
    before = getattr(teacher, "meter_at_last_step", None) or {}
    this_step = {f"bill/{k}": meter[k] - before.get(k, 0) for k in BILL if k in meter}
    if teacher is not None:
        teacher.meter_at_last_step = meter
    return {"step": step, "time/step": time.time() - started, **{f"teacher/{k}": v for k, v in meter.items()},
            **this_step}


def teacher_bill(teacher) -> dict:
    """The teacher's whole meter at the end of a run (requests, prompt, cached and completion tokens, dollars)."""
    return teacher.meter() if teacher is not None else {}


def evaluation_result(records: list[dict], cfg) -> dict:
    """eval/accuracy (greedy pass@1) and, with --eval-samples n, eval/mean@n, from evaluate()'s records."""
    result = {"eval/accuracy": sum(r["correct"] for r in records) / max(len(records), 1)}
    if cfg.eval_samples:
        result[f"eval/mean@{cfg.eval_samples}"] = sum(r["sampled_correct"] for r in records) / max(len(records), 1)
    return result


def write_records(cfg, tag: str, records: list[dict]) -> None:
    """Every evaluated problem's output, in the run folder as eval-<tag>.jsonl."""
    with open(Path(cfg.out) / f"eval-{tag}.jsonl", "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


def print_summary(cfg, summary: dict, seconds: float) -> None:
    """The held-out accuracy before and after training (and the teacher's), and where the run is."""
    print(f"\nheld-out accuracy ({cfg.eval_data}, {cfg.eval_size or 'all'} problems, greedy pass@1):")
    if cfg.eval_data.startswith("human-eval") and cfg.eval_data != "human-eval:all":
        print("  (HumanEval's fixed split: problems 100-163; --eval-data human-eval:all --steps 0 scores all 164)")
    for when in ("before", "after"):
        extra = "".join(f", {k.split('/')[1]} {v:.1%}" for k, v in summary[when].items() if k != "eval/accuracy")
        print(f"  student {when:<7} {summary[when]['eval/accuracy']:.1%}{extra}"
              + (f"   ({cfg.method}, {cfg.steps} steps)" if when == "after" else ""))
    if "teacher" in summary:
        print(f"  teacher         {summary['teacher']:.1%}")
    bill = summary.get("bill") or {}
    if bill.get("requests"):
        print(f"teacher's bill: {bill['requests']:,} requests, {bill['prompt_tokens']:,} prompt tokens "
              f"({bill['cached_tokens']:,} cached), {bill['tokens']:,} completion tokens"
              + (f", ${bill['dollars']:.4f}" if "dollars" in bill else ""))
    print(f"run folder {cfg.out}, checkpoint {summary['checkpoint']}, {seconds:.0f} s")
    print(f"what its forks looked like, as a page: python -m omniopd_tools.view {cfg.out}")


def main_with_errors(argv, config_class, train, description: str) -> int:
    """A command line: argv parsed into config_class, train(cfg), the summary printed -> 0; or 2 with one line on
    stderr for a problem the user can fix."""
    try:
        cfg, started = parse_args(argv, config_class, description), time.time()
        offline_if_the_world_is(cfg)
        print_summary(cfg, train(cfg), time.time() - started)
        return 0
    except OmniOPDError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # wherever Ctrl-C lands (drafting, say), no teacher request outlives it
        cancel_every_teacher()
        print("interrupted: the teacher's requests in flight were cut; the last checkpoint holds the progress",
              file=sys.stderr)
        return 130


def run_eval(run, rows, cfg, tag) -> dict:
    """Evaluate the student and keep every problem's output in the run folder as eval-<tag>.jsonl.
    Training's random streams are put back afterwards, so evaluating never changes what training samples."""
    saved = rng_state()
    _, records = evaluate(run.student, run.tokenizer, rows, cfg, cfg.eval_samples)
    set_rng_state(saved)
    write_records(cfg, tag, records)
    return evaluation_result(records, cfg)


def teacher_accuracy(run, rows, cfg) -> dict:
    """{"teacher": its greedy pass@1} for a local teacher (--eval-teacher), in its chat format only if it has one."""
    if not (cfg.eval_teacher and isinstance(run.teacher, HFTeacher)):
        return {}
    plain = cfg.prompt_template == "chat" and not run.teacher.tokenizer.chat_template
    teacher_cfg = dataclasses.replace(cfg, prompt_template=PLAIN_TEMPLATE) if plain else cfg
    return {"teacher": evaluate(run.teacher.model, run.teacher.tokenizer, rows, teacher_cfg)[0]}
