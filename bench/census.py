"""Which comparison carries the teacher's decision? Every candidate (horizon × similarity) by the census, before any
training run (issue #32).

    python bench/census.py --world stories-foreign   # -> bench/results/census-stories-foreign.md, .json
    python bench/census.py --world stories
    python bench/census.py --world code   # a draft right when the code world's teacher completes it to a passing program
    python bench/census.py --world stories --candidates chunk:embed end:answer:2 --batches 2   # some, quickly

A candidate is HORIZON:SIMILARITY[:R][:FIELD=VALUE...] (omniopd.py's --horizon, --similarity, --draft-rollouts
and any other field, e.g. end:numbers:audit_budget=2:teacher_max_tokens=96). Candidates that
choose forks and drafts alike (the same B and K) see the same forks and the same K drafts: each batch is sampled
from the same seed for each one, so only what the drafts are compared with, and how, differs. Candidates with the same horizon share the teacher's continuations (one
sample of M per fork, as one run would draw), billed to each as if drawn for it.

Each draft is labelled as bench/diagnose.py --census labels it: right when the world's own teacher, which writes
the student's dialect and scores 100 %, continues prefix + draft greedily to the right answer (on the code world:
to a program that passes the problem's tests in the sandbox). At the informative
forks (right and wrong drafts both present) the table gives p̂'s mass on the right drafts against the uniform share
and against q (the student's own distribution over the same drafts), how often the highest-S draft is right, the
mean S of right and of wrong drafts, the teacher's completion tokens per fork, and the step's time (collect, loss
and backward, no update) as a ratio to token-level OPD's on the same batch (its teacher: the world's twin in the
student's tokenizer). Two columns say what the signal would teach past the solution's opening sentence, where
most informative forks are not: how often the teacher's own continuations reach the right answer there (a teacher
that cannot read the student's solution leads a content similarity to wrong numbers), and p̂ − uniform there.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

import omniopd  # noqa: E402
import omniopd_baselines  # noqa: E402
import toyworld  # noqa: E402
from omniopd_lib import codetask, data, grading, runs  # noqa: E402
from omniopd_lib.similarity import Similarity  # noqa: E402
from omniopd_lib.teachers import HFTeacher  # noqa: E402
from diagnose import drafts_reach_answer, greedy_completions, per_fork  # noqa: E402  (bench/ is on the path)

CANDIDATES = ["chunk:embed", "chunk:numbers", "step:embed", "step:numbers", "end:embed", "end:answer"]
CODE_CANDIDATES = ["chunk:embed", "chunk:lexical", "step:embed", "end:embed", "end:lexical", "end:answer"]
# token-level OPD reads the teacher's logits: a world's teacher in the student's tokenizer
OPD_TEACHER = {"stories": "stories", "stories-foreign": "stories-foreign-shared", "toy": "toy", "code": "code"}


class SharedDraw:
    """The run's teacher, answering a repeated request (the same prefixes, samples and budget: another candidate of
    the same horizon on the same batch) with what it drew the first time, and billing the same tokens and seconds
    again, so that each candidate's bill and time are those of a run that drew for itself."""

    def __init__(self, teacher):
        self.teacher, self.drawn, self.seconds = teacher, {}, 0.0
        self.mode, self.prompt, self.shares_tokenizer, self.overlaps = (teacher.mode, teacher.prompt,
                                                                         teacher.shares_tokenizer, False)
        self.tokens = 0

    def continuations(self, prefixes, n, max_tokens, draw="", rows=None):
        key = (tuple(prefixes), n, max_tokens, draw)
        if key not in self.drawn:
            tokens, started = self.teacher.tokens, time.perf_counter()
            answers = self.teacher.continuations(prefixes, n, max_tokens, draw, rows)
            self.drawn[key] = (answers, self.teacher.tokens - tokens, time.perf_counter() - started)
        answers, tokens, seconds = self.drawn[key]
        self.tokens += tokens
        self.seconds += seconds
        return answers


def parse_candidate(text: str) -> dict:
    """HORIZON:SIMILARITY[:R][:FIELD=VALUE...] -> omniopd.Config fields: "end:numbers:2:audit_budget=2" is
    --horizon end --similarity numbers --draft-rollouts 2 --audit-budget 2."""
    horizon, similarity, *rest = text.split(":")
    options = {"horizon": horizon, "similarity": similarity, "draft_rollouts": 1}
    for part in rest:
        name, _, value = part.rpartition("=")
        name = name or "draft_rollouts"
        kind = type(getattr(omniopd.Config(), name))
        options[name] = kind(value) if kind in (int, float, str) else int(value)
    return options


