"""--data and --eval-data through the `datasets` library (#14): datasets are built here with `datasets` itself
and read through the same load_dataset call a Hub id takes (a folder in the Hub's layout, with configs declared
in its README as openai/gsm8k does), plus save_to_disk folders and Parquet, JSON and CSV files."""

import json

import datasets
import pytest

import omniopd
from omniopd_lib import data
from omniopd_lib import grading
import toyworld
from omniopd_lib.common import OmniOPDError

GSM8K_README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
---
"""


@pytest.fixture(scope="module")
def gsm8k_like(tmp_path_factory):
    """A folder laid out as the Hub repository openai/gsm8k is: two configs, Parquet shards, configs in README."""
    folder = tmp_path_factory.mktemp("gsm8k")
    for config, split, seed in (("main", "train", 0), ("main", "test", 1), ("socratic", "train", 2)):
        (folder / config).mkdir(exist_ok=True)
        rows = toyworld.make_problems(6, split, seed)
        if config == "socratic":
            rows = [{**r, "answer": "Socratic: " + r["answer"]} for r in rows]
        datasets.Dataset.from_list(rows).to_parquet(str(folder / config / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(GSM8K_README)
    return folder


def test_a_hub_layout_folder_by_config_and_split(gsm8k_like):
    expected = toyworld.make_problems(6, "train", 0)
    assert data.load_rows(f"{gsm8k_like}:main:train", "test", 0) == expected      # the named split wins
    assert data.load_rows(f"{gsm8k_like}:main:test", "train", 0) == toyworld.make_problems(6, "test", 1)
    socratic = data.load_rows(f"{gsm8k_like}:socratic:train", "train", 0, size=2)
    assert len(socratic) == 2 and socratic[0]["answer"].startswith("Socratic: ")


@pytest.mark.parametrize("spec, says", [
    (":main:validation", "validation"),          # unknown split
    (":nope:train", "nope"),                    # unknown config
    (":a:b:c", "expected NAME"),                # too many parts
])
def test_bad_names_are_one_line(gsm8k_like, spec, says):
    with pytest.raises(OmniOPDError) as caught:
        data.load_rows(f"{gsm8k_like}{spec}", "train", 0)
    message = str(caught.value)
    assert says in message and "\n" not in message, message


def test_math500_like_fields_and_bare_gold_answers(tmp_path):
    """HuggingFaceH4/MATH-500's shape: one test.jsonl at the top, problem/solution/answer, answers like
    \\frac{1}{2}: the gold answer is the field whole (the last number would be 2)."""
    folder = tmp_path / "math500"
    folder.mkdir()
    records = [{"problem": "Halve 1.", "solution": "Half of 1 is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}"},
               {"problem": "What is 6 times 7?", "solution": "$6 \\cdot 7 = \\boxed{42}$", "answer": "42"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = data.load_rows(f"{folder}:test", "train", 0)
    assert rows == [{"question": r["problem"], "answer": r["answer"]} for r in records]
    assert grading.answers_match(grading.extract_answer("so it is \\boxed{0.5}"), grading.gold_answer(rows[0]["answer"]))
    assert not grading.answers_match(grading.extract_answer("so it is \\boxed{2}"), grading.gold_answer(rows[0]["answer"]))
    by_solution = data.load_rows(f"{folder}:test", "train", 0, answer_field="solution")
    assert grading.gold_answer(by_solution[1]["answer"]) == "42"


def test_save_to_disk_files_and_fields(tmp_path):
    rows = toyworld.make_problems(4, "train", 3)
    dict_folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(dict_folder))
    assert data.load_rows(str(dict_folder), "train", 0) == rows
    assert data.load_rows(str(dict_folder), "test", 0) == rows[:1]
    with pytest.raises(OmniOPDError, match="no split 'validation'; it has train, test"):
        data.load_rows(f"{dict_folder}:validation", "train", 0)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "rows.csv"), index=False)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    for name in ("rows.parquet", "rows.csv", "rows.json"):
        assert data.load_rows(str(tmp_path / name), "train", 0) == rows, name
    # other field names, given by flag; and TRL's conversational rows
    renamed = [{"q": r["question"], "gold": r["answer"]} for r in rows]
    datasets.Dataset.from_list(renamed).to_parquet(str(tmp_path / "renamed.parquet"))
    assert data.load_rows(str(tmp_path / "renamed.parquet"), "train", 0, question_field="q",
                             answer_field="gold") == rows
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": r["answer"]}]} for r in rows]
    datasets.Dataset.from_list(chats).to_parquet(str(tmp_path / "chats.parquet"))
    assert data.load_rows(str(tmp_path / "chats.parquet"), "train", 0) == rows


def test_missing_field_empty_split_and_unknown_dataset_are_one_line(tmp_path):
    datasets.Dataset.from_list([{"text": "no question here"}]).to_parquet(str(tmp_path / "plain.parquet"))
    with pytest.raises(OmniOPDError, match=r"row 1: missing field 'question' \(or problem, prompt, messages\)"):
        data.load_rows(str(tmp_path / "plain.parquet"), "train", 0)
    with pytest.raises(OmniOPDError, match="row 1: missing field 'text2'"):
        data.load_rows(str(tmp_path / "plain.parquet"), "train", 0, question_field="text2")
    datasets.Dataset.from_dict({"question": [], "answer": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(OmniOPDError, match="no rows"):
        data.load_rows(str(tmp_path / "empty.parquet"), "train", 0)
    with pytest.raises(OmniOPDError, match="data file not found"):
        data.load_rows(str(tmp_path / "absent.parquet"), "train", 0)
    with pytest.raises(OmniOPDError) as caught:   # no Hub here: the library's reason, in one line
        data.load_rows("no-such-owner/no-such-dataset:train", "train", 0)
    assert str(caught.value).startswith("cannot fetch dataset no-such-owner/no-such-dataset (config None, split "
                                        "train) from the Hugging Face Hub")
    assert "\n" not in str(caught.value)


def test_the_cli_trains_and_evaluates_from_a_hub_layout_folder(gsm8k_like, tmp_path, capsys):
    code = omniopd.main(["--student", "toy", "--teacher", "toy", "--data", f"{gsm8k_like}:main:train", "--eval-data", f"{gsm8k_like}:main:test",
                         "--steps", "1", "--batch-size", "2", "--method", "sft", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    evaluated = [json.loads(line) for line in (tmp_path / "run" / "eval-step-000000.jsonl").read_text().splitlines()]
    assert [r["question"] for r in evaluated] == [r["question"] for r in toyworld.make_problems(6, "test", 1)]
