"""The second reading, --objective audit: each piece against a value computed independently here (by hand, by a
plain dynamic-programming edit distance, or by autograd through the written formula), and a run through the CLI."""

import copy
import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import omniopd
from omniopd_lib.common import RunState
from omniopd_lib.config import parse_args
from omniopd_lib.similarity import Similarity, ned, rouge1
from omniopd_lib.tracking import fork_table
import toyworld
from omniopd_tools.serve import FaultPlan
from omniopd_audit import audit_anchors, audit_loss, audit_target
from omniopd_lib.common import OmniOPDError

ROOT = Path(__file__).resolve().parent.parent


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance by the textbook table: the oracle for rapidfuzz's."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


# φ ---------------------------------------------------------------------------

def test_ned_hand_values():
    assert ned("the cat sat", "the cat sat") == 1.0            # identical
    assert ned("abc", "xyz") == 0.0                            # disjoint, same length: every character substituted
    assert ned("abc", "") == 0.0 and ned("", "abc") == 0.0     # one empty
    assert ned("", "") == 1.0                                  # both empty
    assert ned("cat", "cut") == pytest.approx(1 - 1 / 3)       # one substitution in three characters
    assert ned("cat", "cats") == pytest.approx(1 - 1 / 4)      # one insertion, normalised by the longer text
    assert ned("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    # each text is cut to its first 4,000 characters before comparing
    assert ned("a" * 4000 + "b" * 500, "a" * 4000) == 1.0


def test_ned_equals_the_textbook_edit_distance_on_random_texts():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("ab c\n7") for _ in range(rng.randint(0, 30)))
        b = "".join(rng.choice("ab c\n7") for _ in range(rng.randint(0, 30)))
        expected = 1.0 if not a and not b else 1 - edit_distance(a, b) / max(len(a), len(b))
        assert ned(a, b) == pytest.approx(expected, abs=1e-12)


def test_rouge1_hand_values():
    assert rouge1("The cat sat.", "the cat ran") == pytest.approx(2 / 3)   # 2 of 3 words each way
    assert rouge1("a a b", "a b b") == pytest.approx(2 / 3)                # counted with multiplicity
    assert rouge1("", "") == 1.0 and rouge1("...", "") == 1.0 and rouge1("x", "") == 0.0
    assert rouge1("12 + 3 = 15", "15 = 3 + 12") == 1.0                     # word order does not count


# π̂ ----------------------------------------------------------------------------

def test_audit_target_equals_a_hand_computation():
    own = "Tom has 12"
    continuations = ["Tom has 12", "Tom has 13", "Tom got 9", ""]
    # ned by hand: identical 1; one substitution in 10 characters 0.9; "has 12" -> "got 9": h->g, a->o, s->t,
    # 1->9, delete 2 = 5 edits over 10 characters 0.5; an empty continuation 0
    phi = Similarity("ned").matrices([[own]], [continuations])[0]
    assert phi.tolist()[0] == pytest.approx([1.0, 0.9, 0.5, 0.0], abs=1e-6)
    chunk_logprobs = torch.tensor([-0.1, -0.5, -0.3])
    pi_hat, pi_bar = audit_target(phi.sum(1), chunk_logprobs.mean().view(1), num_samples=4, alpha=1.0)
    assert pi_bar.item() == pytest.approx(math.exp(-0.3), abs=1e-6)              # 0.7408182
    assert pi_hat.item() == pytest.approx((2.4 + 1.0 * math.exp(-0.3)) / (4 + 1), abs=1e-6)   # 0.6281636
    assert pi_hat.item() == pytest.approx(0.6281636, abs=1e-6)
    # α = 0: the raw agreement share; α large: the student's own probability
    assert audit_target(torch.tensor([2.4]), torch.tensor([-0.3]), 4, 0.0)[0].item() == pytest.approx(0.6)
    assert audit_target(torch.tensor([2.4]), torch.tensor([-0.3]), 4, 1e9)[0].item() == pytest.approx(
        math.exp(-0.3), abs=1e-6)


def test_the_target_carries_no_gradient():
    mean_logprob = torch.tensor([-0.4], requires_grad=True)
    pi_hat, pi_bar = audit_target(torch.tensor([3.0]), mean_logprob, 10, 1.0)
    assert not pi_hat.requires_grad and not pi_bar.requires_grad