def step_seconds(run, rows, cfg, collect, loss_fn, seed) -> tuple:
    """One step without its update, from `seed`: (the batch, seconds for collect + loss + backward)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    batch = collect(run, rows, cfg)
    loss, _ = loss_fn(run, batch, cfg)
    loss.backward()
    seconds = time.perf_counter() - started
    run.student.zero_grad(set_to_none=True)
    return batch, seconds


def checker_of(cfg):
    """The sandbox's limits and workers, as the run's grader and its answer similarity use them."""
    return codetask.Limits(seconds=cfg.checker_timeout, memory_mb=cfg.checker_memory_mb), cfg.checker_workers


def drafts_pass_tests(labeller, rows, prefixes, contexts, drafts_F_K, max_new_tokens, cfg) -> list[list[bool]]:
    """The code world's labels: a draft is right when the labelling teacher, continuing prefix + draft greedily,
    completes the student's solution so far to a program that passes the row's tests."""
    completions = greedy_completions(labeller, [p + d for p, drafts in zip(prefixes, drafts_F_K) for d in drafts],
                                     max_new_tokens)
    solutions = [(row, context + draft) for row, context, drafts in zip(rows, contexts, drafts_F_K) for draft in drafts]
    return per_fork(solutions_pass([(row, text + completion) for (row, text), completion
                                    in zip(solutions, completions)], cfg), drafts_F_K)


def solutions_pass(solutions, cfg) -> list[bool]:
    """Whether each (row, solution text) passes: the final answer checks, or on code the program its tests."""
    if cfg.task == "code":
        verdicts = codetask.check_many([codetask.program_of(row, text) for row, text in solutions],
                                       [row["tests"] for row, _ in solutions], *checker_of(cfg))
        return [verdict.passed for verdict in verdicts]
    return [grading.answers_match(grading.extract_answer(text), grading.gold_answer(row["answer"]))
            for row, text in solutions]


def census(world, candidates, batches, seed=0):
    """Per candidate, per fork of `batches` batches: the labels, p̂, q, S's row means; per batch the seconds of the
    candidate's step and of OPD's, and the teacher tokens billed."""
    cfg = omniopd.Config(**toyworld.world_options(world), eval_size=8, out="/tmp/omniopd-census", seed=seed).resolved()
    run = runs.setup(cfg)
    shared = SharedDraw(run.teacher)
    run.teacher = shared
    opd_teacher = HFTeacher(OPD_TEACHER[world], "cpu")
    opd_cfg = dataclasses.replace(cfg, method="opd", teacher=OPD_TEACHER[world])
    labeller = HFTeacher(toyworld.VARIANT_WORLDS.get(world, world), "cpu")
    rows = data.load_rows(cfg.data, "train", cfg.seed, task=cfg.task)
    similarities = {}
    out = {name: {"forks": [], "seconds": [], "tokens": 0, "opd_seconds": []} for name in candidates}
    for step in range(batches):
        batch_rows = data.batch_rows(rows, step, cfg)
        labels = {}
        run.teacher = opd_teacher
        _, opd_seconds = step_seconds(run, batch_rows, opd_cfg, omniopd_baselines.rollout_collect, omniopd_baselines.opd_loss, step)
        run.teacher = shared
        for name in candidates:
            options = parse_candidate(name)
            candidate_cfg = dataclasses.replace(cfg, **options)
            omniopd.check_config(candidate_cfg)
            if options["similarity"] not in similarities:
                similarities[options["similarity"]] = Similarity(options["similarity"], cfg.similarity_model,
                                                                 checker=checker_of(cfg) if cfg.task == "code" else None)
            run.similarity = similarities[options["similarity"]]
            tokens, teacher_seconds = shared.tokens, shared.seconds
            batch, seconds = step_seconds(run, batch_rows, candidate_cfg, omniopd.omniopd_collect,
                                          omniopd.omniopd_loss, step)
            # the teacher's time: what it took when this draw was made (a local teacher runs in turn, not overlapped)
            seconds += (shared.seconds - teacher_seconds) - run.clock.take().get("time/teacher", 0.0)
            out[name]["seconds"].append(seconds)
            out[name]["opd_seconds"].append(opd_seconds)
            out[name]["tokens"] += shared.tokens - tokens
            with torch.no_grad():
                _, logprobs_F_K, lengths_F_K = omniopd.rollout_and_drafts_forward(run.student, batch.rollout,
                                                                                  batch.drafts)
                q_F_K = torch.softmax(logprobs_F_K / lengths_F_K.float() ** cfg.length_norm, 1)
            # a candidate that picks forks or drafts its own way (another budget B or K) gets its own labels
            keys = [(fork, tuple(texts)) for fork, (texts, _, _) in zip(batch.drafts.forks, batch.fork_texts)]
            unlabelled = [f for f, key in enumerate(keys) if key not in labels]
            if unlabelled:
                prefixes = [run.tokenizer.decode(batch.drafts.prefix_ids[f], skip_special_tokens=True)
                            for f in unlabelled]
                fork_rows = [batch_rows[batch.drafts.forks[f][0]] for f in unlabelled]
                fork_drafts = [batch.fork_texts[f][0] for f in unlabelled]
                if cfg.task == "code":
                    contexts = [omniopd.context_text(run.tokenizer, batch.rollout, batch.drafts.forks[f])
                                for f in unlabelled]
                    found = drafts_pass_tests(labeller, fork_rows, prefixes, contexts, fork_drafts,
                                              cfg.max_new_tokens, cfg)
                else:
                    found = drafts_reach_answer(labeller, fork_rows, prefixes, fork_drafts, cfg.max_new_tokens)
                labels.update({keys[f]: verdicts for f, verdicts in zip(unlabelled, found)})
            for f, (draft_texts, teacher_texts, similarity_K_M) in enumerate(batch.fork_texts):
                right = labels[keys[f]]
                row = batch_rows[batch.drafts.forks[f][0]]
                solution_so_far = omniopd.context_text(run.tokenizer, batch.rollout, batch.drafts.forks[f])
                out[name]["forks"].append({
                    "teacher_right": solutions_pass([(row, solution_so_far + text) for text in teacher_texts], cfg),
                    # past the solution's opening: its first sentence (math), its first line of code (code)
                    "past_opening": ("\n" in solution_so_far.strip("\n")) if cfg.task == "code"
                                    else "." in solution_so_far,
                    "right": right, "target": batch.target_F_K[f].tolist(), "q": q_F_K[f].tolist(),
                    "similarity": similarity_K_M.mean(1).tolist(), "drafts": draft_texts, "teacher": teacher_texts,
                    "compared": batch.horizon_texts[f], "ends": [not text.strip() for text in draft_texts]})
        print(f"batch {step + 1}/{batches} done", flush=True)
    return out, cfg


def mean(values):
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def summary(result: dict) -> dict:
    """The census's figures for one candidate."""
    forks = result["forks"]
    informative = [f for f in forks if any(f["right"]) and not all(f["right"])]

    def mass(f, weights):
        return sum(w for w, r in zip(f[weights], f["right"]) if r)
    uniform = mean(sum(f["right"]) / len(f["right"]) for f in informative)
    return {"forks": len(forks), "informative": len(informative), "uniform": uniform,
            "q": mean(mass(f, "q") for f in informative), "p_hat": mean(mass(f, "target") for f in informative),
            "p_hat_minus_uniform": mean(mass(f, "target") for f in informative) - uniform,
            "favourite_right": mean(f["right"][max(range(len(f["right"])), key=f["similarity"].__getitem__)]
                                    for f in informative),
            "s_right": mean(s for f in informative for s, r in zip(f["similarity"], f["right"]) if r),
            "s_wrong": mean(s for f in informative for s, r in zip(f["similarity"], f["right"]) if not r),
            "tokens_per_fork": result["tokens"] / max(len(forks), 1),
            "time_vs_opd": sum(result["seconds"]) / sum(result["opd_seconds"]),
            "stop_forks": sum(any(f["ends"]) and not all(f["ends"]) for f in forks),
            # what a content similarity teaches: where the teacher's own continuations lead (only a horizon that
            # reaches the answer says), over every fork and over those past the solution's opening sentence
            "teacher_right": mean(r for f in forks for r in f["teacher_right"]),
            "teacher_right_later": mean(r for f in forks if f["past_opening"] for r in f["teacher_right"]),
            "informative_later": sum(f["past_opening"] for f in informative),
            "p_hat_minus_uniform_later": mean(mass(f, "target") - sum(f["right"]) / len(f["right"])
                                              for f in informative if f["past_opening"])}


