"""Split plans: which docs of a task optimize-train, optimize-dev and held-out use.

Every plan is seeded, recorded in the results, and checked for zero overlap with held-out.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import PromptOptError
from .options import RunOptions

_FAMILIES = {
    "bbh": (re.compile(r"^(leaderboard_)?bbh"), "bbh"),
    "mmlu": (re.compile(r"^mmlu"), "mmlu"),
    "gsm8k": (re.compile(r"^gsm8k"), "gsm8k"),
    "folio": (re.compile(r"^folio"), "folio"),
}
# (train, dev) defaults per family; "internal" families split the evaluated split itself.
_DEFAULT_SIZES = {"bbh": (50, 100), "mmlu": (50, 100), "gsm8k": (100, 100), "folio": (100, 100), "other": (50, 100)}


@dataclass(frozen=True)
class Subset:
    split: str
    indices: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "size": len(self.indices), "indices": list(self.indices)}


@dataclass(frozen=True)
class SplitPlan:
    family: str
    rule: str
    train: Subset
    dev: Subset
    heldout: Subset
    heldout_is_whole_split: bool

    def subset(self, role: str) -> Subset:
        return {"train": self.train, "dev": self.dev, "heldout": self.heldout}[role]

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "rule": self.rule,
            **{role: self.subset(role).as_dict() for role in ("train", "dev", "heldout")},
        }


def task_family(task_name: str, dataset_path: str | None) -> str:
    for family, (pattern, marker) in _FAMILIES.items():
        if pattern.match(task_name) or marker in (dataset_path or "").lower():
            return family
    return "other"


def evaluated_split(config: Any) -> str:
    """The split lm-eval evaluates: test if the task has one, else validation."""
    return config.test_split or config.validation_split


def scaled_sizes(train: int, dev: int, budget: int) -> tuple[int, int]:
    """Shrink (train, dev) proportionally to fit `budget` docs."""
    if train + dev <= budget:
        return train, dev
    scaled_train = round(budget * train / (train + dev))
    return scaled_train, budget - scaled_train


def _draw(pool: list[int], train: int, dev: int, rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    order = pool[:]
    rng.shuffle(order)
    return tuple(sorted(order[:train])), tuple(sorted(order[train : train + dev]))


def plan_splits(
    task_name: str,
    config: Any,
    options: RunOptions,
    split_size: Callable[[str], int],
    fewshot_exemplars: Callable[[str], set[int]],
) -> SplitPlan:
    """Choose the optimize-train / dev / held-out docs for one leaf task.

    `split_size(name)` counts a split's docs; `fewshot_exemplars(name)` gives the indices of that
    split's docs that serve as few-shot exemplars when the held-out docs are evaluated.
    """
    family = task_family(task_name, getattr(config, "dataset_path", None))
    evaluated = evaluated_split(config)
    default_train, default_dev = _DEFAULT_SIZES[family]
    rng = random.Random(f"{options.seed}:{task_name}")

    source = None
    if family == "mmlu":
        # validation is the optimize source; `dev` is the few-shot pool. Variants that evaluate
        # validation optimize on `dev` instead (zero-shot variants never show it as exemplars).
        if evaluated == config.validation_split:
            source = config.fewshot_split or "dev"
        else:
            source = config.validation_split
    elif family in ("gsm8k", "folio", "other") and config.training_split and config.training_split != evaluated:
        source = config.training_split
    elif family == "other" and config.validation_split and config.validation_split != evaluated:
        source = config.validation_split

    if source is None:  # internal split of the evaluated split (BBH, test-only tasks)
        n = split_size(evaluated)
        if options.train_size is not None or options.dev_size is not None:
            train = options.train_size if options.train_size is not None else default_train
            dev = options.dev_size if options.dev_size is not None else default_dev
            if train + dev >= n:
                raise PromptOptError(
                    f"{task_name}: train_size {train} + dev_size {dev} leaves no held-out docs "
                    f"of its {n} {evaluated!r} docs; choose smaller sizes"
                )
        else:
            train, dev = scaled_sizes(default_train, default_dev, n - math.ceil(n / 3))
        train_idx, dev_idx = _draw(list(range(n)), train, dev, rng)
        used = set(train_idx) | set(dev_idx)
        heldout = Subset(evaluated, tuple(i for i in range(n) if i not in used))
        rule = (
            f"seeded internal split of {evaluated!r} ({n} docs): {train} train / {dev} dev / "
            f"{len(heldout.indices)} held-out; default {default_train}/{default_dev}, scaled down "
            "proportionally where held-out would keep less than a third"
        )
        plan = SplitPlan(family, rule, Subset(evaluated, train_idx), Subset(evaluated, dev_idx), heldout, False)
    else:
        n = split_size(source)
        excluded = fewshot_exemplars(source)
        pool = [i for i in range(n) if i not in excluded]
        if options.train_size is not None or options.dev_size is not None:
            train = options.train_size if options.train_size is not None else default_train
            dev = options.dev_size if options.dev_size is not None else default_dev
            if train + dev > len(pool):
                raise PromptOptError(
                    f"{task_name}: train_size {train} + dev_size {dev} exceeds the {len(pool)} usable "
                    f"docs of split {source!r}; choose smaller sizes"
                )
        else:
            train, dev = scaled_sizes(default_train, default_dev, len(pool))
        train_idx, dev_idx = _draw(pool, train, dev, rng)
        heldout = Subset(evaluated, tuple(range(split_size(evaluated))))
        rule = (
            f"seeded {train} train / {dev} dev from {source!r} ({n} docs"
            + (f", {len(excluded)} few-shot exemplars excluded" if excluded else "")
            + f"); held-out: all of {evaluated!r}"
        )
        plan = SplitPlan(family, rule, Subset(source, train_idx), Subset(source, dev_idx), heldout, True)
    check_disjoint(task_name, plan)
    return plan


def check_disjoint(task_name: str, plan: SplitPlan) -> None:
    """Raise if any optimize doc is a held-out doc or train and dev overlap."""
    pairs = [(plan.train, plan.dev), (plan.train, plan.heldout), (plan.dev, plan.heldout)]
    for a, b in pairs:
        if a.split == b.split and set(a.indices) & set(b.indices):
            raise RuntimeError(f"{task_name}: split plan overlaps ({a.split}); this is a bug")
    if not plan.dev.indices:
        raise PromptOptError(f"{task_name}: no optimize-dev docs; the task has too few docs to optimize")
    if not plan.heldout.indices:
        raise PromptOptError(f"{task_name}: no held-out docs remain to evaluate")
