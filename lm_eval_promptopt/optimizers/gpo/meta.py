"""The pure parts of a GPO step: the step count, the word budget, candidate parsing, trajectory
retrieval, the meta-prompt and the move.

The word budget N_t (how many words the optimizer may change at step t) decays on a cosine
schedule from `budget_start` to `budget_end` over the T steps, after an optional linear warm-up;
it is a sentence in the meta-prompt, a soft constraint (`word_edits` only reports it). Retrieval
picks the k trajectory entries the meta-prompt shows; the move goes to the best new candidate,
even one that scores below the current instruction (spec: shared/reference/gpo.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


START, END = "<START>", "<END>"
PLACEHOLDER = "<Prompt>"


@dataclass(frozen=True)
class Entry:
    """A trajectory entry: the instruction chosen at `step` (0: the initial one) and its dev score."""

    instruction: str
    score: float
    step: int


def total_steps(n_train: int, epochs: int, batch: int) -> int:
    """T = epochs x (floor(n/batch) + 1 if the remainder is at least half a batch)."""
    return epochs * (n_train // batch + (1 if 2 * (n_train % batch) >= batch else 0))


def word_budget(t: int, total: int, schedule: str, start: int, end: int, warmup: int = 0) -> int | None:
    """N_t, the words the optimizer may change at step t (1-based); None: no budget sentence."""
    if schedule == "none":
        return None
    if t < warmup:
        return int(start * t / warmup)
    if schedule == "fixed":
        return start
    progress = (t - warmup) / (total - warmup)
    if schedule == "linear":
        return int(start - (start - end) * progress)
    return int(end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_candidate(text: str) -> str:
    """The text between the first <START> and the next <END> (either may be missing), polished:
    stripped, `**` removed, first letter capitalised."""
    begin = text.find(START)
    body = text[begin + len(START) :] if begin >= 0 else text
    stop = body.find(END)
    body = (body[:stop] if stop >= 0 else body).strip().replace("**", "").strip()
    return body[:1].upper() + body[1:]


def word_edits(a: str, b: str) -> int:
    """Word-level Levenshtein distance (diagnostics only: the budget is a soft constraint)."""
    x, y = a.split(), b.split()
    row = list(range(len(y) + 1))
    for i, word in enumerate(x, 1):
        prev, row[0] = row[0], i
        for j, other in enumerate(y, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (word != other))
    return row[-1]


Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]


def retrieve(trajectory: Sequence[Entry], k: int, mode: str, embed: Embed | None = None) -> list[Entry]:
    """The k entries shown in the meta-prompt. Entries repeating an instruction count once.

    none: the current entry; recency: the current, then the newest earlier ones; relevance: the
    current, then the earlier ones most similar to it (cosine of normalised embeddings), most
    similar first, ties to the earlier; importance: the k best dev scores, ties to the earlier,
    the current not forced in.
    """
    current = trajectory[-1]
    distinct: dict[str, Entry] = {}
    for entry in trajectory:
        distinct.setdefault(entry.instruction, entry)
    if mode == "importance":
        return sorted(distinct.values(), key=lambda e: (-e.score, e.step))[:k]
    earlier = [e for e in distinct.values() if e.instruction != current.instruction]
    if mode == "none" or k == 1 or not earlier:
        return [current]
    if mode == "recency":
        return [current, *sorted(earlier, key=lambda e: -e.step)[: k - 1]]
    if embed is None:
        raise ValueError("retrieval=relevance needs an embedding function")
    vectors = embed([current.instruction, *(e.instruction for e in earlier)])
    similarity = [sum(p * q for p, q in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    ranked = sorted(range(len(earlier)), key=lambda i: (-similarity[i], earlier[i].step))
    return [current, *(earlier[i] for i in ranked[: k - 1])]


def meta_prompt(
    shown: Sequence[Entry],
    current: str,
    exemplars: Sequence[tuple[str, str]],
    update: str = "generation",
    budget: int | None = None,
) -> str:
    """The optimizer's user message: task, trajectory with scores (0-100), the current
    instruction, exemplars showing where it goes, the request, the word budget, the output format."""
    task = (
        f"Your task is to write a prompt that will take the place of {PLACEHOLDER} in the inputs shown below."
        if update == "generation"
        else f"Your task is to modify the current prompt, which takes the place of {PLACEHOLDER} in the inputs shown below."
    )
    history = "\n\n".join(f"Prompt: {e.instruction}\nScore: {round(100 * e.score)}" for e in shown)
    examples = "\n\n".join(f"Input:\n{PLACEHOLDER}\n{question}\nOutput:\n{answer}" for question, answer in exemplars)
    position = f"replaces {PLACEHOLDER} at the start of the input, before the question"
    ask = (
        f"Study the earlier prompts and their scores carefully, then write a new, improved prompt that {position}."
        if update == "generation"
        else f"Study the earlier prompts and their scores carefully, then modify the current prompt into a new, improved prompt that {position}."
    )
    parts = [
        task,
        "Here are earlier prompts, each followed by its score. Scores range from 0 to 100, and a higher score is better.\n\n"
        + history,
        f"The current prompt is:\n{current}",
    ]
    if exemplars:
        parts.append(
            f"In each input below your prompt replaces {PLACEHOLDER}. "
            "An output counts as correct only if it is exactly the output given.\n\n" + examples
        )
    closing = [ask]
    if budget is not None:
        closing.append(f"You may change at most {budget} words of the current prompt.")
    closing.append(f"Write the new prompt between {START} and {END}.")
    return "\n\n".join(parts) + "\n\n" + "\n".join(closing)


def choose(scored: list[dict[str, Any]], in_trajectory: set[str]) -> dict[str, Any] | None:
    """The best-dev candidate not already in the trajectory (ties: earlier sampled); if all
    are, the best candidate; None if nothing was parsed (the current instruction stays)."""
    pool = [c for c in scored if c["instruction"] not in in_trajectory] or scored
    return max(pool, key=lambda c: c["dev_score"]) if pool else None