def compact(results, args) -> dict:
    """What <name>.json keeps: each candidate's summary and, per fork, its labels, p̂, q and S (the texts stay in
    the run: they would make the file megabytes)."""
    keep = ("right", "target", "q", "similarity", "ends", "teacher_right")
    return {"args": vars(args), "summary": {name: summary(result) for name, result in results.items()},
            "forks": {name: [{**{k: rounded(fork[k]) for k in keep}, "past_opening": fork["past_opening"]}
                             for fork in result["forks"]]
                      for name, result in results.items()}}


def rounded(values):
    return [round(v, 4) if isinstance(v, float) else v for v in values]


def report(results, cfg, args) -> list[str]:
    lines = [f"# Census of the comparison's candidates on the {args.world} world", "",
             f"Made by `python bench/census.py {' '.join(sys.argv[1:])}`: {args.batches} batches × {cfg.batch_size} "
             f"rollouts of the untrained student, K = {cfg.num_drafts} drafts of L = {cfg.chunk_len} tokens, "
             f"M = {cfg.teacher_samples} teacher continuations, κ = {cfg.vote_temperature}, α = {cfg.dirichlet_alpha}, "
             f"rollouts of {cfg.max_new_tokens} tokens. Every candidate sees the same forks and drafts. A draft is "
             "right when the student's-dialect teacher, continuing prefix + draft greedily, reaches the right "
             f"answer{' (code: a program that passes the tests)' if cfg.task == 'code' else ''}. Mass columns are means over the informative forks (right and wrong drafts both present). "
             "Teacher's answer right: the share of the teacher's continuations whose final answer (read from the "
             "student's solution so far + the continuation) is right; a horizon that stops short of the answer "
             "scores low by construction; past the opening: forks after the solution's first sentence. "
             "Time: collect + loss + backward per step (no update) over OPD's on the same batches, "
             f"{args.load}.", "",
             "| candidate (horizon:similarity[:R]) | informative / forks | uniform | q | p̂ | p̂ − uniform | "
             "highest-S right | S right / wrong | teacher tokens per fork | step time / OPD | forks with a "
             "stopping draft | teacher's answer right (all / past the opening) | p̂ − uniform past the opening "
             "(informative forks) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        s = summary(result)
        lines.append(f"| {name} | {s['informative']} / {s['forks']} | {s['uniform']:.3f} | {s['q']:.3f} | "
                     f"{s['p_hat']:.3f} | {s['p_hat_minus_uniform']:+.3f} | {s['favourite_right']:.1%} | "
                     f"{s['s_right']:.3f} / {s['s_wrong']:.3f} | {s['tokens_per_fork']:.1f} | "
                     f"{s['time_vs_opd']:.1f}× | {s['stop_forks']} | {s['teacher_right']:.1%} / "
                     f"{s['teacher_right_later']:.1%} | {s['p_hat_minus_uniform_later']:+.3f} "
                     f"({s['informative_later']}) |")
    best = max(results, key=lambda name: summary(results[name])["p_hat_minus_uniform"])
    example = next((f for f in results[best]["forks"] if any(f["right"]) and not all(f["right"])), None)
    if example:
        lines += ["", f"One informative fork under {best} (draft: right/wrong, p̂, q, what it was compared by; "
                      "then the teacher's continuations):", "", "```"]
        per_draft = len(example["compared"]) // len(example["drafts"])
        for k, (text, right, p, q) in enumerate(zip(example["drafts"], example["right"], example["target"],
                                                    example["q"])):
            lines.append(f"{'right' if right else 'wrong'}  p̂ {p:.2f}  q {q:.2f}  {text!r}")
            lines += [f"      compared by {c!r}" for c in example["compared"][k * per_draft:(k + 1) * per_draft]]
        lines += [f"teacher  {text!r}" for text in example["teacher"]] + ["```"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=list(OPD_TEACHER), default="stories-foreign")
    parser.add_argument("--candidates", nargs="+", default=[], metavar="HORIZON:SIMILARITY[:R]",
                        help=f"default: {' '.join(CANDIDATES)}; on code {' '.join(CODE_CANDIDATES)}")
    parser.add_argument("--batches", type=int, default=8, help="batches of 16 rollouts")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="", help="file name of the results (default: census-<world>)")
    parser.add_argument("--load", default="alone on 2 CPU cores", help="what else ran, for the time column")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 2)))
    args.candidates = args.candidates or (CODE_CANDIDATES if args.world == "code" else CANDIDATES)
    results, cfg = census(args.world, args.candidates, args.batches)
    lines = report(results, cfg, args)
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    name = args.name or f"census-{args.world}"
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.json").write_text(json.dumps(compact(results, args)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
