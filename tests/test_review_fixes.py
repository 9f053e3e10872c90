"""Defects found by a line-by-line review (issue #15), each pinned by a test that failed before its fix.

They hide on the toy world: its models carry no sampling defaults, its tokenizer's id 0 is special,
and every scale/ test runs on gloo. So these tests use a Qwen2.5-shaped model (conftest.qwen_like_path),
real loopback servers, and a process group that refuses CPU tensors the way nccl does."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import omniopd
from omniopd_lib.common import RunState
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import data
from omniopd_lib import models
from omniopd_lib import teachers
import toyworld
from conftest import ROOT
from scale import train as scale_train
from scale.teachers import TeacherPool
from omniopd_tools.serve import FaultPlan
from omniopd_baselines import grpo_collect
from omniopd_lib.common import OmniOPDError
from omniopd_lib.data import batch_rows
from omniopd import smooth_entropy
from omniopd_lib.generation import completion_nll, encode_prompts, generate, response_texts
from omniopd_lib.runs import setup

CPU = torch.device("cpu")
TEMPLATE = omniopd.Config.prompt_template
KEY_ENV, KEY = "REVIEW_TEST_KEY", "sk-review-test-0123"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


# 1. scale/ on GPUs -----------------------------------------------------------

def test_scale_exchanges_go_through_when_the_default_group_refuses_cpu_tensors(serve):
    """nccl has no CPU backend. A default group mapped for CUDA only ("cuda:gloo") refuses CPU tensors the same
    way on a CPU machine; counts, metrics and the teacher's answers must still be exchanged."""
    _, url = serve("echo")
    dist.init_process_group("cuda:gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        with pytest.raises(RuntimeError, match="device type cpu"):
            dist.all_reduce(torch.zeros(1, dtype=torch.float64))      # what the old all_reduce did
        scale_train.init_control_group(wait_minutes=1)
        assert scale_train.all_reduce([3.0, 4.0]) == [3.0, 4.0]
        assert scale_train.combine_metrics({"loss/total": 1.5, "forks/count": 2}, 8, ("forks/count",)) == {
            "loss/total": 1.5, "forks/count": 2}
        teacher = scale_train.GatheredTeacher(TeacherPool(["openai:echo"], url, KEY_ENV, "completion"), 0, 1)
        assert teacher.continuations(["a b c"], n=2, max_tokens=4) == [[" and so on after c"] * 2]
    finally:
        dist.destroy_process_group()
        scale_train.CONTROL = None


# 2. sampling settings of the checkpoint ---------------------------------------

def test_greedy_is_greedy_whatever_the_checkpoint_generation_config_says(qwen_like_path):
    model, tokenizer = models.load_model(qwen_like_path, "student", CPU)
    assert model.generation_config.top_k == 20 and model.generation_config.do_sample   # Instruct defaults
    prompts = encode_prompts(tokenizer, ["Ann has 3 pens.", "Ben has 12 cats. How many?"], TEMPLATE, CPU)
    outputs = []
    for seed in range(3):
        torch.manual_seed(seed)
        outputs.append(generate(model, tokenizer, prompts.input_ids, prompts.attention_mask, 12, 0.0))
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])
    first_logits = omniopd.response_logits(model, omniopd.Rollout(prompts.input_ids, prompts.attention_mask,
                                                                  outputs[0], torch.ones_like(outputs[0])))[:, 0]
    assert outputs[0][:, 0].tolist() == first_logits.argmax(-1).tolist()
    assert model.generation_config.top_k == 20, "the checkpoint's own config is left as it was"


def test_samples_come_from_the_plain_softmax_at_temperature(qwen_like_path):
    """4000 first tokens sampled at τ = 0.8 are exactly torch.multinomial(softmax(logits / 0.8)) drawn from the
    same random stream: no top-k, top-p, or repetition penalty (1.05 alone changes 4 of the 4000) came along."""
    model, tokenizer = models.load_model(qwen_like_path, "student", CPU)
    prompt = encode_prompts(tokenizer, ["Ann has 3 pens."], TEMPLATE, CPU)
    torch.manual_seed(0)
    sampled = generate(model, tokenizer, prompt.input_ids, prompt.attention_mask, 1, 0.8, n=4000)[:, 0]
    with torch.no_grad():
        probs = torch.softmax(model(**prompt).logits[0, -1].float() / 0.8, -1)
    torch.manual_seed(0)
    assert torch.equal(sampled, torch.multinomial(probs.expand(4000, -1), 1)[:, 0])
    assert len(sampled.unique()) > 100


# 3. GRPO's reward after EOS ----------------------------------------------------