# where to audit -----------------------------------------------------------------

def test_chunks_never_overlap_never_cross_eos_and_take_the_highest_entropy_first():
    rng = torch.Generator().manual_seed(0)
    stop = 99
    for trial in range(300):
        T, C, M = 40, int(torch.randint(1, 9, (1,), generator=rng)), int(torch.randint(1, 6, (1,), generator=rng))
        lengths = torch.randint(0, T + 1, (3,), generator=rng)
        ids = torch.randint(0, 50, (3, T), generator=rng)
        mask = torch.zeros(3, T, dtype=torch.long)
        for b, length in enumerate(lengths.tolist()):
            mask[b, :length] = 1
            if length and b != 2:      # rows 0 and 1 end with a stop token; row 2 ran out of tokens
                ids[b, length - 1] = stop
        # many ties: entropies from a few values
        entropy = torch.randint(0, 4, (3, T), generator=rng).float()
        anchors = audit_anchors(entropy, ids, mask, {stop}, M, C)
        for b in range(3):
            starts = [t for row, t in anchors if row == b]
            content = int(mask[b].sum()) - (1 if b != 2 and int(mask[b].sum()) else 0)
            assert len(starts) <= M and starts == sorted(starts)
            assert all(0 <= t and t + C <= content for t in starts), (trial, starts, content, C)   # before EOS
            assert all(later - earlier >= C for earlier, later in zip(starts, starts[1:]))         # no overlap
            # greedy by (entropy, later position): no skipped start could have been taken before a chosen one
            free = [t for t in range(content - C + 1) if all(abs(t - s) >= C for s in starts)]
            assert len(starts) == M or not free, (trial, starts, free)


def test_greedy_choice_and_ties_on_a_worked_example():
    entropy = torch.tensor([[0.1, 0.9, 0.2, 0.9, 0.3, 0.1, 0.8, 0.1, 0.0, 0.0]])
    ids = torch.tensor([[5, 5, 5, 5, 5, 5, 5, 5, 5, 99]])
    mask = torch.ones(1, 10, dtype=torch.long)
    # C = 2 over 9 content tokens (the stop token at 9 is never audited): the tie at 0.9 goes to t = 3, then
    # t = 1 (|1 - 3| = 2 is no overlap), then 0.8 at t = 6; t = 8 would end past the content
    assert audit_anchors(entropy, ids, mask, {99}, 3, 2) == [(0, 1), (0, 3), (0, 6)]
    assert audit_anchors(entropy, ids, mask, {99}, 1, 2) == [(0, 3)]
    assert audit_anchors(entropy, ids, mask, {99}, 5, 20) == []   # shorter than one chunk: none


# the loss --------------------------------------------------------------------

@pytest.fixture()
def audited_batch(tiny_model_path):
    """A real tiny student and a perturbed reference, real rollouts, chunks chosen by audit_anchors and given
    targets by hand."""
    from omniopd_lib import models
    torch.manual_seed(0)
    student, tokenizer = models.load_model(tiny_model_path, "student", torch.device("cpu"))
    reference = copy.deepcopy(student)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = omniopd.Config(objective="audit", max_new_tokens=24, temperature=1.3, chunk_len=3, audit_budget=3,
                         kl_beta=0.3)
    rollout = omniopd.sample_rollouts(student, tokenizer, ["Ann has 3 pens.", "Ben has 12 cats.", "Cy?"], cfg)
    anchors = audit_anchors(rollout.entropy_B_T, rollout.response_ids_B_T, rollout.response_mask_B_T,
                                    {tokenizer.eos_token_id}, cfg.audit_budget, cfg.chunk_len)
    assert len(anchors) >= 3
    chunks = omniopd.Drafts([[]] * len(anchors), [[[0] * cfg.chunk_len]] * len(anchors), anchors)
    targets = torch.linspace(0.2, 0.9, len(anchors))[:, None]
    batch = omniopd.StepBatch(rollout, chunks, targets, num_rollouts=3)
    return RunState(student, tokenizer, reference, None, None, None), batch, cfg


