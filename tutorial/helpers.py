"""What every tutorial page shares: show() and save_figure()."""

import inspect
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
FIGURES = HERE / "figures"


def show(function) -> None:
    """Print a function's source as it is in omniopd.py right now (render.py fences it as Python)."""
    print("<<<source>>>\n" + inspect.getsource(function) + "<<<end>>>")


def save_figure(figure, name: str) -> str:
    """Save a matplotlib figure under tutorial/figures/ and return its Markdown image line."""
    FIGURES.mkdir(exist_ok=True)
    figure.savefig(FIGURES / name, dpi=100, bbox_inches="tight")
    return f"![{name}](figures/{name})"