def test_grpo_rewards_a_right_answer_that_generate_padded(qwen_like_path, monkeypatch):
    """In Qwen2.5's vocabulary id 0 is "!": zeroing the tokens after EOS turned '#### 12' into '#### 12!!!'."""
    model, tokenizer = models.load_model(qwen_like_path, "student", CPU)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    right, wrong = encode("7+5=12.\n#### 12") + [tokenizer.eos_token_id], encode("7+5=13.\n#### 13")
    width = max(len(right), len(wrong)) + 3
    rows = [ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in (right, wrong)]   # as generate() pads
    masks = [[1] * len(ids) + [0] * (width - len(ids)) for ids in (right, wrong)]
    prompts = encode_prompts(tokenizer, ["q", "q"], TEMPLATE, CPU)
    rollout = omniopd.Rollout(prompts.input_ids, prompts.attention_mask, torch.tensor(rows), torch.tensor(masks))
    assert response_texts(tokenizer, rollout) == ["7+5=12.\n#### 12", "7+5=13.\n#### 13"]
    monkeypatch.setattr(omniopd, "sample_rollouts", lambda *args: rollout)   # the rollout above, not a sample
    run = RunState(model, tokenizer, None, None, None, None)
    batch = grpo_collect(run, [{"question": "q", "answer": "#### 12"}] * 2, omniopd.Config(group_size=2))
    assert batch.metrics["grpo/reward"] == 0.5
    assert batch.advantages_B[0] > 0 > batch.advantages_B[1]


# 4. entropy smoothing ------------------------------------------------------------

def test_smoothing_is_centred_replicates_edges_and_stays_on_the_entropys_device():
    entropy = torch.tensor([1.0, 3.0, 2.0, 6.0, 4.0])
    # w = 3 over [1, 1, 3, 2, 6, 4, 4] (edges replicated): (1+1+3)/3, (1+3+2)/3, ...
    assert smooth_entropy(entropy, 3).tolist() == pytest.approx([5 / 3, 2, 11 / 3, 4, 14 / 3])
    # w = 2: weights ¼, ½, ¼ centred on t (the 2×2 centred average)
    assert smooth_entropy(entropy, 2).tolist() == pytest.approx([1.5, 2.25, 3.25, 4.5, 4.5])
    assert smooth_entropy(torch.ones(7, device="meta"), 4).device.type == "meta"


@pytest.mark.parametrize("entropy, window, threshold, expected", [
    ([0.0, 0.0, 4.0, 0.0, 0.0, 0.0], 2, 0.5, [2]),   # an even window must not shift the peak to 3 or split it
    ([3.0, 1.0, 0.0, 0.0, 0.0, 0.0], 3, 2.0, [0]),   # zero padding pulled the first token under h_min
])
def test_smoothed_forks_stay_where_the_entropy_peaks(entropy, window, threshold, expected):
    entropy_B_T = torch.tensor([entropy])
    forks = omniopd.select_forks(entropy_B_T, torch.ones_like(entropy_B_T), 4, 1, threshold, window=window)
    assert forks == [(0, t) for t in expected]


# 5. the teacher cache and independent samples ---------------------------------------

def test_teacher_cache_gives_paid_answers_back_to_the_same_draw_only(serve, tmp_path, monkeypatch):
    server, url = serve("toy")   # samples at temperature 1: a new request is a new sample

    def pool():
        return TeacherPool(["openai:toy"], url, KEY_ENV, "chat", cache_path=tmp_path / "cache.sqlite", retries=0)
    rows = toyworld.make_problems(2, "train", 0)
    prefixes = [TEMPLATE.format(question=rows[0]["question"])] * 2 + [TEMPLATE.format(question=rows[1]["question"])]
    first = pool()
    answers = first.continuations(prefixes, n=2, max_tokens=8, draw="seed 0 step 0")
    # the repeated prefix went out once, and each prefix's two samples are one request (n = 2)
    assert first.calls == server.requests_received == 2
    assert answers[0] == answers[1]
    resumed = pool()
    assert resumed.continuations(prefixes, n=2, max_tokens=8, draw="seed 0 step 0") == answers
    assert resumed.calls == 0 and resumed.cached == 4
    for draw in ("seed 0 step 1", "seed 1 step 0"):        # a later step or another seed samples afresh
        fresh = pool()
        fresh.continuations(prefixes, n=2, max_tokens=8, draw=draw)
        assert fresh.cached == 0 and fresh.calls == 2
    monkeypatch.setattr(teachers, "CHAT_CONTINUE_PROMPT", "Continue: {prefix}")
    reworded = pool()
    reworded.continuations(prefixes, n=2, max_tokens=8, draw="seed 0 step 0")
    assert reworded.cached == 0, "another prompt template is another request"


