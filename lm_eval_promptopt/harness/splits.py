"""Split plans: which docs of a task optimize-train, optimize-dev and held-out use.

Every plan is seeded, recorded in the results, and checked for zero overlap with held-out.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import PromptOptError
from ..options import RunOptions


_FAMILIES = {
    "bbh": (re.compile(r"^(leaderboard_)?bbh"), "bbh"),
    "mmlu": (re.compile(r"^mmlu"), "mmlu"),
    "gsm8k": (re.compile(r"^gsm8k"), "gsm8k"),
    "folio": (re.compile(r"^folio"), "folio"),
}
# (train, dev) defaults per family; "internal" families split the evaluated split itself.
_DEFAULT_SIZES = {"bbh": (50, 100), "mmlu": (50, 100), "gsm8k": (100, 100), "folio": (100, 100), "other": (50, 100)}
PAPERS = {"greater": "GReaTer", "gpo": "GPO"}
"""The papers whose plans `split=` names (and the optimizers whose own paper `split=paper` is)."""


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


def optimize_sources(
    family: str, config: Any, evaluated: str, has_split: Callable[[str], bool]
) -> tuple[str, str] | None:
    """(train source, dev source) splits, or None for an internal split of the evaluated split."""
    if family == "bbh":
        return None
    if family == "mmlu":
        # validation is the optimize source and `dev` the few-shot pool; variants that evaluate
        # validation optimize on the few-shot split instead (they are zero-shot).
        source = (config.fewshot_split or "dev") if evaluated == "validation" else "validation"
        return (source, source) if has_split(source) else None
    usable = [s for s in (config.training_split, config.validation_split) if s and s != evaluated and has_split(s)]
    if family in ("gsm8k", "folio"):
        usable = usable[:1] if config.training_split in usable else []
    if not usable:
        return None
    return usable[0], usable[-1]


def _sizes(
    options: RunOptions, defaults: tuple[int, int], budget: int, what: str, task_name: str
) -> tuple[int, int, str]:
    """Explicit sizes must fit `budget`; default sizes are scaled down to fit it."""
    if options.train_size is None and options.dev_size is None:
        train, dev = scaled_sizes(*defaults, budget)
        scaled = (train, dev) != defaults
        return train, dev, f"default {defaults[0]}/{defaults[1]}" + (", scaled down to fit" if scaled else "")
    train = options.train_size if options.train_size is not None else defaults[0]
    dev = options.dev_size if options.dev_size is not None else defaults[1]
    if train + dev > budget:
        raise PromptOptError(
            f"{task_name}: train_size {train} + dev_size {dev} is more than the {budget} docs {what}; choose smaller sizes"
        )
    return train, dev, "sizes from --optimize_args"


def _fit(name: str, explicit: int | None, default: int, available: int, split: str, task_name: str) -> int:
    """An explicit size must fit the docs available in its split; a default one is capped."""
    if explicit is None:
        return min(default, available)
    if explicit > available:
        raise PromptOptError(
            f"{task_name}: {name}={explicit}, but {split!r} has {available} usable docs; choose {name} <= {available}"
        )
    return explicit


def resolve_split(options: RunOptions, optimizer_name: str) -> RunOptions:
    """`split=paper` named as the optimizer's own paper (greater or gpo)."""
    if options.split != "paper":
        return options
    if optimizer_name not in PAPERS:
        raise PromptOptError(
            f"split=paper uses the plan of the optimizer's paper, and {optimizer_name!r} has none: "
            "use split=greater (GReaTer's rows) or split=gpo (GPO's sizes)"
        )
    return dataclasses.replace(options, split=optimizer_name)


