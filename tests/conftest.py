"""Shared fixtures: tiny real models built locally and loaded through from_pretrained."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

import omniopd  # noqa: E402
import toyworld  # noqa: E402
from toyworld.build import new_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Qwen2 with the character tokenizer, saved as an HF folder."""
    torch.manual_seed(0)
    tokenizer = toyworld.build_char_tokenizer()
    model = new_model(tokenizer, hidden=32, layers=2)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def tiny_lm(tiny_model_path):
    return omniopd.load_model(tiny_model_path, "student", torch.device("cpu"))
