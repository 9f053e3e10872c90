"""What OmniOPD's forks offer on an offline world, and which controls learn there (issue #13), in numbers.

    python bench/diagnose.py                   # toy world, about 20 minutes on 2 CPU cores -> bench/results/diagnosis.md
    python bench/diagnose.py --world stories   # the story world -> bench/results/diagnosis-stories.md, .png
    python bench/diagnose.py --quick           # a few batches and steps: checks that it runs
    python bench/diagnose.py --world stories-foreign --census   # parts 1-2 only, with a teacher of another dialect

1. What a fork offers. Over several batches of the untrained student: how often a right draft is among
   the K, how often the student's own draft is right, and how often a fork is informative (right and wrong
   drafts both present, the only case where p̂ can prefer anything). A draft is right when its numbers agree
   with those of most of the teacher's continuations of the same prefix (the teacher scores 100 %). With
   --census (and a teacher of another dialect, stories-foreign, issue #26), a draft is right when the base
   world's teacher, which writes the student's dialect, continues prefix + draft greedily to the right answer;
   p̂ comes from the run's teacher.
2. What p̂ makes of it: the p̂ mass on right drafts at informative forks, against the share a uniform p̂
   would give and against q, the student's own distribution over the same drafts; the mean similarity S of
   right and of wrong drafts to the teacher's continuations (how much of the signal S carries).
3. What one update does: the change of the per-token log-probability ℓ_k / |c_k| of right and of wrong
   drafts after one AdamW step on one batch, and the gradient norms of the chunk loss and of β · the anchor.
4. Controls that must learn if the code is right, each trained with the same budget as the comparison:
   OmniOPD with an oracle similarity (S = 1 when a draft's numbers agree with the teacher continuation's,
   else 0); rejection sampling built from the same functions (sample, keep the rollouts whose answer
   checks, NLL on them); GRPO with its reward and advantages logged; the default OmniOPD; and SFT on the
   rows' own reference solutions (more of the student's training data: is any update harmful?).
5. What the student's own "right" samples contain: of its sampled solutions whose final answer checks, how
   many reach it through a wrong equation (the outcome-only signal of rejection sampling and GRPO rewards
   those too).

    python bench/diagnose.py --self-samples   # parts 4 (reference SFT, rejection sampling) and 5 only, minutes
                                              # -> bench/results/diagnosis-self-samples.md
"""

import argparse
import collections
import json
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
import omniopd_baselines  # noqa: E402
from omniopd_lib.similarity import Similarity  # noqa: E402
from omniopd_lib.generation import generate, response_texts  # noqa: E402
from omniopd_lib.teachers import HFTeacher  # noqa: E402
import toyworld  # noqa: E402
from omniopd_lib import data, runs  # noqa: E402
from omniopd_lib import grading  # noqa: E402
from speed import LINES, say  # noqa: E402  (bench/ is on the path: this script's folder)


# Right and wrong drafts -------------------------------------------------------------------------------------

def numbers_agree(draft: str, reference: str) -> bool:
    """Do two continuations of the same prefix write the same numbers? Every number must match, and there must
    be as many: a draft that stops early, or writes no number, does not agree with one that goes on to write
    them. A number at the very end of a text may be cut mid-way ("1" of "12"), so there it need only be a prefix."""
    draft_numbers, reference_numbers = re.findall(r"\d+", draft), re.findall(r"\d+", reference)
    if len(draft_numbers) != len(reference_numbers):
        return False
    for i, (a, b) in enumerate(zip(draft_numbers, reference_numbers)):
        cut = i == len(draft_numbers) - 1 and (draft.rstrip()[-1:].isdigit() or reference.rstrip()[-1:].isdigit())
        if not (a == b or (cut and (a.startswith(b) or b.startswith(a)))):
            return False
    return True


def oracle_similarity(draft_texts, teacher_texts):
    """S_km = 1 when draft k's numbers agree with teacher rollout m's, else 0: what a perfect verifier says."""
    return torch.tensor([[float(numbers_agree(c, r)) for r in teacher_texts] for c in draft_texts])


