"""Checkpoints: one atomic step folder (written aside, then renamed), and what a resumed run may change."""

import dataclasses
import shutil
import sys
from pathlib import Path

import torch

from omniopd_lib.common import OmniOPDError, load_plain_state, rng_state, set_rng_state
from omniopd_lib.tracking import TEACHER_COUNTERS


def fresh_partial_folder(root: Path, step: int) -> tuple[Path, Path]:
    """(partial, final) for step N: <root>/.partial-step-N, emptied of any earlier try, to write into, and the
    <root>/step-N it becomes (publish_step_folder). omniopd.py and scale/ write every checkpoint this way."""
    final, partial = root / f"step-{step:06d}", root / f".partial-step-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    return partial, final


def publish_step_folder(partial: Path, final: Path, keep: int) -> Path:
    """The written folder becomes step-N in one rename, so a crash leaves the whole checkpoint or none; then the
    newest `keep` step folders are kept."""
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in sorted(final.parent.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(run, cfg) -> Path:
    """Student and tokenizer (save_pretrained) plus optimizer, step and RNG, in one atomic step folder.
    A save that fails (a full disk) removes its partial folder and is one line; older checkpoints stay."""
    root = Path(cfg.out) / "checkpoints"
    partial, final = fresh_partial_folder(root, run.step)
    try:
        (run.lora or run.student).save_pretrained(partial)   # under LoRA: the adapter alone
        run.tokenizer.save_pretrained(partial)
        torch.save({"step": run.step, "optimizer": run.optimizer.state_dict(), "rng": rng_state(),
                    "teacher": {k: getattr(run.teacher, k, 0) for k in TEACHER_COUNTERS},
                    "config": dataclasses.asdict(cfg)}, partial / "trainer_state.pt")
        return publish_step_folder(partial, final, cfg.keep_checkpoints)
    except Exception as error:   # OSError; torch.save and safetensors report a failed write as their own errors
        shutil.rmtree(partial, ignore_errors=True)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        kept = sorted(root.glob("step-*"))
        raise OmniOPDError(f"cannot save the checkpoint of step {run.step} in {root} ({reason}); "
                           f"last good checkpoint: {kept[-1] if kept else 'none'}") from None


# what a resumed run may not change: the model and what it is, the method, and the seed every draw is keyed by
FIXED_ON_RESUME = ("student", "method", "objective", "seed", "lora_rank", "lora_alpha", "lora_target_modules")


# the run's own paths and bookkeeping, not settings
NOT_SETTINGS = ("out", "resume")


def check_resumable(saved: dict, cfg) -> None:
    """--resume: the saved config against the new one. A setting of FIXED_ON_RESUME that differs is a one-line
    refusal; any other that differs (lr, steps, eval cadence, ...) takes effect from here on, and is logged."""
    now = dataclasses.asdict(cfg)
    changed = [k for k in now if k in saved and saved[k] != now[k] and k not in NOT_SETTINGS]
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        raise OmniOPDError(f"--resume {cfg.resume}: cannot change " + ", ".join(
            f"--{k.replace('_', '-')} ({saved[k]} -> {now[k]})" for k in fixed) + " on resume; start a new run")
    if changed:
        print("note: resumed with new settings: " + ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in changed),
              file=sys.stderr)


def resume_state(cfg):
    """--resume's trainer state (None without --resume), checked before anything loads: a checkpoint folder, a
    plain state, and settings that may change on resume."""
    if not cfg.resume:
        return None
    if not (Path(cfg.resume) / "trainer_state.pt").is_file():
        raise OmniOPDError(f"--resume {cfg.resume}: not a checkpoint folder (no trainer_state.pt); "
                           f"checkpoints are <out>/checkpoints/step-N")
    state = load_plain_state(Path(cfg.resume) / "trainer_state.pt")
    check_state_shape(state, Path(cfg.resume) / "trainer_state.pt")
    check_resumable(state.get("config", {}), cfg)
    return state


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_state_shape(state: dict, path) -> None:
    """A plain state of the shape save_checkpoint writes, checked before any model loads: a step that is a count,
    AdamW's state as a dict with its parameter groups, every random stream, plain settings and the teacher's
    counters as counts. Anything else (a hand-made or tampered file) is one line."""
    rng = state.get("rng")
    rules = [(is_count(state.get("step")), "its step is not a whole number of 0 or more"),
             (isinstance(state.get("optimizer"), dict) and isinstance(state["optimizer"].get("state"), dict)
              and isinstance(state["optimizer"].get("param_groups"), list), "it holds no optimizer state"),
             (isinstance(rng, dict) and {"python", "torch", "numpy"} <= set(rng), "it holds no random state"),
             (isinstance(state.get("config", {}), dict), "its config is not a dict"),
             (isinstance(state.get("teacher", {}), dict) and all(is_count(v) for v in state.get("teacher", {}).values()),
              "its teacher counters are not whole numbers of 0 or more")]
    for ok, why in rules:
        if not ok:
            raise OmniOPDError(f"{path}: not a training state this program wrote, refused ({why})")


def restore(run, state: dict, cfg) -> None:
    """A run where the checkpoint left it: AdamW's moments (with the new rate and decay), the step, every random
    stream, the teacher's counters (TEACHER_COUNTERS only, each a count: a state naming the teacher's model,
    temperature or prompt changes nothing)."""
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:   # the shape fits, its insides not
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise OmniOPDError(f"--resume {cfg.resume}: its optimizer or random state does not fit this run ({reason})") \
            from None
    for group in run.optimizer.param_groups:   # the saved groups carry the old run's settings
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.step = state["step"]
    if run.teacher is not None:   # the counters alone: every setting of the teacher comes from the command line
        for counter in TEACHER_COUNTERS:
            value = state.get("teacher", {}).get(counter, 0)
            if is_count(value) and hasattr(run.teacher, counter):
                setattr(run.teacher, counter, value)
