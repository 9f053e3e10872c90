"""How well does each similarity tell right drafts from wrong ones on an offline world?

    python bench/similarity_signal.py [--world toy|code] [--prompts 128] [--seed 0]

Runs steps 1-6 of OmniOPD with the world's shipped student and teacher (no update),
labels every draft right or wrong, and reports for
each similarity: mean S for right and wrong drafts, how often a right draft gets a
higher p̂ than a wrong one at the same fork, and the p̂ mass on right drafts
versus their share under the uniform prior. Forks with only right or only wrong
drafts carry no such signal and are counted separately.

A draft is right on the toy world when prefix + draft is still a prefix of the problem's worked solution. On
the code world, where a solution has many correct texts (three styles, any variable names), a draft is right
when the teacher, continuing prefix + draft greedily, ends with a program that passes the problem's tests:
the draft left the way to a correct function open (the teacher solves 100 % of held-out problems).
"""

import argparse
import sys
from pathlib import Path

import torch

from omniopd_lib import codetask
import omniopd
from omniopd_lib.similarity import Similarity
from omniopd_lib.teachers import HFTeacher
from omniopd_lib import data
from omniopd_lib import models
import toyworld
from omniopd_lib.fastpaths import token_logprobs_and_entropy
from omniopd_lib.generation import decode_after, generate


def draft_is_right(prefix_text, draft_text, solution_text):
    written = prefix_text + draft_text
    return solution_text.startswith(written) or written.startswith(solution_text)


@torch.no_grad()
def drafts_completed_correctly(teacher, rows, forks, prefixes, candidates, cfg):
    """Code world: for each fork, whether each draft, continued greedily by the teacher, passes the tests."""
    texts, owners = [], []
    for f, (b, _) in enumerate(forks):
        for candidate in candidates[f]:
            texts.append(prefixes[f] + candidate)
            owners.append(rows[b])
    completed = []
    for start in range(0, len(texts), 64):
        batch = teacher.tokenizer(texts[start:start + 64], return_tensors="pt", padding=True, add_special_tokens=False)
        out = generate(teacher.model, teacher.tokenizer, batch.input_ids, batch.attention_mask,
                               cfg.max_new_tokens, 0.0)
        completed += [t + c for t, c in zip(texts[start:start + 64],
                                           teacher.tokenizer.batch_decode(out, skip_special_tokens=True))]
    programs = [codetask.program_of(row, text[len(row["question"]):]) for row, text in zip(owners, completed)]
    assert all(text.startswith(row["question"]) for row, text in zip(owners, completed))
    verdicts = codetask.check_many(programs, [row["tests"] for row in owners], workers=2)
    passed = torch.tensor([v.passed for v in verdicts])
    return list(passed.split([len(c) for c in candidates]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=["toy", "code"], default="toy")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the table to this file (Markdown)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = omniopd.Config(**toyworld.world_options(args.world)).resolved()
    device = torch.device("cpu")
    student, tokenizer = models.load_model(args.world, "student", device)
    teacher = HFTeacher(args.world, device)
    rows = data.load_rows(args.world, "train", args.seed + 500, args.prompts, task=cfg.task)
    rollout = omniopd.sample_rollouts(student, tokenizer, [r["question"] for r in rows], cfg)
    with torch.no_grad():
        logits = omniopd.response_logits(student, rollout)
    _, entropy = token_logprobs_and_entropy(logits, rollout.response_ids_B_T)
    forks = omniopd.select_forks(entropy, rollout.response_mask_B_T, cfg.audit_budget, cfg.fork_gap,
                                 cfg.entropy_threshold)
    drafts = omniopd.draft_chunks(student, tokenizer, rollout, forks, cfg.num_drafts, cfg.chunk_len, cfg.temperature)
    prefixes = [tokenizer.decode(p, skip_special_tokens=True) for p in drafts.prefix_ids]
    candidates = [[decode_after(tokenizer, prefix, c) for c in chunks]
                  for prefix, chunks in zip(drafts.prefix_ids, drafts.chunk_ids)]
    references = omniopd.teacher_rollouts(teacher, prefixes, cfg.teacher_samples, cfg.chunk_len, tokenizer).wait()
    if args.world == "code":
        right = drafts_completed_correctly(teacher, rows, forks, prefixes, candidates, cfg)
        teacher_right = sum(int(r.sum()) for r in drafts_completed_correctly(teacher, rows, forks, prefixes, references, cfg))
    else:
        solutions = [cfg.prompt_template.format(question=rows[b]["question"]) + rows[b]["answer"] for b, _ in forks]
        right = [torch.tensor([draft_is_right(p, c, s) for c in cands])
                 for p, cands, s in zip(prefixes, candidates, solutions)]
        teacher_right = sum(draft_is_right(p, t, s) for p, texts, s in zip(prefixes, references, solutions) for t in texts)
    mixed = [f for f, r in enumerate(right) if 0 < int(r.sum()) < len(r)]
    lines = [f"{len(rows)} rollouts, {len(forks)} forks, {len(mixed)} with both right and wrong drafts; "
             f"teacher continuations right: {teacher_right / (len(forks) * cfg.teacher_samples):.1%}",
             f"{'similarity':<28} {'S right':>8} {'S wrong':>8} {'pairs won':>9} {'p̂ right':>8} {'uniform':>8}"]
    print("\n".join(lines))
    settings = [("embed", "soft", 0.1), ("embed", "soft", 0.02), ("embed", "hard", 0.1),
                ("lexical", "soft", 0.1), ("lexical", "soft", 0.02), ("lexical", "hard", 0.1)]
    encoders = {"embed": Similarity("embed"), "lexical": Similarity("lexical")}
    for kind, votes, kappa in settings:
        matrices = encoders[kind].matrices([candidates[f] for f in mixed], [references[f] for f in mixed])
        s_right, s_wrong, won, pairs, mass, share = [], [], 0, 0, 0.0, 0.0
        for f, S in zip(mixed, matrices):
            p = omniopd.dirichlet_preference(S, cfg.dirichlet_alpha, kappa, votes)
            r = right[f]
            s_right += S[r].flatten().tolist()
            s_wrong += S[~r].flatten().tolist()
            won += sum(float(a > b) + 0.5 * float(a == b) for a in p[r] for b in p[~r])
            pairs += int(r.sum()) * int((~r).sum())
            mass += p[r].sum().item()
            share += r.float().mean().item()
        name = f"{kind} {votes}" + (f" κ={kappa}" if votes == "soft" else "")
        lines.append(f"{name:<28} {sum(s_right) / len(s_right):8.3f} {sum(s_wrong) / len(s_wrong):8.3f} "
                     f"{won / pairs:9.1%} {mass / len(mixed):8.3f} {share / len(mixed):8.3f}")
        print(lines[-1])
    if args.out:
        command = " ".join(["python bench/similarity_signal.py", *sys.argv[1:]])
        Path(args.out).write_text(f"# Similarity signal on the {args.world} world\n\n`{command}`\n\n```\n"
                                  + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