def written_formula(run, batch, cfg):
    """L = (-Σ_c π̂_c Σ_{t∈c} log π_θ(y_t) + β Σ_{t ∈ y, t ∉ any chunk} Σ_v q_v (log q_v - log p_v)) / B, with
    plain autograd over full-vocabulary log-softmaxes, every position written out."""
    rollout = batch.rollout
    ids = torch.cat([rollout.prompt_ids_B_P, rollout.response_ids_B_T], 1)
    mask = torch.cat([rollout.prompt_mask_B_P, rollout.response_mask_B_T], 1)
    P, T = rollout.prompt_ids_B_P.shape[1], rollout.response_ids_B_T.shape[1]
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    logp = F.log_softmax(run.student(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.float(), -1)
    with torch.no_grad():
        logq = F.log_softmax(run.reference(input_ids=ids, attention_mask=mask,
                                           position_ids=position_ids).logits.float(), -1)
    total = torch.zeros(())
    audited = set()
    for (b, t), weight in zip(batch.drafts.forks, batch.target_F_K[:, 0].tolist()):
        for j in range(t, t + cfg.chunk_len):
            total = total - weight * logp[b, P + j - 1, rollout.response_ids_B_T[b, j]]
            audited.add((b, j))
    for b in range(rollout.response_ids_B_T.shape[0]):
        for j in range(T):
            if rollout.response_mask_B_T[b, j] and (b, j) not in audited:
                q, lq, lp = logq[b, P + j - 1].exp(), logq[b, P + j - 1], logp[b, P + j - 1]
                total = total + cfg.kl_beta * (q * (lq - lp)).sum()
    return total / batch.num_rollouts


def test_audit_loss_and_its_gradient_equal_autograd_through_the_written_formula(audited_batch):
    run, batch, cfg = audited_batch
    loss, metrics = audit_loss(run, batch, cfg)
    loss.backward()
    ours = [p.grad.clone() for p in run.student.parameters()]
    run.student.zero_grad()
    expected = written_formula(run, batch, cfg)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for mine, theirs in zip(ours, (p.grad for p in run.student.parameters())):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    assert metrics["loss/chunk"] > 0 and metrics["loss/anchor"] > 0


def test_unaudited_tokens_are_exactly_the_response_minus_the_chunks(audited_batch):
    run, batch, cfg = audited_batch
    batch.target_F_K = torch.zeros_like(batch.target_F_K)   # π̂ = 0: only the anchor is left
    loss, metrics = audit_loss(run, batch, cfg)
    rollout = batch.rollout
    with torch.no_grad():
        logits = omniopd.response_logits(run.student, rollout)
        reference = omniopd.response_logits(run.reference, rollout)
        kl_B_T = (F.softmax(reference, -1) * (F.log_softmax(reference, -1) - F.log_softmax(logits, -1))).sum(-1)
    outside = rollout.response_mask_B_T.bool().clone()
    for b, t in batch.drafts.forks:
        outside[b, t:t + cfg.chunk_len] = False
    assert metrics["loss/chunk"] == 0
    assert metrics["loss/anchor"] == pytest.approx(kl_B_T[outside].sum().item() / 3, rel=1e-5)
    # neither the chunks nor the padding after EOS are anchored
    assert metrics["loss/anchor"] != pytest.approx((kl_B_T * rollout.response_mask_B_T).sum().item() / 3, rel=1e-3)


# end to end --------------------------------------------------------------------

def recompute_records(records, alpha, samples):
    """Every record's φ, k_sem and π̂ from its own texts and π̄, by hand."""
    for record in records:
        assert len(record["continuations"]) == samples
        phi = [1 - edit_distance(record["chunk"], r) / max(len(record["chunk"]), len(r)) if record["chunk"] or r
               else 1.0 for r in record["continuations"]]
        assert record["phi"] == pytest.approx(phi, abs=1e-6)
        assert record["k_sem"] == pytest.approx(sum(phi), abs=1e-5)
        assert record["pi_hat"] == pytest.approx((record["k_sem"] + alpha * record["pi_bar"]) / (samples + alpha),
                                                 abs=1e-6)
        assert 0 <= record["pi_hat"] <= 1 and 0 < record["pi_bar"] <= 1


def test_the_default_audit_run_records_every_chunk_and_its_target(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "omniopd.py"), "--objective", "audit", "--steps", "2",
                           "--eval-size", "8", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    # the offline world's scaled-down audit defaults, N, α, β and φ the public implementation's
    assert (config["audit_budget"], config["chunk_len"], config["teacher_samples"], config["kl_beta"],
            config["similarity"]) == (4, 8, 10, 0.1, "ned")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][:2]
    for m in steps:
        assert m["audit/chunks"] > 0 and m["audit/dropped"] == 0 and len(m["audit/records"]) == m["audit/chunks"]
        assert math.isfinite(m["loss/total"]) and m["grad/norm"] > 0
        assert m["teacher/failures"] == 0
        recompute_records(m["audit/records"], alpha=1.0, samples=10)
        for record in m["audit/records"]:
            assert record["start"] >= 0 and 0 <= record["rollout"] < 16
    assert "held-out accuracy" in done.stdout


