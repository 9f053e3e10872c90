"""Build a toy world's teacher and student: `python -m omniopd_tools.build_world [--world stories|code]` (about 25 minutes on 2 CPU cores).
`--world stories-foreign` and `--world stories-foreign-shared` build the story world's foreign teacher (another
dialect, its own tokenizer or the student's) and no student: the story world's student is the one it teaches.

Both are Qwen2 models made from a config, with the character tokenizer, trained by
next-token NLL on worked solutions (completion_nll) and saved with
save_pretrained into toyworld/models/, where `--teacher toy` and `--student toy`
find them. The teacher trains until it is strong (≥ 90 % on held-out problems);
the student is smaller and stops early, as soon as its accuracy on a validation
sample reaches --student-target, so it has room to learn from the teacher.
"""

import argparse
import json
import random
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from omniopd_lib import codetask
import omniopd
from omniopd_lib.generation import PLAIN_TEMPLATE
from omniopd_lib import grading
from omniopd_lib.generation import CODE_TEMPLATE
from omniopd_lib import models
import toyworld
from toyworld import code, stories
from omniopd_lib.generation import completion_nll

# each world's evaluation settings (the student's prompt and how answers are checked)
SETTINGS = {"arithmetic": {"max_new_tokens": 48}, "stories": {"max_new_tokens": 96},
            # the foreign dialect in the student's tokenizer is about twice as many tokens (128 on average, at most 157)
            "stories-foreign": {"max_new_tokens": 96}, "stories-foreign-shared": {"max_new_tokens": 176},
            "code": {"max_new_tokens": 64, "task": "code", "prompt_template": CODE_TEMPLATE}}


