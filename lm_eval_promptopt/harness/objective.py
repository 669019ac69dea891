"""Score an instruction on a split of a task with lm-eval's own pipeline, memoized."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ..errors import PromptOptError
from .lm_eval_compat import recorded_fewshot_draws
from .prompting import Placement, Rendered, bind_instruction, render
from .setup import quiet_harness
from .splits import SplitPlan, evaluated_split


def doc_key(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


class TaskSplits:
    """A leaf task and, per split name, a copy of it that evaluates that split."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self._copies: dict[str, Any] = {evaluated_split(task.config): task}

    def task_for(self, split: str) -> Any:
        if split not in self._copies:
            from lm_eval.api.task import ConfigurableTask

            config = self.task.config.to_dict(keep_callable=True)
            config["test_split"] = split
            copy = ConfigurableTask(config=config)
            if split not in copy.dataset:
                raise PromptOptError(f"{self.task.config.task}: the dataset has no split {split!r}")
            self._copies[split] = copy
        return self._copies[split]

    def docs(self, split: str) -> list[dict]:
        return list(self.task_for(split).eval_docs)

    def size(self, split: str) -> int | None:
        """Docs in `split`, or None if the dataset has no such split."""
        if split not in self._copies and split not in self.task.dataset:
            return None
        return len(self.task_for(split).eval_docs)

    def fewshot_exemplars(self, split: str, fewshot_seed: int | None) -> set[int]:
        """Indices of `split`'s docs used as few-shot exemplars when evaluating all held-out docs."""
        task = self.task
        shots = task.config.num_fewshot or 0
        if shots == 0:
            return set()
        task.set_fewshot_seed(fewshot_seed)
        try:
            with recorded_fewshot_draws(task) as drawn:
                if drawn is None:  # no sampler: no exemplars
                    return set()
                for doc in task.eval_docs:
                    task.fewshot_context(doc, shots, gen_prefix=task.doc_to_prefix(doc))
        finally:
            task.set_fewshot_seed(fewshot_seed)
        keys = {doc_key(d) for d in drawn}
        return {i for i, doc in enumerate(self.task_for(split).eval_docs) if doc_key(doc) in keys}


def group_metric(group: Any) -> str | None:
    """`metric,filter` that a group aggregates first, or None for a group without aggregation."""
    if not group.aggregate_metric_list:
        return None
    agg = group.aggregate_metric_list[0]
    filters = agg.filter_list if isinstance(agg.filter_list, list) else [agg.filter_list]
    return f"{agg.metric},{filters[0]}"


def primary_metric(task_name: str, task: Any, groups: dict[str, Any]) -> str:
    """`metric,filter` that the task's group aggregates, else the task's first metric and filter."""
    for group in groups.values():
        if task_name in getattr(group, "child_names", ()) and group_metric(group):
            return group_metric(group)
    metric = task.config.metric_list[0]["metric"]
    filters = task.config.filter_list or []
    return f"{metric},{filters[0]['name'] if filters else 'none'}"


class Objective:
    """`score(instruction, split)` for one leaf task; every new evaluation is passed to `record`."""

    def __init__(
        self,
        *,
        task_name: str,
        splits: TaskSplits,
        plan: SplitPlan,
        lm: Any,
        placement: Placement,
        metric: str,
        fewshot_seed: int | None,
        eval_kwargs: dict[str, Any],
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        self.task_name = task_name
        self.splits = splits
        self.plan = plan
        self.lm = lm
        self.placement = placement
        self.metric = metric
        self.fewshot_seed = fewshot_seed
        self.eval_kwargs = eval_kwargs
        self.record = record
        self.memo: dict[tuple[str, str], float] = {}
        self.evaluations = 0

    def _subset(self, split: str):
        if split not in ("train", "dev"):
            raise ValueError(f"optimizers score on 'train' or 'dev', not {split!r}")
        return self.plan.subset(split)

    def docs(self, split: str) -> list[dict]:
        subset = self._subset(split)
        docs = self.splits.docs(subset.split)
        return [docs[i] for i in subset.indices]

    def target(self, doc: dict) -> str:
        return str(self.splits.task.doc_to_target(doc))

    def render(self, doc: dict, instruction: str) -> Rendered:
        task = self.splits.task
        task.set_fewshot_seed(self.fewshot_seed)
        fewshot_as_multiturn = self.eval_kwargs.get("fewshot_as_multiturn", False)
        return render(task, doc, instruction, self.placement, self.lm, fewshot_as_multiturn)

    def preload(self, entries: list[dict[str, Any]]) -> None:
        """Reuse the scores an interrupted run of this search recorded (they count as evaluations)."""
        for e in entries:
            key = (e.get("instruction"), e.get("split"))
            if key[1] in ("train", "dev") and "score" in e and key not in self.memo:
                self.memo[key] = float(e["score"])
                self.evaluations += 1

    def score(self, instruction: str, split: str = "dev") -> float:
        key = (instruction, split)
        if key not in self.memo:
            subset = self._subset(split)
            if not subset.indices:
                raise PromptOptError(f"{self.task_name}: the {split} split is empty; raise {split}_size")
            start = time.perf_counter()
            self.memo[key] = self._evaluate(subset.split, subset.indices, instruction)
            self.evaluations += 1
            self.record(
                {
                    "instruction": instruction,
                    "split": split,
                    "score": self.memo[key],
                    "docs": len(subset.indices),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
        return self.memo[key]

    def _evaluate(self, split: str, indices: tuple[int, ...], instruction: str) -> float:
        from lm_eval.evaluator import evaluate

        task = self.splits.task_for(split)
        bind_instruction(task, instruction, self.placement)
        task.set_fewshot_seed(self.fewshot_seed)
        with quiet_harness():
            results = evaluate(
                lm=self.lm,
                task_dict={"tasks": {self.task_name: task}},
                samples={self.task_name: list(indices)},
                bootstrap_iters=0,
                log_samples=False,
                **self.eval_kwargs,
            )
        scores = results["results"][self.task_name]
        if self.metric not in scores:
            known = sorted(k for k in scores if "," in k and "_stderr" not in k)
            raise PromptOptError(
                f"{self.task_name}: metric {self.metric!r} not produced; available: {', '.join(known)}"
            )
        return float(scores[self.metric])
