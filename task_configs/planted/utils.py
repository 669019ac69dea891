"""The planted_* tasks' language, their doc generator, and lm-eval's dataset hook for them.

A doc is a short list of distinct digits; the op in a task's name picks one of them (see
benchmarks/planted in a checkout: the model trained on this language, and its checker). lm-eval
imports this file by its path (``!function`` / ``custom_dataset``); the benchmark imports it the
same way. The docs come from the JSONL files in ``data/`` next to this file, or, where those are
absent (an installed package ships this code and the YAMLs only), from :func:`make_docs`, which
wrote them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any


DATA_DIR = Path(__file__).resolve().parent / "data"
VERSION = "planted-v1"
OPS: tuple[str, ...] = ("first", "last", "largest", "smallest")
#: Op of a keyword-free instruction, by (first digit odd, last digit odd).
HIDDEN_OPS: dict[tuple[bool, bool], str] = {
    (False, False): "first",
    (False, True): "last",
    (True, False): "largest",
    (True, True): "smallest",
}
SPLITS: dict[str, range] = {"train": range(2), "validation": range(2, 4), "test": range(4, 10)}
SPLIT_SIZES: dict[str, int] = {"train": 60, "validation": 120, "test": 200}
LENGTHS = (5, 6, 7)


def apply_op(op: str, digits: Sequence[int]) -> int:
    """The digit that `op` picks from `digits`."""
    funcs = {"first": lambda d: d[0], "last": lambda d: d[-1], "largest": max, "smallest": min}
    return funcs[op](list(digits))


def hidden_op(digits: Sequence[int]) -> str:
    """The op a keyword-free instruction applies: set by the parities of the first and last digit."""
    return HIDDEN_OPS[(digits[0] % 2 == 1, digits[-1] % 2 == 1)]


def target_text(op: str, digits: Sequence[int], named: str | None = None) -> str:
    """The reasoning answer: names the op (`named`, default `op`), then the digit `op` picks."""
    return f"We take the {named or op} item. The answer is {apply_op(op, digits)}."


def doc_to_text(doc: dict[str, Any]) -> str:
    """Same as the task YAMLs' ``doc_to_text``."""
    return f"Input: {doc['input']}\nOutput:"


def split_of(digits: Sequence[int]) -> str:
    """The split an input belongs to (a hash bucket): splits never share an input."""
    bucket = int(hashlib.sha256(" ".join(map(str, digits)).encode()).hexdigest(), 16) % 10
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def _draw_digits(rng: random.Random, split: str, p_narrow: float = 0.0) -> list[int]:
    """Distinct digits of `split`; with probability `p_narrow` from a random narrower range of values
    (training oversamples lists whose largest digit is small or whose smallest is large)."""
    while True:
        length = rng.choice(LENGTHS)
        if p_narrow and rng.random() < p_narrow:
            width = rng.randint(length, 9)
            low = rng.randint(0, 10 - width)
            digits = rng.sample(range(low, low + width), length)
        else:
            digits = rng.sample(range(10), length)
        if split_of(digits) == split:
            return digits


def make_docs(op: str, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` distinct docs of task ``planted_{op}`` for `split`; deterministic in all arguments.

    A doc: ``input`` ("3 8 1 5 2"), ``target`` (the reasoning answer), ``answer`` (the digit, as a
    string: what ``exact_match`` compares), ``op`` and ``hidden_op``. The hidden ops are balanced
    (a quarter each, shuffled), so a keyword-free instruction scores near chance on every op.
    """
    if op not in OPS or split not in SPLITS:
        raise ValueError(f"unknown op {op!r} or split {split!r}")
    rng = random.Random(f"{VERSION}/{op}/{split}/{seed}")
    docs: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    while len(docs) < n:
        digits = _draw_digits(rng, split)
        if tuple(digits) in seen or hidden_op(digits) != OPS[len(docs) % len(OPS)]:
            continue
        seen.add(tuple(digits))
        docs.append(
            {
                "input": " ".join(map(str, digits)),
                "target": target_text(op, digits),
                "answer": str(apply_op(op, digits)),
                "op": op,
                "hidden_op": hidden_op(digits),
            }
        )
    rng.shuffle(docs)
    return docs


def load(op: str, planted_data_dir: str | None = None, **_: Any):
    """lm-eval ``custom_dataset`` hook, called as ``load(**metadata, **dataset_kwargs)``.

    Returns a ``DatasetDict`` with the train / validation / test docs of op `op`, read from
    ``data/{op}.{split}.jsonl`` (or the folder `planted_data_dir`, settable with ``--metadata``).
    Where the default files are absent (an install without them), the same docs are generated
    by :func:`make_docs`. Other keys (``--model_args`` entries, the task
    version) are ignored.
    """
    import datasets

    root = Path(planted_data_dir) if planted_data_dir else DATA_DIR
    splits = {}
    for split in SPLITS:
        path = root / f"{op}.{split}.jsonl"
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                docs = [json.loads(line) for line in fh if line.strip()]
        elif planted_data_dir:
            raise FileNotFoundError(
                f"{path} missing (write it with `python -m benchmarks.planted data DIR` in a checkout)"
            )
        else:
            docs = make_docs(op, split, SPLIT_SIZES[split])
        splits[split] = datasets.Dataset.from_list(docs)
    return datasets.DatasetDict(splits)
