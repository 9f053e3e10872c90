"""The metrics log: metrics.jsonl, and the same names and numbers to TensorBoard or W&B, with fork tables."""

import dataclasses
import json
import os
import uuid
from pathlib import Path

import torch

from omniopd_lib.generation import response_texts
from omniopd_lib.grading import grade


# what every teacher counts (omniopd_lib.teachers.Teacher), logged as teacher/* and kept in checkpoints
TEACHER_COUNTERS = ("calls", "failures", "tokens", "requests", "prompt_tokens", "cached_tokens")


class MetricsLog:
    """metrics.jsonl (one line per step), and with --report-to the same names and numbers to TensorBoard or
    W&B, plus fork tables at each evaluation. A resumed run appends; W&B continues the same run by its id,
    kept in the run folder."""

    def __init__(self, cfg):
        out = Path(cfg.out)
        self.file = open(out / "metrics.jsonl", "a")
        self.view_file = open(out / VIEW_RECORDS, "a")
        self.cfg, self.recorded = cfg, None
        self.tensorboard = self.wandb = None
        if cfg.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))
        elif cfg.report_to == "wandb":
            import wandb
            id_file = out / "wandb_id.txt"
            if not id_file.exists():
                id_file.write_text(uuid.uuid4().hex[:12])   # not random: that would move the run's RNG
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "omniopd"), dir=str(out), name=out.name,
                                    id=id_file.read_text().strip(), resume="allow", config=dataclasses.asdict(cfg))

    def write(self, metrics: dict, to_file=True) -> None:
        """One step's metrics; every number also to the tracker, under the same name, at metrics["step"]."""
        if to_file:
            self.file.write(json.dumps(metrics) + "\n")
            self.file.flush()
        numbers = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        if self.tensorboard:
            for name, value in numbers.items():
                self.tensorboard.add_scalar(name, value, metrics["step"])
            self.tensorboard.flush()
        if self.wandb:
            self.wandb.log(numbers, step=metrics["step"])

    def forks(self, batch, step: int, rows=None, tokenizer=None, limit: int = 3) -> None:
        """After step `step` (batch: what it collected from rows): at the steps the run's page shows (the first, the
        last, each evaluation's and every --view-every'th, by default every ⌈steps/8⌉th), its whole record to
        view.jsonl (view_record; python -m omniopd_tools.view OUT draws it), and with --report-to the first `limit`
        forks as a table, each draft with its p̂, then the teacher's continuations."""
        every = self.cfg.view_every or max(1, -(-self.cfg.steps // 8))   # by default about eight between
        evaluates = self.cfg.eval_every and step % self.cfg.eval_every == 0
        if batch is None or step == self.recorded or not (step == 1 or step >= self.cfg.steps or evaluates
                                                           or (every and step % every == 0)):
            return
        self.recorded = step
        if tokenizer is not None:
            self.view_file.write(json.dumps(view_record(batch, step, tokenizer, rows, self.cfg)) + "\n")
            self.view_file.flush()
        rows = fork_table(batch, limit)
        if not rows or not (self.tensorboard or self.wandb):
            return
        weight = "π̂ (own chunk), φ (teacher)" if batch.objective == "audit" else "p̂"
        if self.tensorboard:
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", "⏎")  # noqa: E731  (one table row each)
            lines = [f"| fork | who | text | {weight} |", "|---|---|---|---|"]
            lines += [f"| {f} | {who} | {cell(text)} | {'' if target is None else f'{target:.3f}'} |"
                      for f, who, text, target in rows]
            self.tensorboard.add_text("fork_table", "\n".join(lines), step)
            self.tensorboard.flush()
        if self.wandb:
            import wandb
            table = wandb.Table(columns=["fork", "who", "text", weight], data=[list(r) for r in rows])
            self.wandb.log({"fork_table": table}, step=step)

    def close(self) -> None:
        self.file.close()
        self.view_file.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()


def fork_table(batch, limit: int) -> list[tuple]:
    """(fork, who, text, weight) rows: "draft k" rows carry p̂_k and "teacher m" rows the continuation (weight None);
    under the audit reading, the "own chunk" row carries π̂ and each "teacher m" row its φ(own chunk, r_m)."""
    rows = []
    if batch is None or batch.target_F_K is None:
        return rows
    audit = batch.objective == "audit"
    for f, (drafts, teacher_texts, similarity_K_M) in enumerate(batch.fork_texts[:limit], start=1):
        rows += [(f, "own chunk" if audit else f"draft {k}", text, round(float(p), 4)) for k, (text, p) in
                 enumerate(zip(drafts, batch.target_F_K[f - 1].tolist()), start=1)]
        rows += [(f, f"teacher {m}", text, round(float(similarity_K_M[0, m - 1]), 4) if audit else None)
                 for m, text in enumerate(teacher_texts, start=1)]
    return rows


# view.jsonl: one record per recorded step (MetricsLog.forks says which), what omniopd_tools/view.py draws.
# Every text is cut to TEXT_LIMIT characters with a visible mark, and a record keeps at most RECORD_ROLLOUTS rollouts
# of RECORD_TOKENS tokens and RECORD_FORKS forks, so a long run's records stay a few hundred kilobytes a step.
VIEW_RECORDS = "view.jsonl"
TEXT_LIMIT, RECORD_ROLLOUTS, RECORD_TOKENS, RECORD_FORKS = 2000, 16, 512, 48


def cut_text(text, limit: int = TEXT_LIMIT) -> str:
    """text, or its first `limit` characters and a mark saying how many more there were."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" … [cut: {len(text) - limit:,} more characters]"


def view_record(batch, step: int, tokenizer, rows=None, cfg=None) -> dict:
    """One step as the run's page shows it: each rollout's tokens with H_t (where the batch kept it), whether its
    answer is right (where rows and cfg can grade it), and each fork (or audited chunk) with its position, the
    drafts' texts, q (the student's own draft distribution), p̂ (audit: π̂ and π̄), what each draft was compared by,
    the teacher's continuations and S (audit: φ)."""
    record = {"step": step, "objective": batch.objective or "baseline", "rollouts": [], "forks": []}
    rollout = batch.rollout
    if rollout is not None:
        texts = response_texts(tokenizer, rollout)
        graded = [None] * len(texts)
        if rows is not None and cfg is not None and len(rows) == len(texts):
            graded = [g["correct"] for g in grade(rows, texts, cfg)]
        lengths = rollout.response_mask_B_T.sum(1).tolist()
        entropy = batch.entropy_B_T
        for b in range(min(len(texts), RECORD_ROLLOUTS)):
            ids = rollout.response_ids_B_T[b, :min(int(lengths[b]), RECORD_TOKENS)].tolist()
            record["rollouts"].append({
                "question": cut_text(rows[b]["question"]) if rows else "",
                "reference": cut_text(rows[b].get("answer", "")) if rows else "",
                "tokens": [cut_text(tokenizer.decode([i]), 200) for i in ids],
                "entropy": [] if entropy is None else [round(float(h), 4) for h in entropy[b, :len(ids)].tolist()],
                "correct": graded[b], "length": int(lengths[b])})
    if batch.drafts is None or batch.target_F_K is None:
        return record
    audit = batch.objective == "audit"
    audit_records = batch.metrics.get("audit/records", []) if audit else []
    for f, ((b, t), (drafts, teacher_texts, similarity_K_M)) in enumerate(zip(batch.drafts.forks, batch.fork_texts)):
        if f == RECORD_FORKS:
            break
        fork = {"rollout": b, "position": t, "drafts": [cut_text(d) for d in drafts],
                "target": [round(float(p), 4) for p in batch.target_F_K[f].tolist()],
                "teacher": [cut_text(text) for text in teacher_texts],
                "S": [[round(float(x), 4) for x in row] for row in torch.as_tensor(similarity_K_M).tolist()]}
        if batch.q_F_K is not None:
            fork["q"] = [round(float(x), 4) for x in batch.q_F_K[f].tolist()]
        if f < len(batch.horizon_texts) and not audit:
            fork["compared"] = [cut_text(text) for text in batch.horizon_texts[f]]
        if audit and f < len(audit_records):
            fork["pi_bar"] = round(float(audit_records[f]["pi_bar"]), 4)
        record["forks"].append(fork)
    return record


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume: drop the lines of steps after the checkpoint (a killed run did them and they will be
    redone), and a last line cut short by the kill; from metrics.jsonl at path and the view records beside it."""
    def wanted(line):
        try:
            return json.loads(line)["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            return False
    for log in (Path(path), Path(path).parent / VIEW_RECORDS):
        if log.exists():
            log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if wanted(line)))


def rollout_metrics(rollout, entropy_B_T) -> dict:
    """rollout/length and rollout/entropy: mean tokens and mean H_t of the generated tokens."""
    mask_B_T = rollout.response_mask_B_T
    return {"rollout/length": mask_B_T.sum(1).float().mean().item(),
            "rollout/entropy": (entropy_B_T.detach() * mask_B_T).sum().item() / max(int(mask_B_T.sum()), 1)}


def fork_metrics(forks, answered: int, entropy_B_T, mask_B_T, similarities, target_F_K) -> dict:
    """An OmniOPD batch's forks/*, sim/mean and pref/* (the metrics table in docs/running.md): forks chosen,
    skipped (no teacher answer) and unmatched (every teacher rollout abstained), mean H_t at forks and elsewhere,
    mean S, the entropy of p̂ and the weight it gives the student's own draft."""
    voted = target_F_K.shape[0]
    metrics = {"forks/count": len(forks), "forks/skipped": len(forks) - answered, "forks/no_match": answered - voted}
    if answered:
        fork_positions = torch.zeros_like(mask_B_T, dtype=torch.bool)
        for b, t in forks:
            fork_positions[b, t] = True
        metrics.update({
            "forks/entropy": entropy_B_T[fork_positions].mean().item(),
            "forks/entropy_elsewhere": entropy_B_T[(mask_B_T.bool() & ~fork_positions)].mean().item(),
            "sim/mean": torch.cat([S.flatten() for S in similarities]).mean().item()})
    if voted:
        metrics.update({"pref/entropy": -(torch.xlogy(target_F_K, target_F_K)).sum(1).mean().item(),
                        "pref/own_draft": target_F_K[:, 0].mean().item()})
    return metrics


def audit_metrics(batch, anchors: int, phi_F_N, pi_bar_F, chunk_len: int) -> dict:
    """The audit reading's audit/*: chunks scored and dropped (fewer than N teacher answers), the share of the
    generated tokens audited, mean k_sem, π̄ and π̂, and audit/records: every scored chunk with its text, its N
    continuations, each φ, k_sem, π̄ and π̂, enough to recompute the target by hand."""
    target_F, generated = batch.target_F_K[:, 0], max(int(batch.rollout.response_mask_B_T.sum()), 1)
    metrics = {"audit/chunks": len(target_F), "audit/dropped": anchors - len(target_F),
               "audit/fraction": len(target_F) * chunk_len / generated,
               "audit/tokens": len(target_F) * chunk_len, "audit/generated": generated}
    if len(target_F):
        metrics.update({"audit/k_sem": phi_F_N.sum(1).mean().item(), "audit/pi_bar": pi_bar_F.mean().item(),
                        "audit/pi_hat": target_F.mean().item()})
    metrics["audit/records"] = [
        {"rollout": b, "start": t, "chunk": texts[0], "continuations": continuations, "phi": phi_F_N[f].tolist(),
         "k_sem": phi_F_N[f].sum().item(), "pi_bar": pi_bar_F[f].item(), "pi_hat": target_F[f].item()}
        for f, ((b, t), (texts, continuations, _)) in enumerate(zip(batch.drafts.forks, batch.fork_texts))]
    return metrics