def test_each_step_asks_the_teacher_under_its_own_draw():
    cfg = omniopd.Config(batch_size=4, seed=5, **toyworld.world_options("toy")).resolved()
    run = setup(dataclasses.replace(cfg, similarity="lexical"))
    draws = []
    real = run.teacher.continuations
    run.teacher.continuations = lambda prefixes, n, max_tokens, draw, rows=None: draws.append(draw) or real(prefixes, n, max_tokens)
    rows = data.load_rows("toy", "train", 5, 100)
    for step in (0, 1):
        run.step = step
        omniopd.omniopd_collect(run, batch_rows(rows, step, cfg), cfg)
    assert draws == ["seed 5 step 0", "seed 5 step 1"]



# 6. GRPO groups and ranks -------------------------------------------------------------

def test_scale_refuses_grpo_groups_split_over_ranks(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           str(ROOT / "scale/train.py"), "--method", "grpo", "--batch-size", "4", "--group-size", "4",
                           "--steps", "1", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode != 0
    errors = {line for line in done.stderr.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1 and "not a multiple of --group-size 4" in errors.pop()   # the same line from each rank
    assert not (tmp_path / "run/metrics.jsonl").exists()


# 7. an empty continuation ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_every_teacher_backend_keeps_an_empty_continuation_that_stopped(serve, mode):
    """After a finished solution the toy teacher says nothing and stops: a vote for ending here, which the
    student's own draft [EOS] (decoded: "") can receive, from a local teacher and an API teacher alike."""
    rows = toyworld.make_problems(2, "test", 0)
    finished = [TEMPLATE.format(question=r["question"]) + r["answer"] for r in rows]
    _, url = serve("toy")
    local = HFTeacher("toy", CPU, mode="completion", temperature=0.0)
    api = teachers.OpenAITeacher("toy", url, KEY_ENV, mode, temperature=0.0)
    pool = TeacherPool(["openai:toy"], url, KEY_ENV, mode, temperature=0.0, retries=0)
    for teacher in (local, api, pool):
        assert teacher.continuations(finished, n=2, max_tokens=8) == [["", ""], ["", ""]], type(teacher).__name__
        assert teacher.failures == 0
    assert Similarity("lexical").matrices([["", "7+5=12."]], [[""]])[0].tolist() == [[1.0], [0.0]]


def test_an_empty_reply_cut_at_the_token_limit_is_a_failed_request(serve):
    """What a reasoning model returns when thinking used every token: no answer, on every backend."""
    _, url = serve("toy", faults=FaultPlan(rate=1.0, kinds=("empty",)))
    api = teachers.OpenAITeacher("toy", url, KEY_ENV, "completion", retries=0)
    pool = TeacherPool(["openai:toy"], url, KEY_ENV, "completion", retries=0)
    for teacher in (api, pool):
        assert teacher.continuations(["Question: 1+1?\nAnswer: "], n=2, max_tokens=8) == [None]
        assert teacher.failures == 2
    assert teachers.teacher_answer("", stopped=False) is None and teachers.teacher_answer(" \n", stopped=True) == ""


# 8. similarity and votes --------------------------------------------------------------------

def test_an_encoder_that_cannot_load_stops_the_run_with_one_line(tmp_path, capsys):
    with pytest.raises(OmniOPDError, match="cannot load .*--similarity lexical"):
        Similarity("embed", str(tmp_path / "no-such-encoder"))
    code = omniopd.main([*toyworld.world_args("toy"), "--similarity-model", str(tmp_path / "no-such-encoder"), "--steps", "1", "--batch-size", "2",
                         "--eval-size", "2", "--out", str(tmp_path / "run")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "sentence encoder" in errors[0]
    assert json.loads((tmp_path / "run/config.json").read_text())["similarity"] == "embed"
    assert not (tmp_path / "run/metrics.jsonl").exists(), "no step ran under another similarity"


def test_vote_threshold_zero_means_every_rollout_votes():
    S = torch.tensor([[-0.2, -0.5], [-0.4, -0.1]])      # cosines can be negative: nothing resembles anything
    p = omniopd.dirichlet_preference(S, alpha=1.0, vote_temperature=0.1)
    votes = torch.softmax(S / 0.1, dim=0).sum(1)          # both rollouts vote: M = 2
    assert p.tolist() == pytest.approx(((votes + 0.5) / 3).tolist())
    with pytest.raises(OmniOPDError, match="--vote-threshold"):
        omniopd.check_config(omniopd.Config(vote_threshold=-0.5).resolved())


# Review items --------------------------------------------------------------------------------

def test_the_teacher_may_write_2L_of_its_tokens_and_its_text_is_cut_to_L_student_tokens(serve):
    server, url = serve("echo")     # answers " and so on after <the prompt's last word>"
    teacher = teachers.OpenAITeacher("echo", url, KEY_ENV, "completion")
    characters = toyworld.build_char_tokenizer()      # one token per character
    assert omniopd.teacher_rollouts(teacher, ["a b c"], 2, 4, characters).wait() == [[" and"] * 2]
    assert [(body["max_tokens"], body["n"]) for body in server.bodies] == [(8, 2)]   # both samples, one request
    assert omniopd.teacher_rollouts(teacher, ["a b c"], 1, 4, characters, max_tokens=50).wait()[0] == [" and"]
    assert server.bodies[-1]["max_tokens"] == 50


def test_reasoning_teachers_get_max_completion_tokens_and_the_effort(serve):
    """OpenAI's reasoning models answer max_tokens with HTTP 400; they take max_completion_tokens."""
    server, url = serve("echo")
    api = teachers.OpenAITeacher("echo", url, KEY_ENV, "chat", reasoning_effort="low")
    pool = TeacherPool(["openai:echo"], url, KEY_ENV, "chat", reasoning_effort="low")
    for teacher in (api, pool):
        assert teacher.continuations(["Question: 1+1?\nAnswer: "], n=1, max_tokens=300)[0]
        body = server.bodies[-1]
        assert body["max_completion_tokens"] == 300 and body["reasoning_effort"] == "low" and "max_tokens" not in body
    plain = teachers.OpenAITeacher("echo", url, KEY_ENV, "chat")
    plain.continuations(["x"], n=1, max_tokens=30)
    assert server.bodies[-1]["max_tokens"] == 30 and "reasoning_effort" not in server.bodies[-1]


def test_students_and_completion_teachers_see_the_bos_their_tokenizer_adds(bos_model_path):
    model, tokenizer = models.load_model(bos_model_path, "student", CPU)
    bos = tokenizer.bos_token_id
    torch.manual_seed(0)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["Ann has 3 pens.", "Ben?"], omniopd.Config(max_new_tokens=4))
    for ids, mask in zip(rollout.prompt_ids_B_P, rollout.prompt_mask_B_P):
        assert ids[mask.bool()][0].item() == bos
    question, answer = "Ann has 3 pens.", "3+2=5."
    prompt = tokenizer(TEMPLATE.format(question=question))["input_ids"]
    completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert prompt[0] == bos
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + completion])).logits[0], -1)
        nll = -sum(logp[len(prompt) - 1 + j, c] for j, c in enumerate(completion)) / len(completion)
        assert completion_nll(model, tokenizer, [question], [answer], TEMPLATE).item() == pytest.approx(nll.item(), abs=1e-5)
    teacher = HFTeacher(bos_model_path, CPU, mode="completion", temperature=0.0)
    prefix = "Question: Ann has 3 pens.\nAnswer: 3"
    ids = torch.tensor([tokenizer(prefix)["input_ids"]])
    expected = generate(model, tokenizer, ids, torch.ones_like(ids), 6, 0.0)
    assert teacher.continuations([prefix], 1, 6)[0][0] == tokenizer.decode(expected[0], skip_special_tokens=True)


