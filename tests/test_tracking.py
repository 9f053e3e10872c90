"""--report-to tensorboard|wandb (#14): the tracker gets every number of metrics.jsonl under the same name at the
same step, the learning curve from step 0, and fork tables at each evaluation. Both are read back from the
files the libraries wrote: TensorBoard's event file through its own reader, W&B's offline run log through its
own record format."""

import json
import struct
from pathlib import Path

import pytest

import omniopd
import toyworld


def train_briefly(tmp_path, report_to, monkeypatch):
    out = tmp_path / report_to
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code = omniopd.main([*toyworld.world_args("toy"), "--report-to", report_to, "--steps", "2", "--batch-size", "4", "--eval-every", "1",
                         "--eval-size", "4", "--similarity", "lexical", "--out", str(out)])
    assert code == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, lines


def numbers_by_step(lines):
    """{(name, step): value} of every number in metrics.jsonl."""
    return {(k, line["step"]): v for line in lines for k, v in line.items()
            if k != "step" and isinstance(v, (int, float))}


def check_fork_rows(rows):
    """Each fork: K draft rows whose p̂ sums to 1, then its teacher continuations."""
    forks = {}
    for fork, who, text, target in rows:
        forks.setdefault(fork, []).append((who, target))
    assert forks
    for entries in forks.values():
        drafts = [t for who, t in entries if who.startswith("draft")]
        assert len(drafts) == omniopd.Config().num_drafts and abs(sum(drafts) - 1) < 1e-3
        assert any(who.startswith("teacher") for who, _ in entries)


def test_tensorboard_gets_every_metric_the_curve_and_forks(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, lines = train_briefly(tmp_path, "tensorboard", monkeypatch)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    expected = numbers_by_step(lines)
    assert set(expected) <= set(logged)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert [step for tag, step in sorted(logged) if tag == "eval/accuracy"] == [0, 1, 2]   # before, during, after
    texts = events.Tensors("fork_table/text_summary")
    assert [t.step for t in texts] == [1, 2]
    table = texts[-1].tensor_proto.string_val[0].decode()
    rows = []
    for line in table.splitlines()[2:]:
        fork, who, text, target = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.append((int(fork), who, text, float(target) if target else None))
    check_fork_rows(rows)


def wandb_records(run_file: Path):
    """The records of a W&B offline run file (LevelDB's log format: 32 KiB blocks of CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2
    data, position, pending = run_file.read_bytes(), 7, b""   # 7: the ':W&B' header and its version
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:   # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):   # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_gets_every_metric_and_fork_tables(tmp_path, monkeypatch):
    out, lines = train_briefly(tmp_path, "wandb", monkeypatch)
    run_folder, = (out / "wandb").glob("offline-run-*")
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
               for record in wandb_records(next(run_folder.glob("run-*.wandb")))
               if record.WhichOneof("record_type") == "history"]
    logged = {(k, row["_step"]): v for row in history for k, v in row.items() if not k.startswith(("_", "fork_table/"))}
    expected = numbers_by_step(lines)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert sorted(step for name, step in logged if name == "eval/accuracy") == [0, 1, 2]
    tables = sorted(run_folder.glob("files/media/table/fork_table_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["fork", "who", "text", "p̂"]
    check_fork_rows(table["data"])
    assert (out / "wandb_id.txt").read_text().strip() in run_folder.name