def right_drafts(draft_texts, teacher_texts) -> list[bool]:
    """A draft is right when it agrees with at least half of the teacher's continuations."""
    return [2 * sum(numbers_agree(c, r) for r in teacher_texts) >= len(teacher_texts) for c in draft_texts]


# 1-2. Fork census ---------------------------------------------------------------------------------------

def world_run(world, **options):
    """A run of the shipped student and teacher of an offline world, and the world's training rows."""
    cfg = omniopd.Config(**toyworld.world_options(world), eval_size=200, out="/tmp/omniopd-diagnose",
                         **options).resolved()
    return runs.setup(cfg), data.load_rows(cfg.data, "train", cfg.seed), cfg


@torch.no_grad()
def drafts_reach_answer(labeller, rows, prefixes, drafts_F_K, max_new_tokens) -> list[list[bool]]:
    """Each draft labelled by the way it leaves open: the labelling teacher (the student's dialect, 100 % on its
    own) continues prefix + draft greedily, and the draft is right when that completion's final answer checks.
    Unlike numbers_agree, this reads the draft's words ("7 coins more" against "7 fewer") and not where a chunk
    happens to end."""
    texts = [prefix + draft for prefix, drafts in zip(prefixes, drafts_F_K) for draft in drafts]
    golds = [grading.gold_answer(row["answer"]) for row, drafts in zip(rows, drafts_F_K) for _ in drafts]
    completions = greedy_completions(labeller, texts, max_new_tokens)
    verdicts = [grading.answers_match(grading.extract_answer(text + completion), gold)
                for text, completion, gold in zip(texts, completions, golds)]
    return per_fork(verdicts, drafts_F_K)


def greedy_completions(labeller, texts, max_new_tokens, batch_size=64) -> list[str]:
    """The labelling teacher's greedy continuation of each text, 64 at a time."""
    completions = []
    for start in range(0, len(texts), batch_size):
        batch = labeller.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=False)
        new_ids = generate(labeller.model, labeller.tokenizer, batch.input_ids, batch.attention_mask,
                           max_new_tokens, 0.0)
        completions += labeller.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return completions


def per_fork(flat: list, drafts_F_K) -> list[list]:
    """A flat list, one entry per draft, cut back into one list per fork."""
    out, start = [], 0
    for drafts in drafts_F_K:
        out.append(flat[start:start + len(drafts)])
        start += len(drafts)
    return out


def census(run, rows, cfg, batches, labeller=None):
    """Per fork of `batches` batches: is each draft right, p̂, q, S, and S's favourite. With a labeller (a
    teacher of the student's dialect), a draft is right when the labeller's greedy completion of it reaches the
    right answer (drafts_reach_answer); without, when its numbers agree with the run's teacher (right_drafts)."""
    forks = []
    for step in range(batches):
        batch_rows = data.batch_rows(rows, step, cfg)
        batch = omniopd.omniopd_collect(run, batch_rows, cfg)
        with torch.no_grad():
            _, logprobs_F_K, lengths_F_K = omniopd.rollout_and_drafts_forward(run.student, batch.rollout, batch.drafts)
            q_F_K = torch.softmax(logprobs_F_K / lengths_F_K.float() ** cfg.length_norm, 1)
        drafts_F_K = [drafts for drafts, _, _ in batch.fork_texts]
        by_characters = [None] * len(drafts_F_K)
        if labeller:
            prefixes = [run.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch.drafts.prefix_ids]
            labels = drafts_reach_answer(labeller, [batch_rows[b] for b, _ in batch.drafts.forks], prefixes,
                                         drafts_F_K, cfg.max_new_tokens)
            by_characters = same_characters_target(run, cfg, batch, batch_rows, drafts_F_K)
        else:
            labels = [right_drafts(drafts, teacher_texts) for drafts, teacher_texts, _ in batch.fork_texts]
        for f, (draft_texts, teacher_texts, similarity_K_M) in enumerate(batch.fork_texts):
            b, t = batch.drafts.forks[f]
            forks.append({"token": run.tokenizer.decode(batch.rollout.response_ids_B_T[b, t]), "right": labels[f],
                          "target": batch.target_F_K[f].tolist(), "q": q_F_K[f].tolist(),
                          "similarity": similarity_K_M.mean(1).tolist(),
                          "distinct": len(set(draft_texts)), "favourite": int(similarity_K_M.mean(1).argmax()),
                          "drafts": draft_texts, "teacher": teacher_texts, "by_characters": by_characters[f]})
    return forks


