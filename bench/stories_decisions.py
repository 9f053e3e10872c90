"""What a story-world model does at each reasoning choice (issue #13): add or take away, after each verb.

    python bench/stories_decisions.py toyworld/models/stories-student [--rows 200]

The story world's forks should be its reasoning choices: after "She donates 3", whether the solution adds or
takes away. OmniOPD (and GRPO) can only learn where the student sometimes samples the right choice, so this
measures, on held-out problems with every verb equally likely and the reference solution as the prefix
(teacher forcing), at the token that decides the operation: the model's probability of the right choice,
the entropy of its next-token distribution there, and the share of decisions where it is uncertain
(0.1 < P(right) < 0.9), by how frequent the verb is in the corpus (rank 1 = most frequent).
"""

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
import torch  # noqa: E402

from omniopd_lib.generation import PLAIN_TEMPLATE  # noqa: E402
from omniopd_lib import models  # noqa: E402
from toyworld import stories  # noqa: E402

DECIDING = {"Ġadd", "Ġtake", "Ġmore", "Ġfewer"}   # the first word that says which operation
BUCKETS = ((1, 6), (7, 12), (13, 24))


def step_verbs(question: str) -> list[str]:
    """The verb of each step, in order (the longest verb that fits, so "gives away" wins over "gives up")."""
    verbs = sorted(stories.GAIN_VERBS + stories.LOSS_VERBS, key=len, reverse=True)
    sentences = question.split(". ")[1:1 + stories.STEPS]
    return [next(v for v in verbs if f" {v} " in f" {sentence} ") for sentence in sentences]


def decisions(model, tokenizer, rows):
    """(verb rank, P(right), entropy) at every operation decision of the rows' reference solutions."""
    found = []
    for row in rows:
        prompt_ids = tokenizer(PLAIN_TEMPLATE.format(question=row["question"]))["input_ids"]
        answer_ids = tokenizer(row["answer"])["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([prompt_ids + answer_ids])).logits[0].float(), -1)
        tokens = tokenizer.convert_ids_to_tokens(answer_ids)
        places = [i for i, token in enumerate(tokens) if token in DECIDING]
        for place, verb in zip(places, step_verbs(row["question"])):
            rank = (stories.GAIN_VERBS.index(verb) if verb in stories.GAIN_VERBS else stories.LOSS_VERBS.index(verb)) + 1
            distribution = logprobs[len(prompt_ids) + place - 1]
            found.append((rank, distribution[answer_ids[place]].exp().item(),
                          -(distribution.exp() * distribution).sum().item()))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    model, tokenizer = models.load_model(args.model, "student", torch.device("cpu"))
    found = decisions(model.eval(), tokenizer, stories.make_problems(args.rows, "test", 0))
    print(f"{args.model}: {len(found)} decisions on {args.rows} held-out problems\n")
    print("| verb rank | decisions | P(right) | entropy (nats) | uncertain (0.1 < P < 0.9) |")
    print("|---|---|---|---|---|")
    for low, high in BUCKETS:
        here = [f for f in found if low <= f[0] <= high]
        if here:
            print(f"| {low}-{high} | {len(here)} | {statistics.mean(p for _, p, _ in here):.3f} | "
                  f"{statistics.mean(h for _, _, h in here):.3f} | {statistics.mean(0.1 < p < 0.9 for _, p, _ in here):.1%} |")


if __name__ == "__main__":
    main()