def new_model(tokenizer, hidden, layers):
    """A Qwen2 decoder from a config; tied embeddings keep it small."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    return Qwen2ForCausalLM(config)


def accuracy(model, tokenizer, rows, world):
    cfg = omniopd.Config(**SETTINGS[world]).resolved()
    return grading.evaluate(model, tokenizer, rows, cfg)[0]


def train(model, tokenizer, train_rows, valid_rows, max_steps, lr, eval_every, stop_at=None, batch_size=64,
          world="arithmetic"):
    """AdamW with warm-up and linear decay; returns the step it stopped at and its validation accuracy."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / max_steps))
    started, score = time.time(), 0.0
    for step in range(1, max_steps + 1):
        rows = random.Random(step).sample(train_rows, batch_size)
        template = SETTINGS[world].get("prompt_template", PLAIN_TEMPLATE)
        prompts = [template.format(question=r["question"]) + r.get("prefix", "") for r in rows]   # a reading lesson's prefix
        loss = completion_nll(model, tokenizer, prompts, [r["answer"] for r in rows], "{question}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % eval_every == 0 or step == max_steps:
            score = accuracy(model, tokenizer, valid_rows, world)
            print(f"step {step} loss {loss.item():.4f} valid {score:.3f} {time.time() - started:.0f}s", flush=True)
            if stop_at is not None and score >= stop_at:
                break
    return step, score


def world_data(world):
    """The tokenizer, training corpus, validation and test rows, and where each model goes, for one world."""
    if world == "arithmetic":
        train_rows = toyworld.make_problems(20000, "train", seed=1000)
        return (toyworld.build_char_tokenizer(), train_rows, toyworld.make_problems(200, "train", seed=2000),
                toyworld.make_problems(200, "test", seed=0), toyworld.TEACHER_DIR, toyworld.STUDENT_DIR)
    if world == "code":   # as stories: a Zipf-skewed corpus, the task's phrases uniform
        train_rows = as_code_rows(code.make_problems(20000, "train", seed=1000, distribution="zipf", distinct=False))
        texts = [r["question"] + r["answer"] for r in train_rows]
        return (stories.build_word_tokenizer(texts, vocab_size=800), train_rows,
                as_code_rows(code.make_problems(200, "train", seed=2000)), as_code_rows(code.make_problems(200, "test", seed=0)),
                code.TEACHER_DIR, code.STUDENT_DIR)
    if world.startswith("stories-foreign"):
        # the foreign teacher (issue #26): the teacher's corpus (Zipf exponent 1) in the foreign dialect, half of it
        # lessons in reading the student's (issue #32, stories.read_on_lesson), with a tokenizer of its own learned
        # on that text, or ("-shared") the student's, for token-level OPD
        train_rows = (stories.make_problems(10000, "train", seed=1000, distribution="zipf", dialect="foreign")
                      + stories.make_problems(10000, "train", seed=1000, distribution="zipf", dialect="reading"))
        texts = [PLAIN_TEMPLATE.format(question=r["question"]) + r.get("prefix", "") + r["answer"] for r in train_rows]
        tokenizer = (models.load_model(str(stories.STUDENT_DIR), "student", torch.device("cpu"))[1]
                     if world.endswith("-shared") else stories.build_word_tokenizer(texts, vocab_size=800))
        folder = stories.FOREIGN_SHARED_DIR if world.endswith("-shared") else stories.FOREIGN_TEACHER_DIR
        return (tokenizer, train_rows, stories.make_problems(200, "train", seed=2000, dialect="foreign"),
                stories.make_problems(200, "test", seed=0, dialect="foreign"), folder, None)
    # stories: both models learn from the Zipf-skewed corpus; validation and test are the task (uniform verbs)
    train_rows = stories.make_problems(20000, "train", seed=1000, distribution="zipf")
    texts = [PLAIN_TEMPLATE.format(question=r["question"]) + r["answer"] for r in train_rows]
    return (stories.build_word_tokenizer(texts), train_rows, stories.make_problems(200, "train", seed=2000),
            stories.make_problems(200, "test", seed=0), stories.TEACHER_DIR, stories.STUDENT_DIR)


def as_code_rows(records):
    return [codetask.code_row(record, record["task_id"]) for record in records]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=["arithmetic", "stories", "code", "stories-foreign", "stories-foreign-shared"],
                        default="arithmetic", help="stories-foreign(-shared): the foreign teacher alone (issue #26)")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--teacher-target", type=float, default=None,
                        help="stop the teacher when its validation accuracy reaches this (default: train all its steps)")
    parser.add_argument("--student-target", type=float, default=None,
                        help="stop the student when its validation accuracy reaches this (0 = train all its steps; "
                             "default 0.2 for arithmetic, 0 for stories)")
    parser.add_argument("--student-max-steps", type=int, default=1500)
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-eval-every", type=int, default=0, help="0 = every 25 steps with a target, else 250")
    parser.add_argument("--student-corpus", type=int, default=0,
                        help="the student learns from the first N problems of the corpus only (0 = all of it)")
    parser.add_argument("--student-verbs", type=int, default=0,
                        help="stories: the student's corpus has only the N most frequent verbs of each kind (0 = all)")
    parser.add_argument("--student-zipf", type=float, default=None,
                        help=f"stories: the student's corpus draws verbs with this Zipf exponent (default "
                             f"{stories.STUDENT_ZIPF_EXPONENT}; 0 = the teacher's, {stories.ZIPF_EXPONENT})")
    parser.add_argument("--only", choices=["teacher", "student"], default=None)
    args = parser.parse_args()
    if args.student_target is None:
        args.student_target = 0.2 if args.world == "arithmetic" else 0.0
    if args.student_zipf is None:
        args.student_zipf = {"stories": stories.STUDENT_ZIPF_EXPONENT, "code": code.STUDENT_ZIPF_EXPONENT}.get(args.world, 0.0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer, train_rows, valid_rows, test_rows, teacher_dir, student_dir = world_data(args.world)
    report = {}
    for role, hidden, layers, steps, target, every, folder in [
            ("teacher", 128, 4, args.teacher_steps, args.teacher_target, 250, teacher_dir),
            ("student", args.student_hidden, args.student_layers, args.student_max_steps, args.student_target or None,
             args.student_eval_every or (25 if args.student_target else 250), student_dir)]:
        if (args.only and role != args.only) or folder is None:
            continue
        torch.manual_seed(0)
        model = new_model(tokenizer, hidden, layers)
        print(f"{role}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
        corpus = train_rows[:args.student_corpus] if role == "student" and args.student_corpus else train_rows
        if role == "student" and args.world == "code" and args.student_zipf:
            corpus = as_code_rows(code.make_problems(len(corpus), "train", seed=1000, distinct=False,
                                                  distribution=f"zipf:{args.student_zipf}"))
        elif role == "student" and (args.student_verbs or args.student_zipf):
            distribution = f"zipf:{args.student_zipf}" if args.student_zipf else "zipf"
            corpus = stories.make_problems(len(corpus), "train", seed=1000, distribution=distribution,
                                           verbs=args.student_verbs)
        stopped, valid = train(model, tokenizer, corpus, valid_rows, steps, 3e-3, every, target, world=args.world)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        reloaded, reloaded_tokenizer = models.load_model(str(folder), role, torch.device("cpu"))
        report[role] = {"steps": stopped, "valid_accuracy": valid,
                        "test_accuracy": accuracy(reloaded, reloaded_tokenizer, test_rows, args.world),
                        "parameters": sum(p.numel() for p in model.parameters())}
        print(role, report[role], flush=True)
        (folder / "build_report.json").write_text(json.dumps(report[role], indent=2))


if __name__ == "__main__":
    main()