@pytest.mark.parametrize("kind, expected", [("think", [["7+5=12. ", "7+5=12. "]]), ("think_unfinished", [None])])
def test_a_think_block_is_stripped_and_unfinished_thinking_is_no_answer(serve, kind, expected):
    """Reasoning models (Qwen3, R1 distills) write <think>...</think> before the answer."""
    _, url = serve("toy", faults=FaultPlan(rate=1.0, kinds=(kind,)))
    prefix = [TEMPLATE.format(question="Ann has 7 pens. She gets 5 more, then gives 3 away. How many pens now?")]
    for teacher in (teachers.OpenAITeacher("toy", url, KEY_ENV, "completion", temperature=0.0, retries=0),
                    TeacherPool(["openai:toy"], url, KEY_ENV, "completion", temperature=0.0, retries=0)):
        assert teacher.continuations(prefix, n=2, max_tokens=8) == expected
        assert teacher.failures == (2 if expected == [None] else 0)


def test_under_bf16_autocast_the_students_logits_come_from_an_fp32_head(tiny_model_path):
    """bench/bf16_logits.py measured the anchor KL 24 % off with bf16 logits, 7 % with the head in fp32."""
    model, tokenizer = models.load_model(tiny_model_path, "student", CPU)
    ids = torch.tensor([tokenizer("Ann has 3 pens.")["input_ids"]])
    keys = list(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16        # what autocast does to a plain head
        models.fp32_output_head(model)
        logits = model(input_ids=ids).logits
        hidden = model.model(input_ids=ids).last_hidden_state
    assert logits.dtype == torch.float32
    assert torch.equal(logits, hidden.float() @ model.lm_head.weight.float().T)
    assert list(model.state_dict()) == keys   # checkpoints are unchanged