def _bbh_paper_plan(
    paper: str, evaluated: str, n: int, excluded: set[int], rng: random.Random
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(train, dev, rule) of a BBH task of `n` rows under GReaTer's or GPO's plan."""
    pool = [i for i in range(n) if i not in excluded]
    if paper == "greater":
        # TextGrad's loader, as GReaTer ran it: rows [0:50] / [50:150] / [150:]; the three tasks
        # too small for 100 held-out rows split the rows after 50 evenly between dev and held-out
        dev = 100 if len(pool) - 50 >= 200 else (len(pool) - 50) // 2
        train_idx, dev_idx = tuple(pool[:50]), tuple(pool[50 : 50 + dev])
        rule = f"GReaTer's BBH rows of {evaluated!r} ({n} docs): train rows [0:50], dev the next {dev} rows, held-out the rest"
        if dev < 100:
            rule += " (too few rows for [50:150] / [150:]: the rows after 50 split evenly between dev and held-out)"
    else:
        # GPO: the task minus 10 (format and few-shot items), then 20 % / 20 % / 60 %
        size = (n - 10) // 5
        train_idx, dev_idx = _draw(pool, size, size, rng)
        rule = f"GPO's BBH sizes, seeded draw from {evaluated!r} ({n} docs): {size} train / {size} dev ((n - 10) x 20 %), held-out the rest"
    if excluded:
        rule += f"; {len(excluded)} few-shot exemplars kept out of train/dev"
    return train_idx, dev_idx, rule


def plan_splits(
    task_name: str,
    config: Any,
    options: RunOptions,
    split_size: Callable[[str], int | None],
    fewshot_exemplars: Callable[[str], set[int]],
) -> SplitPlan:
    """Choose the optimize-train / dev / held-out docs for one leaf task.

    `split_size(name)` counts a split's docs (None: no such split); `fewshot_exemplars(name)`
    gives the indices of that split's docs shown as few-shot exemplars to the held-out docs.
    """
    family = task_family(task_name, getattr(config, "dataset_path", None))
    evaluated = evaluated_split(config)
    defaults = _DEFAULT_SIZES[family]
    rng = random.Random(f"{options.seed}:{task_name}")
    sources = optimize_sources(family, config, evaluated, lambda s: bool(split_size(s)))
    paper, note = options.split if options.split in PAPERS else None, ""
    if paper and family == "bbh":
        n = split_size(evaluated) or 0
        train_idx, dev_idx, rule = _bbh_paper_plan(paper, evaluated, n, fewshot_exemplars(evaluated), rng)
        used = set(train_idx) | set(dev_idx)
        heldout = Subset(evaluated, tuple(i for i in range(n) if i not in used))
        plan = SplitPlan(family, rule, Subset(evaluated, train_idx), Subset(evaluated, dev_idx), heldout, False)
        check_disjoint(task_name, plan)
        return plan
    if paper == "gpo" and family == "mmlu" and sources is not None and split_size(config.fewshot_split or "dev"):
        # GPO's MMLU files: 20 train / 20 dev / ~60 test per subject; train from the few-shot
        # split (`dev`), dev from `validation`, unless validation is the evaluated split
        sources, defaults = (config.fewshot_split or "dev", sources[1]), (20, 20)
        note = "GPO's MMLU sizes (20 / 20 per subject, capped by the splits); "
    elif paper and family == "gsm8k":
        note = (
            f"{PAPERS[paper]}'s GSM8k sizes (100 / 100 from train; the paper's rows were drawn with an unknown seed); "
        )
    elif paper == "greater" and family == "folio":
        note = "GReaTer's FOLIO sizes (100 / 100 from train; held-out: validation, as its 203-doc test); "
    elif paper:
        note = f"the {PAPERS[paper]} paper has no split for {family} tasks: the seeded default; "

    if sources is None:  # internal split of the evaluated split (BBH, test-only tasks)
        n = split_size(evaluated) or 0
        explicit = options.train_size is not None or options.dev_size is not None
        budget = n - 1 if explicit else n - math.ceil(n / 3)
        train, dev, how = _sizes(options, defaults, budget, f"of {evaluated!r} that leave held-out docs", task_name)
        excluded = fewshot_exemplars(evaluated)
        train_idx, dev_idx = _draw([i for i in range(n) if i not in excluded], train, dev, rng)
        used = set(train_idx) | set(dev_idx)
        heldout = Subset(evaluated, tuple(i for i in range(n) if i not in used))
        rule = (
            f"seeded internal split of {evaluated!r} ({n} docs): {train} train / {dev} dev / "
            f"{len(heldout.indices)} held-out ({how}; defaults shrink so held-out keeps at least a third"
            + (f"; {len(excluded)} few-shot exemplars kept out of train/dev" if excluded else "")
            + ")"
        )
        plan = SplitPlan(family, note + rule, Subset(evaluated, train_idx), Subset(evaluated, dev_idx), heldout, False)
    else:
        train_src, dev_src = sources
        pools = {}
        for source in dict.fromkeys(sources):
            excluded = fewshot_exemplars(source)
            pools[source] = ([i for i in range(split_size(source) or 0) if i not in excluded], len(excluded))
        if train_src == dev_src:
            pool, _ = pools[train_src]
            train, dev, how = _sizes(options, defaults, len(pool), f"usable in {train_src!r}", task_name)
            train_idx, dev_idx = _draw(pool, train, dev, rng)
        else:
            (train_pool, _), (dev_pool, _) = pools[train_src], pools[dev_src]
            train = _fit("train_size", options.train_size, defaults[0], len(train_pool), train_src, task_name)
            dev = _fit("dev_size", options.dev_size, defaults[1], len(dev_pool), dev_src, task_name)
            how = (
                "sizes from --optimize_args"
                if options.train_size is not None or options.dev_size is not None
                else "default sizes, capped by the splits"
            )
            train_idx, _ = _draw(train_pool, train, 0, rng)
            dev_idx, _ = _draw(dev_pool, dev, 0, rng)
        heldout = Subset(evaluated, tuple(range(split_size(evaluated) or 0)))
        excluded = "; ".join(f"{n} few-shot exemplars of {s!r} excluded" for s, (_, n) in pools.items() if n)
        rule = (
            f"seeded {train} train from {train_src!r} / {dev} dev from {dev_src!r} ({how}"
            + (f"; {excluded}" if excluded else "")
            + f"); held-out: all of {evaluated!r}"
        )
        plan = SplitPlan(family, note + rule, Subset(train_src, train_idx), Subset(dev_src, dev_idx), heldout, True)
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
