"""The step functions on a tokenizer shaped like Qwen2.5's (conftest.qwen_like_path): byte-level BPE with
merges, id 0 the ordinary "!", pad <|endoftext|> ≠ EOS <|im_end|>, both of them stop tokens, a chat template.
Where the tiny random model would rarely produce a case by chance, the case is written out as the ids
generate() returns (stop token, then pad)."""

import pytest
import torch

import omniopd
from omniopd import teacher_prefix_texts
from omniopd_lib import models
from omniopd_lib import generation, grading
from omniopd_lib.common import OmniOPDError
from omniopd_lib.generation import decode_after, encode_prompts, response_texts, stop_token_ids

CPU = torch.device("cpu")
TEMPLATE = omniopd.Config.prompt_template


@pytest.fixture(scope="module")
def qwen_like(qwen_like_path):
    return models.load_model(qwen_like_path, "student", CPU)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fixed_rollout(tokenizer, questions, responses, monkeypatch=None):
    """Prompts and the given responses padded as generate() pads them: a finished row (one that ends in a stop
    token) gets pad ids up to the longest row, which is never padded."""
    prompts = encode_prompts(tokenizer, questions, TEMPLATE, CPU)
    width = max(len(r) for r in responses)
    padded = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in responses])
    if monkeypatch:
        for module in (omniopd, grading):   # sampling (omniopd.sample_rollouts) and evaluation (grading.evaluate)
            monkeypatch.setattr(module, "generate", lambda *args, **kwargs: padded)
    return prompts, padded


def test_both_stop_tokens_end_the_rollout_mask(qwen_like, monkeypatch):
    model, tokenizer = qwen_like
    end_of_text, im_end = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert stop_token_ids(model, tokenizer) == sorted([end_of_text, im_end])
    responses = [ids_of(tokenizer, "7+5=12.") + [im_end], ids_of(tokenizer, "!!") + [end_of_text],
                 ids_of(tokenizer, "no stop at all")]
    fixed_rollout(tokenizer, ["a", "b", "c"], responses, monkeypatch)
    rollout = omniopd.sample_rollouts(model, tokenizer, ["a", "b", "c"], omniopd.Config(max_new_tokens=8))
    assert rollout.response_mask_B_T.sum(1).tolist() == [len(r) for r in responses[:2]] + [len(responses[2])]
    assert response_texts(tokenizer, rollout) == ["7+5=12.", "!!", "no stop at all"]   # id 0 is "!"


def test_drafts_are_cut_after_either_stop_token(qwen_like, monkeypatch):
    model, tokenizer = qwen_like
    response = ids_of(tokenizer, "7+5=12") + [tokenizer.pad_token_id]        # <|endoftext|> ends this one
    prompts, padded = fixed_rollout(tokenizer, ["a"], [response])
    rollout = omniopd.Rollout(prompts.input_ids, prompts.attention_mask, padded,
                              (torch.arange(padded.shape[1]) < len(response)).long()[None])
    drafts = omniopd.draft_chunks(model, tokenizer, rollout, [(0, 2)], num_drafts=3, chunk_len=16, temperature=1.0)
    assert drafts.chunk_ids[0][0] == response[2:]
    stops = set(stop_token_ids(model, tokenizer))
    for chunk in drafts.chunk_ids[0]:
        assert not any(t in stops for t in chunk[:-1]) and 1 <= len(chunk) <= 16


def test_the_teachers_prefix_joins_its_continuation_without_lost_or_doubled_spaces(qwen_like):
    model, tokenizer = qwen_like
    question = "Ann has 7 pens. She gets 5 more, then gives 3 away. How many pens now?"
    response = ids_of(tokenizer, "She had 7 pens and gets 5 more, so 7+5=12. Then 12-3=9.\n#### 9")
    prompts, padded = fixed_rollout(tokenizer, [question], [response + [tokenizer.eos_token_id]])
    rollout = omniopd.Rollout(prompts.input_ids, prompts.attention_mask, padded, torch.ones_like(padded))
    full = TEMPLATE.format(question=question) + tokenizer.decode(response)
    for t in range(1, len(response)):
        prefix = teacher_prefix_texts(tokenizer, rollout, [(0, t)], [question], omniopd.Config())[0]
        prompt_ids = prompts.input_ids[0].tolist()
        rest = decode_after(tokenizer, prompt_ids + response[:t], response[t:])
        assert prefix + rest == full, t


def test_evaluation_reads_the_answer_before_the_padding(qwen_like, monkeypatch):
    model, tokenizer = qwen_like
    fixed_rollout(tokenizer, ["q1", "q2"], [ids_of(tokenizer, "7+5=12.\n#### 12") + [tokenizer.eos_token_id],
                                            ids_of(tokenizer, "#### 13") + [tokenizer.pad_token_id]], monkeypatch)
    rows = [{"question": "q1", "answer": "#### 12"}, {"question": "q2", "answer": "#### 12"}]
    accuracy, records = grading.evaluate(model, tokenizer, rows, omniopd.Config(max_new_tokens=8))
    assert [r["output"] for r in records] == ["7+5=12.\n#### 12", "#### 13"] and accuracy == 0.5


def test_chat_prompts_use_the_students_template_and_the_teacher_sees_plain_text(qwen_like):
    model, tokenizer = qwen_like
    encoded = encode_prompts(tokenizer, ["What is 2+3?"], "chat", CPU, system_prompt="Be brief.")
    text = tokenizer.decode(encoded.input_ids[0])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    response = ids_of(tokenizer, "2+3=5.")
    padded = torch.tensor([response])
    rollout = omniopd.Rollout(encoded.input_ids, encoded.attention_mask, padded, torch.ones_like(padded))
    cfg = omniopd.Config(prompt_template="chat")
    assert teacher_prefix_texts(tokenizer, rollout, [(0, 3)], ["What is 2+3?"], cfg) == [
        "Question: What is 2+3?\nAnswer: 2+3"]
    characters = __import__("toyworld").build_char_tokenizer()   # no chat template
    with pytest.raises(OmniOPDError, match="no chat template"):
        generation.format_prompts(characters, ["x"], "chat")


def test_a_chat_formatted_student_trains_end_to_end(qwen_like_path, tmp_path):
    cfg = omniopd.Config(student=qwen_like_path, teacher=qwen_like_path, data="toy", prompt_template="chat",
                         system_prompt="Answer briefly.", steps=1, batch_size=2, eval_size=4, max_new_tokens=12,
                         chunk_len=4, num_drafts=2, teacher_samples=2, similarity="lexical", entropy_threshold=0.0,
                         out=str(tmp_path / "run")).resolved()
    summary = omniopd.train(cfg)
    assert 0.0 <= summary["after"]["eval/accuracy"] <= 1.0 and "teacher" in summary
