"""What every part of a run shares: the one error a user can fix, secrets kept out of text, the HTTP deadline,
the run folder's lock, random state that a checkpoint can hold as plain data, the step clock and the device."""

import collections
import contextlib
import random
from dataclasses import dataclass, field
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch


class OmniOPDError(Exception):
    """A problem the user can fix; main() prints it as one line."""


def redact(text: str, secrets) -> str:
    """text with every secret blanked before anything is cut or printed: the whole secret, any run of 8 or more of
    its characters (a server may quote a key cut short, from either end, or its middle), and whatever follows
    'Bearer '."""
    text = re.sub(r"(?i)\b(bearer\s+)\S+", r"\1***", str(text))
    for secret in (s for s in secrets if s):
        for length in range(len(secret), 7, -1):   # longest first, so a whole key goes in one piece
            for start in range(len(secret) - length + 1):
                text = text.replace(secret[start:start + length], "***")
    return text


# the most bytes one teacher reply may take: 256 choices of 16,000 characters with JSON's escapes fit; a reply that
# runs past it is refused as it arrives, before it fills memory (a hostile or broken server may send gigabytes)
MAX_REPLY_BYTES = 16 * 2**20
REQUEST = threading.local()   # the deadline and bytes read of the request this thread is making


class DeadlineTransport(httpx.HTTPTransport):
    """An HTTP transport under which each request must be answered whole within `seconds`, status line and headers
    included, and in at most MAX_REPLY_BYTES: httpx's own timeout is per read, so a server that trickles a byte at
    a time (headers too) could hold a request for ever. Every socket read waits at most until the deadline."""

    def __init__(self, seconds: float, max_bytes: int = MAX_REPLY_BYTES):
        super().__init__()
        self.seconds, self.max_bytes = seconds, max_bytes
        self._pool._network_backend = DeadlineBackend(self._pool._network_backend)

    def handle_request(self, request):
        REQUEST.deadline, REQUEST.bytes, REQUEST.max_bytes = time.monotonic() + self.seconds, 0, self.max_bytes
        REQUEST.seconds = self.seconds
        response = super().handle_request(request)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=DeadlineStream(response.stream, REQUEST.deadline, self.seconds, request))


class DeadlineBackend:
    """httpcore's network backend with every stream it opens under the calling thread's request deadline."""

    def __init__(self, backend):
        self.backend = backend

    def connect_tcp(self, *args, **kwargs):
        return DeadlineNetworkStream(self.backend.connect_tcp(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.backend, name)


class DeadlineNetworkStream:
    """A socket whose reads wait no longer than the current request's deadline and stop at its byte cap."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, max_bytes: int, timeout=None):
        import httpcore
        deadline = getattr(REQUEST, "deadline", None)
        if deadline is None:
            return self.stream.read(max_bytes, timeout)
        started = time.monotonic()
        while True:   # in slices of a quarter second, so that a cancelled run stops waiting at once
            now = time.monotonic()
            if now >= deadline:
                raise httpcore.ReadTimeout(f"no whole reply within {REQUEST.seconds:g} s")
            if getattr(REQUEST, "cancelled", None) is not None and REQUEST.cancelled.is_set():
                raise httpcore.ReadError("the run was interrupted")
            try:
                data = self.stream.read(max_bytes, min(deadline - now, 0.25))
                break
            except httpcore.ReadTimeout:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise
        if deadline is not None:
            REQUEST.bytes += len(data)
            if REQUEST.bytes > REQUEST.max_bytes:
                raise httpcore.ReadError(f"reply longer than {REQUEST.max_bytes} bytes, refused")
        return data

    def __getattr__(self, name):
        return getattr(self.stream, name)


class DeadlineStream(httpx.SyncByteStream):
    def __init__(self, stream, deadline, seconds, request):
        self.stream, self.deadline, self.seconds, self.request = stream, deadline, seconds, request

    def __iter__(self):
        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                raise httpx.ReadTimeout(f"no whole reply within {self.seconds:g} s", request=self.request)
            yield chunk

    def close(self):
        self.stream.close()


def lock_folder(folder: Path):
    """An exclusive lock on <folder>/.lock, held while the returned file stays open (the kernel drops it when the
    process ends, even killed): a second run writing the same --out is refused in one line."""
    import fcntl
    handle = open(folder / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OmniOPDError(f"another run is writing to {folder} (it holds {folder / '.lock'}): wait for it to end, "
                           f"or choose another --out") from None
    return handle


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random stream's state as tensors, ints and lists only, so that torch.load(weights_only=True) reads it
    back: a checkpoint never needs to unpickle an object (which could run code)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_plain_state(path: Path) -> dict:
    """A trainer state written by save_checkpoint: torch.load with weights_only=True, which builds tensors, numbers,
    strings, lists and dicts and refuses any other object (a pickled object's __reduce__ could run code). A file
    that is not such a state (tampered, truncated, another format) is one line."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:   # UnpicklingError for objects, RuntimeError/EOFError for a cut file, OSError
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise OmniOPDError(f"{path}: not a plain training state, refused ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise OmniOPDError(f"{path}: not a plain training state, refused (a {type(state).__name__}, not a dict)")
    return state


class StageClock:
    """Seconds per stage of a step, logged as time/<stage> and reset each step:
        with run.clock("teacher"): ...
    On CUDA it waits for the GPU at both ends, so a stage is charged for the kernels it launched."""

    def __init__(self):
        self.seconds = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.seconds[f"time/{stage}"] += time.perf_counter() - started

    def add(self, stage: str, seconds: float) -> None:
        """Seconds measured elsewhere (a background thread's wall time), charged to a stage."""
        self.seconds[f"time/{stage}"] += seconds

    def take(self) -> dict:
        """This step's figures (with the peak GPU memory on CUDA), and a fresh start for the next step."""
        taken = dict(self.seconds)
        self.seconds.clear()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            taken["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return taken


def synchronize():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def device_of(cfg) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


@dataclass
class RunState:
    """Everything a step needs: the models, the teacher, the similarity, the optimizer, the step profile."""
    student: object
    tokenizer: object
    reference: object
    teacher: object
    similarity: object
    optimizer: torch.optim.Optimizer
    step: int = 0
    clock: "StageClock" = field(default_factory=lambda: StageClock())
    lora: object = None   # with --lora-rank: the PEFT model around `student` (saves the adapter; switches it off)