def same_characters_target(run, cfg, batch, batch_rows, drafts_F_K):
    """What p̂ would be if each teacher continuation were cut to as many characters as the fork's longest draft,
    not to L student tokens: a teacher whose words the student's tokenizer splits into many pieces then keeps as
    much of its text as the drafts hold. Fresh continuations of the same prefixes; (S's row means, p̂) per fork."""
    questions = [row["question"] for row in batch_rows]
    prefixes = omniopd.teacher_prefix_texts(run.tokenizer, batch.rollout, batch.drafts.forks, questions, cfg)
    answers = run.teacher.continuations(prefixes, cfg.teacher_samples, 4 * cfg.chunk_len,
                                        rows=[batch_rows[b] for b, _ in batch.drafts.forks])
    cut = [[text[:max(map(len, drafts))] for text in texts or [""]] for texts, drafts in zip(answers, drafts_F_K)]
    matrices = run.similarity.matrices(drafts_F_K, cut)
    return [(S.mean(1).tolist(), omniopd.dirichlet_preference(S, cfg.dirichlet_alpha, cfg.vote_temperature,
                                                              cfg.votes).tolist(), texts)
            for S, texts in zip(matrices, cut)]


def share(values):
    values = list(values)
    return sum(values) / max(len(values), 1)


def report_census(forks, rollouts):
    informative = [f for f in forks if any(f["right"]) and not all(f["right"])]
    say(f"## 1. What a fork offers ({len(forks)} forks of {rollouts} rollouts of the untrained student; K = "
        f"{len(forks[0]['right']) if forks else 0})")
    say()
    say("| | share of forks |")
    say("|---|---|")
    say(f"| a right draft among the K | {share(any(f['right']) for f in forks):.1%} |")
    say(f"| the student's own draft (k = 1) right | {share(f['right'][0] for f in forks):.1%} |")
    say(f"| every draft right | {share(all(f['right']) for f in forks):.1%} |")
    say(f"| no draft right | {share(not any(f['right']) for f in forks):.1%} |")
    say(f"| informative: right and wrong drafts both present | {len(informative) / max(len(forks), 1):.1%} |")
    say(f"| own draft wrong and a fresh draft right (what the method exists for) | "
        f"{share(not f['right'][0] and any(f['right'][1:]) for f in forks):.1%} |")
    say(f"\nDistinct draft texts per fork: {statistics.mean(f['distinct'] for f in forks):.2f} of K.")
    tokens = collections.Counter(f["token"] for f in forks)
    say("Where forks fall (the student's token at the fork, most frequent first): "
        + ", ".join(f"{token!r} {count / len(forks):.0%}" for token, count in tokens.most_common(8)) + ".")
    say()
    say(f"## 2. What p̂ makes of it ({len(informative)} informative forks)")
    say()
    say("| mass on the right drafts | mean |")
    say("|---|---|")
    say(f"| uniform share (right drafts / K) | {statistics.mean(share(f['right']) for f in informative):.3f} |")
    say(f"| q, the student's own distribution over the drafts | "
        f"{statistics.mean(sum(q for q, r in zip(f['q'], f['right']) if r) for f in informative):.3f} |")
    say(f"| p̂ (the target) | "
        f"{statistics.mean(sum(p for p, r in zip(f['target'], f['right']) if r) for f in informative):.3f} |")
    say(f"\nMean similarity S of a draft to the teacher's continuations at informative forks: right drafts "
        f"{statistics.mean(s for f in informative for s, r in zip(f['similarity'], f['right']) if r):.3f}, wrong "
        f"{statistics.mean(s for f in informative for s, r in zip(f['similarity'], f['right']) if not r):.3f}.")
    say(f"The draft with the highest mean similarity is right at {share(f['right'][f['favourite']] for f in informative):.1%} "
        "of informative forks.")
    measured = [f for f in informative if f["by_characters"]]
    if measured:
        say(f"\nThe teacher's continuations cut to the drafts' length in characters, not to L student "
            f"tokens (fresh continuations of the same {len(measured)} forks): p̂ mass on the right drafts "
            f"{statistics.mean(sum(p for p, r in zip(f['by_characters'][1], f['right']) if r) for f in measured):.3f}; "
            f"S right {statistics.mean(s for f in measured for s, r in zip(f['by_characters'][0], f['right']) if r):.3f}, "
            f"wrong {statistics.mean(s for f in measured for s, r in zip(f['by_characters'][0], f['right']) if not r):.3f}; "
            f"the favourite right at "
            f"{share(f['right'][max(range(len(f['right'])), key=f['by_characters'][0].__getitem__)] for f in measured):.1%}.")
    say(f"At uninformative forks (all right or all wrong, {len(forks) - len(informative)}), p̂ still moves q: "
        f"mean |p̂ - q| summed over drafts = "
        f"{statistics.mean(sum(abs(p - q) for p, q in zip(f['target'], f['q'])) for f in forks if f not in informative):.3f}"
        f" (informative forks: {statistics.mean(sum(abs(p - q) for p, q in zip(f['target'], f['q'])) for f in informative):.3f}).")
    example = next((f for f in informative), None)
    if example:
        say("\nOne informative fork (drafts with right/wrong, p̂, q; then the teacher's continuations):\n")
        say("```")
        for text, right, p, q in zip(example["drafts"], example["right"], example["target"], example["q"]):
            say(f"{'right' if right else 'wrong'}  p̂ {p:.2f}  q {q:.2f}  {text!r}")
        for text in example["teacher"]:
            say(f"teacher           {text!r}")
        for text in (example["by_characters"] or [None, None, []])[2]:
            say(f"teacher, by chars {text!r}")
        say("```")
    return informative


