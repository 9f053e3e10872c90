"""Grading an answer: the final answer of a math solution checked mathematically, or a program run against its
row's tests in the sandbox; and greedy pass@1 (with mean@n) over held-out rows."""

import math
import re

import torch

from omniopd_lib import codetask
from omniopd_lib.generation import encode_prompts, generate


def extract_answer(text: str):
    """Final answer of a solution: the last \\boxed{...} (braces balanced at any depth), else '#### n', else the
    last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1] if numbers else None


def last_boxed(text: str):
    """What the last closed \\boxed{...} holds, read brace by brace (\\boxed{\\frac{\\sqrt{3}}{2}} holds
    \\frac{\\sqrt{3}}{2}); None when there is none."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth = 0
        for end in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[start + len("\\boxed{"):end]
        start = text.rfind("\\boxed{", 0, start)   # never closed: the one before it
    return None


def gold_answer(reference):
    """The reference's final answer: extract_answer's for a worked solution (one with \\boxed, '####' or
    several lines); a bare reference (MATH-500's answer field: \\left( 3, \\frac{\\pi}{2} \\right)) is the
    answer whole, at any length, where the last-number rule would read 2."""
    text = str(reference or "").strip()
    if "\\boxed" in text or "####" in text or "\n" in text:
        return extract_answer(text)
    return text or None


def answers_match(predicted, gold) -> bool:
    """Compared mathematically by math-verify (1,000 = 1000.0, \\frac{1}{2} = 0.5, x+1 = 1+x); plain numbers
    first, since that needs no parser. Call from the main thread: math-verify's time limit uses signals."""
    if predicted is None or gold is None:
        return False
    try:
        return math.isclose(float(predicted.replace(",", "")), float(gold.replace(",", "")), rel_tol=1e-6)
    except ValueError:
        pass
    from math_verify import parse, verify
    return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))


def grade(rows, texts, cfg) -> list[dict]:
    """Each answer text checked against its row. Math: its final answer against the gold one (answers_match).
    Code: its program (the prompt's code and the completion cut at the function's end) run against the row's
    tests in the sandbox, --checker-workers at a time (codetask.check). Each record has "correct" and
    "reward", GRPO's r_i: 1 when correct, or with --code-reward fraction the share of tests passed."""
    if cfg.task == "code":
        programs = [codetask.program_of(row, text) for row, text in zip(rows, texts)]
        limits = codetask.Limits(seconds=cfg.checker_timeout, memory_mb=cfg.checker_memory_mb)
        verdicts = codetask.check_many(programs, [row["tests"] for row in rows], limits, cfg.checker_workers)
        return [{"program": program, "reason": v.reason, "correct": v.passed,
                 "reward": v.fraction if cfg.code_reward == "fraction" else float(v.passed)}
                for program, v in zip(programs, verdicts)]
    records = []
    for row, text in zip(rows, texts):
        gold, predicted = gold_answer(row["answer"]), extract_answer(text)
        correct = answers_match(predicted, gold)
        records.append({"predicted": predicted, "gold": gold, "correct": correct, "reward": float(correct)})
    return records


@torch.no_grad()
def evaluate(model, tokenizer, rows, cfg, samples=0, batch_size=64):
    """Greedy pass@1: the share of rows whose generated answer is correct (grade: the final answer matches, or
    the program passes its tests). With samples = n, each record also holds the share of n answers sampled at
    temperature τ that are correct (mean@n)."""
    was_training = model.training
    model.eval()
    records = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts = encode_prompts(tokenizer, [r["question"] for r in chunk], cfg.prompt_template, model.device,
                                 cfg.system_prompt)
        greedy = generate(model, tokenizer, prompts.input_ids, prompts.attention_mask, cfg.max_new_tokens, 0.0)
        sampled = tokenizer.batch_decode(generate(model, tokenizer, prompts.input_ids, prompts.attention_mask,
                                                  cfg.max_new_tokens, cfg.temperature, n=samples),
                                         skip_special_tokens=True) if samples else []
        texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)
        for row, text, graded in zip(chunk, texts, grade(chunk, texts, cfg)):
            graded.pop("reward")
            records.append({"question": row["question"], "output": text, **graded})
        if samples:
            repeated = [row for row in chunk for _ in range(samples)]
            correct = [g["correct"] for g in grade(repeated, sampled, cfg)]
            for i, record in enumerate(records[-len(chunk):]):
                record["sampled_correct"] = sum(correct[i * samples:(i + 1) * samples]) / samples
    model.train(was_training)
    return sum(r["correct"] for r in records) / max(len(records), 1), records