def test_a_chunk_without_n_answers_is_dropped_and_counted(serve, tmp_path, monkeypatch):
    """Half the teacher's requests fail (HTTP 500, no retries): a chunk with fewer than N continuations is left out
    of the loss and counted in audit/dropped, never scored as a disagreement."""
    _, url = serve("stories", faults=FaultPlan(rate=0.5, kinds=("500",), seed=3))
    out = tmp_path / "run"
    cfg = parse_args([*toyworld.world_args("stories"), "--objective", "audit", "--teacher", "openai:stories",
                      "--teacher-base-url", url, "--teacher-retries", "0", "--teacher-samples", "3", "--steps", "1",
                      "--batch-size", "4", "--eval-size", "0", "--no-eval-teacher", "--out", str(out)],
                     omniopd.Config, "")
    monkeypatch.setenv("OPENAI_API_KEY", "loopback-no-key-needed")
    omniopd.train(cfg)
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert m["audit/dropped"] > 0 and m["audit/chunks"] > 0, m
    assert m["teacher/failures"] > 0
    recompute_records(m["audit/records"], alpha=1.0, samples=3)   # every kept chunk has all 3 answers


def test_the_fork_table_shows_the_own_chunk_with_pi_hat_and_each_continuation_with_phi():
    class Batch:
        objective = "audit"
        target_F_K = torch.tensor([[0.625]])
        fork_texts = [(["Tom has 12"], ["Tom has 12", "Tom has 13"], torch.tensor([[1.0, 0.9]]))]
    assert fork_table(Batch, 3) == [(1, "own chunk", "Tom has 12", 0.625), (1, "teacher 1", "Tom has 12", 1.0),
                                   (1, "teacher 2", "Tom has 13", 0.9)]


def test_the_objective_sets_its_own_defaults_and_keeps_what_the_user_gave():
    drafts = omniopd.Config()
    assert (drafts.audit_budget, drafts.chunk_len, drafts.teacher_samples, drafts.kl_beta, drafts.similarity) == (
        4, 16, 4, 0.05, "embed")
    real = omniopd.Config(student="Qwen2.5-0.5B", objective="audit")
    assert (real.audit_budget, real.chunk_len, real.teacher_samples, real.kl_beta, real.similarity) == (
        10, 50, 10, 0.1, "ned")
    given = parse_args(["--objective", "audit", "--kl-beta", "0", "--chunk-len", "5", "--similarity", "embed"],
                       omniopd.Config, "")
    assert (given.kl_beta, given.chunk_len, given.similarity, given.audit_budget) == (0.0, 5, "embed", 4)
    assert given.fork_gap == 5


def test_k3_is_refused_for_the_audit_reading():
    with pytest.raises(OmniOPDError, match="k3"):
        omniopd.check_config(omniopd.Config(objective="audit", anchor="k3").resolved())


def test_a_run_cannot_change_its_reading_on_resume():
    from omniopd_lib import checkpoint
    saved = dataclasses.asdict(omniopd.Config().resolved())
    with pytest.raises(OmniOPDError, match="--objective"):
        checkpoint.check_resumable(saved, omniopd.Config(objective="audit", resume="runs/x/step-000002").resolved())