# 3. One update ---------------------------------------------------------------------------------------------

def gradient_norm(run, loss):
    run.student.zero_grad(set_to_none=True)
    loss.backward()
    return torch.sqrt(sum((p.grad ** 2).sum() for p in run.student.parameters() if p.grad is not None)).item()


def one_update(run, rows, cfg, batches):
    """Δ(ℓ_k / |c_k|) of right and wrong drafts after one AdamW step on their own batch, and the gradient
    norms of the two loss terms, each over `batches` batches (the weights are restored after each)."""
    right_changes, wrong_changes, own_changes, chunk_norms, anchor_norms = [], [], [], [], []
    start = {k: v.clone() for k, v in run.student.state_dict().items()}
    for step in range(batches):
        batch = omniopd.omniopd_collect(run, data.batch_rows(rows, 100 + step, cfg), cfg)
        if not batch.num_forks:
            continue

        def per_token():
            with torch.no_grad():
                _, logprobs_F_K, lengths_F_K = omniopd.rollout_and_drafts_forward(run.student, batch.rollout,
                                                                                 batch.drafts)
            return logprobs_F_K / lengths_F_K
        before = per_token()
        logits_B_T_V, logprobs_F_K, lengths_F_K = omniopd.rollout_and_drafts_forward(run.student, batch.rollout,
                                                                                      batch.drafts)
        chunk = omniopd.chunk_loss(batch.target_F_K, logprobs_F_K, lengths_F_K, cfg.length_norm, cfg.chunk_loss,
                                   batch.num_forks)
        chunk_norms.append(gradient_norm(run, chunk))
        logits_B_T_V, _, _ = omniopd.rollout_and_drafts_forward(run.student, batch.rollout, batch.drafts)
        anchor_norms.append(gradient_norm(run, cfg.kl_beta * omniopd.anchor_term(run, batch.rollout, logits_B_T_V, cfg,
                                                                                 batch.num_tokens)))
        loss, _ = omniopd.omniopd_loss(run, batch, cfg)
        omniopd.update(run, loss, cfg.grad_clip)
        change = per_token() - before
        for f, (draft_texts, teacher_texts, _) in enumerate(batch.fork_texts):
            right = right_drafts(draft_texts, teacher_texts)
            if any(right) and not all(right):
                right_changes += [change[f, k].item() for k in range(len(right)) if right[k]]
                wrong_changes += [change[f, k].item() for k in range(len(right)) if not right[k]]
            own_changes.append(change[f, 0].item())
        run.student.load_state_dict(start)
        run.optimizer = torch.optim.AdamW(run.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    say(f"\n## 3. One update (AdamW, learning rate {cfg.lr:g}, one step on its own batch; {batches} batches)")
    say()
    say("| | mean | drafts |")
    say("|---|---|---|")
    say(f"| Δ ℓ/|c| of right drafts at informative forks | {statistics.mean(right_changes or [0]):+.4f} | "
        f"{len(right_changes)} |")
    say(f"| Δ ℓ/|c| of wrong drafts at informative forks | {statistics.mean(wrong_changes or [0]):+.4f} | "
        f"{len(wrong_changes)} |")
    say(f"| Δ ℓ/|c| of the student's own draft, every fork | {statistics.mean(own_changes or [0]):+.4f} | "
        f"{len(own_changes)} |")
    say(f"\nGradient norm of the chunk loss {statistics.mean(chunk_norms):.4f}, of β · anchor "
        f"{statistics.mean(anchor_norms):.4f} (β = {cfg.kl_beta}); the chunk loss's share "
        f"{statistics.mean(c / (c + a) for c, a in zip(chunk_norms, anchor_norms)):.1%}.")
    return {"right": right_changes, "wrong": wrong_changes, "chunk_norm": chunk_norms, "anchor_norm": anchor_norms}


# 5. The student's own right answers ------------------------------------------------------------------------

def equations_hold(text: str, world: str) -> bool:
    """Every 'a+b=c' / 'a - b = c' of a solution is true arithmetic, there are as many as the world's problems
    have steps (toy 2, stories 3), and the final answer is the last one's result."""
    equations = re.findall(r"(\d+) ?([+-]) ?(\d+) ?= ?(\d+)", text)
    if len(equations) != {"toy": 2, "stories": 3}[world]:
        return False
    true = all((int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c) for a, op, b, c in equations)
    return true and grading.extract_answer(text) == equations[-1][3]


def lucky_answers(run, rows, cfg, batches, world):
    """Sample as rejection sampling and GRPO do; of the samples whose final answer checks, the share whose
    reasoning does not hold."""
    right = lucky = total = 0
    examples = []
    with torch.no_grad():
        for step in range(batches):
            batch = data.batch_rows(rows, step, cfg)
            rollout = omniopd.sample_rollouts(run.student, run.tokenizer, [r["question"] for r in batch], cfg)
            for row, text in zip(batch, response_texts(run.tokenizer, rollout)):
                total += 1
                if grading.answers_match(grading.extract_answer(text), grading.gold_answer(row["answer"])):
                    right += 1
                    if not equations_hold(text, world):
                        lucky += 1
                        examples.append((text, row["answer"]))
    say(f"\n## 5. The student's own right answers ({total} samples at τ = {cfg.temperature})")
    say(f"\nFinal answer right: {right} ({right / total:.1%}). Of those, reached through a wrong equation, or a "
        f"final line that is not the last equation's result: {lucky} ({lucky / max(right, 1):.1%}). Examples "
        "(sample, then the reference):\n")
    say("```")
    for text, reference in examples[:6]:
        say(f"{text!r:40}  {reference!r}")
    say("```")
    return {"samples": total, "right": right, "lucky": lucky}


# 4. Controls -----------------------------------------------------------------------------------------------

def rejection_sampling_collect(run, rows, cfg):
    """Rejection sampling from the same functions: G rollouts per prompt (rows repeat each prompt G times, as
    for GRPO), kept when the final answer checks; the loss is then SFT's NLL on the kept ones."""
    with torch.no_grad():
        rollout = omniopd.sample_rollouts(run.student, run.tokenizer, [r["question"] for r in rows], cfg)
    texts = response_texts(run.tokenizer, rollout)
    kept = [(r["question"], t) for r, t in zip(rows, texts)
            if grading.answers_match(grading.extract_answer(t), grading.gold_answer(r["answer"]))]
    num_tokens = sum(len(run.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for _, t in kept)
    return omniopd.StepBatch(solutions=kept, num_tokens=num_tokens, metrics={"rs/kept": len(kept) / len(rows)})


def reference_collect(run, rows, cfg):
    """The fragility control: SFT on the rows' own reference solutions, i.e. more of the data the student was
    trained on. If even this lowers its accuracy, any update does, and a method's drop says little."""
    kept = [(r["question"], r["answer"]) for r in rows]
    num_tokens = sum(len(run.tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for _, a in kept)
    return omniopd.StepBatch(solutions=kept, num_tokens=num_tokens)


def train_control(world, name, steps, eval_rows, method=None, similarity=None, seed=0, **options):
    """Train one control for `steps` steps as omniopd.train would; returns accuracies and logged metrics."""
    run, rows, cfg = world_run(world, seed=seed, method=method or "omniopd", **options)
    if similarity is not None:
        run.similarity = Similarity(similarity)
    collect, loss_fn = omniopd.method_functions(cfg)
    if name.startswith("reference solutions"):
        collect, loss_fn = reference_collect, omniopd_baselines.sft_loss
    if name == "rejection sampling":
        collect, loss_fn = rejection_sampling_collect, omniopd_baselines.sft_loss
        cfg.group_size = 4
        cfg.method = "grpo"    # batch_rows repeats each prompt group_size times
    before = grading.evaluate(run.student, run.tokenizer, eval_rows, cfg, samples=4)[1]
    logged, started = [], time.time()
    for step in range(steps):
        batch = collect(run, data.batch_rows(rows, step, cfg), cfg)
        loss, metrics = loss_fn(run, batch, cfg)
        metrics["grad/norm"] = omniopd.update(run, loss, cfg.grad_clip)
        if cfg.method == "grpo" and batch.advantages_B is not None:
            groups = batch.advantages_B.view(-1, cfg.group_size)
            metrics["grpo/groups_with_signal"] = (groups.abs().sum(1) > 0).float().mean().item()
        logged.append(metrics)
        run.step += 1
    after = grading.evaluate(run.student, run.tokenizer, eval_rows, cfg, samples=4)[1]
    greedy = lambda records: share(r["correct"] for r in records)  # noqa: E731
    sampled = lambda records: statistics.mean(r["sampled_correct"] for r in records)  # noqa: E731
    result = {"name": name, "seed": seed, "greedy_before": greedy(before), "greedy_after": greedy(after),
              "sampled_before": sampled(before), "sampled_after": sampled(after), "seconds": time.time() - started,
              "metrics": logged}
    print(f"{name} seed {seed}: greedy {result['greedy_before']:.1%} -> {result['greedy_after']:.1%}, sampled "
          f"{result['sampled_before']:.1%} -> {result['sampled_after']:.1%} ({result['seconds']:.0f} s)", flush=True)
    return result


def report_controls(results, steps, lr):
    say(f"\n## 4. Controls ({steps} steps × 16 rollouts, learning rate "
        f"{lr:g}, as the comparison; 200 held-out problems; sampled = mean of 4 "
        "answers at τ = 1)")
    say()
    say("| run | seeds | greedy before → after | sampled before → after | what its log says |")
    say("|---|---|---|---|---|")
    for name in dict.fromkeys(r["name"] for r in results):
        by_seed = [r for r in results if r["name"] == name]
        mean = lambda key: statistics.mean(r[key] for r in by_seed)  # noqa: E731
        logged = [m for r in by_seed for m in r["metrics"]]
        notes = []
        for key, label in (("grpo/reward", "reward"), ("grpo/groups_with_signal", "groups with signal"),
                           ("rs/kept", "kept"), ("pref/own_draft", "p̂ on own draft"), ("forks/count", "forks")):
            values = [m[key] for m in logged if key in m]
            if values:
                notes.append(f"{label} {statistics.mean(values[:len(values) // 4 or 1]):.2f} → "
                             f"{statistics.mean(values[-(len(values) // 4 or 1):]):.2f}")
        say(f"| {name} | {len(runs)} | {mean('greedy_before'):.1%} → {mean('greedy_after'):.1%} | "
            f"{mean('sampled_before'):.1%} → {mean('sampled_after'):.1%} | {'; '.join(notes)} |")


def plot(update, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist([update["right"], update["wrong"]], bins=30, label=["right drafts", "wrong drafts"], alpha=0.8)
    axis.axvline(0, color="gray", linewidth=0.8)
    axis.set_xlabel("change of ℓ/|c| after one update (informative forks)")
    axis.set_ylabel("drafts")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=[*toyworld.OFFLINE_WORLDS, *toyworld.VARIANT_WORLDS], default="toy")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--census", action="store_true", help="parts 1-2 only (what forks offer, what p̂ makes of it)")
    parser.add_argument("--batches", type=int, default=8, help="batches of 16 rollouts for parts 1-3")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each control")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--controls", nargs="*", default=[], help="only the controls whose names contain these")
    parser.add_argument("--lr", type=float, default=0.0, help="the controls' learning rate (0 = the world's default)")
    parser.add_argument("--self-samples", action="store_true",
                        help="only part 5 and the controls that learn from solutions (reference SFT, rejection sampling)")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.steps, args.seeds = 2, 2, [0]
    torch.set_num_threads(os.cpu_count() or 2)
    name = ("diagnosis" + ("" if args.world == "toy" else f"-{args.world}") + ("-census" if args.census else "")
            + ("-quick" if args.quick else ""))
    if args.self_samples:
        return self_samples(args, name.replace("diagnosis", "diagnosis-self-samples"))
    run, rows, cfg = world_run(args.world)
    command = (f"python bench/diagnose.py{' --world ' + args.world if args.world != 'toy' else ''}"
               f"{' --census' * args.census}{' --quick' * args.quick}")
    say(f"# What OmniOPD's forks offer on the {args.world} world{'' if args.census else ', and what learns there'} "
        f"(`{command}`)")
    say()
    labeller = HFTeacher(toyworld.VARIANT_WORLDS.get(args.world, args.world), "cpu") if args.census else None
    forks = census(run, rows, cfg, args.batches, labeller)
    report_census(forks, args.batches * cfg.batch_size)
    if args.census:
        Path(args.results).mkdir(parents=True, exist_ok=True)
        Path(args.results, f"{name}.md").write_text("\n".join(LINES) + "\n")
        return
    update = one_update(run, rows, cfg, args.batches)
    eval_rows = data.load_rows(args.world, "test", 0, 32 if args.quick else 200)
    controls = {"OmniOPD (default: embed similarity)": {},
                "OmniOPD, oracle similarity": {"similarity": oracle_similarity},
                "rejection sampling": {},
                "GRPO": {"method": "grpo"},
                "reference solutions (its own training data)": {}}
    results = []
    for seed in args.seeds:
        for control, options in controls.items():
            if not args.controls or any(wanted in control for wanted in args.controls):
                results.append(train_control(args.world, control, args.steps, eval_rows, seed=seed, lr=args.lr,
                                             **options))
    report_controls(results, args.steps, args.lr or cfg.lr)
    lucky = lucky_answers(run, rows, cfg, args.batches, args.world)
    folder = Path(args.results)
    (folder / f"{name}.md").write_text("\n".join(LINES) + f"\n\n![one update]({name}.png)\n")
    (folder / f"{name}.json").write_text(json.dumps({"update": update, "controls": results, "lucky": lucky},
                                                    default=str))
    plot(update, folder / f"{name}.png")


def self_samples(args, name):
    """Part 5 and the two controls that train on whole solutions: the student's own right samples
    (rejection sampling) against the rows' reference solutions, same steps, learning rate and seeds."""
    run, rows, cfg = world_run(args.world)
    say(f"# Learning from the student's own samples on the {args.world} world "
        f"(`python bench/diagnose.py --self-samples{' --world ' + args.world if args.world != 'toy' else ''}`)")
    lucky = lucky_answers(run, rows, cfg, args.batches, args.world)
    eval_rows = data.load_rows(args.world, "test", 0, 32 if args.quick else 200)
    results = [train_control(args.world, control, args.steps, eval_rows, seed=seed, lr=args.lr)
               for seed in args.seeds
               for control in ("reference solutions (its own training data)", "rejection sampling")]
    report_controls(results, args.steps, args.lr or cfg.lr)
    folder = Path(args.results)
    (folder / f"{name}.md").write_text("\n".join(LINES) + "\n")
    (folder / f"{name}.json").write_text(json.dumps({"controls": results, "lucky": lucky}, default=str))


if __name__ == "__main__":
    main()
