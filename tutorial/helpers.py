"""What every tutorial page shares: show() and save_figure()."""

import inspect
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
HERE = Path(__file__).resolve().parent
from omniopd_lib import models  # noqa: E402
from omniopd_lib.fastpaths import token_logprobs_and_entropy
FIGURES = HERE / "figures"


def show(function) -> None:
    """Print a function's source as it is in omniopd.py right now (render.py fences it as Python)."""
    print("<<<source>>>\n" + inspect.getsource(function) + "<<<end>>>")


def save_figure(figure, name: str) -> str:
    """Save a matplotlib figure under tutorial/figures/ and return its Markdown image line."""
    FIGURES.mkdir(exist_ok=True)
    figure.savefig(FIGURES / name, dpi=100, bbox_inches="tight")
    return f"![{name}](figures/{name})"


def page_one_rollout():
    """The rollout of page 1 (toy student, test problem 5, seed 3), its entropy and its forks,
    so that pages 2 and 3 look at the same solution. Returns a dict of those objects."""
    import torch
    import omniopd
    import toyworld

    torch.manual_seed(3)
    cfg = omniopd.Config(**toyworld.world_options("toy")).resolved()
    student, tokenizer = models.load_model("toy", "student", torch.device("cpu"))
    problem = toyworld.make_problems(1, "test", seed=5)[0]
    rollout = omniopd.sample_rollouts(student, tokenizer, [problem["question"]], cfg)
    with torch.no_grad():
        logits = omniopd.response_logits(student, rollout)
    _, entropy = token_logprobs_and_entropy(logits, rollout.response_ids_B_T)
    forks = omniopd.select_forks(entropy, rollout.response_mask_B_T, cfg.audit_budget, cfg.fork_gap,
                                 cfg.entropy_threshold)
    return dict(cfg=cfg, student=student, tokenizer=tokenizer, problem=problem, rollout=rollout,
                entropy=entropy, forks=forks)
