"""The instruction cache's key: everything that can change the instruction a search chooses.

Every run option and every setting of the built-in optimizers is classified here, once: in the
key (and through which entry: `options`, `optimizer_config`, or a value derived from it, such as
the split plan), or not in the key (with why it cannot change the result). tests/test_cache_key.py
fails when a field is in neither table. A setting of a third-party optimizer that is in neither
goes into the key (`optimizer_config`): a needless new search, never a wrong reuse.

Budgets (`max_evals`, `time_limit`, `patience`) are in the key, so a search cut short by a
budget is never reused by a run with another budget. `time_limit` also depends on the machine's
speed and load: a search that a time limit stopped is not cached at all (see `cacheable`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..version import __version__


OPTIONS = "options"
CONFIG = "optimizer_config"

IN_KEY: dict[str, str] = {
    # run options (RunOptions)
    "RunOptions.seed": "seeds",
    "RunOptions.train_size": "split_plan_sha256",
    "RunOptions.dev_size": "split_plan_sha256",
    "RunOptions.split": "split_plan_sha256",
    "RunOptions.instruction": "initial_instruction",
    "RunOptions.metric": "metric",
    "RunOptions.max_evals": OPTIONS,
    "RunOptions.time_limit": OPTIONS,
    "RunOptions.patience": OPTIONS,
    "RunOptions.keep_initial": OPTIONS,
    # candidates: the instructions themselves, not the file they were read from
    "CandidatesConfig.file": "optimizer_inputs",
    "CandidatesConfig.candidates": "optimizer_inputs",
    # GReaTer
    **{f"GreaterConfig.{name}": CONFIG for name in ("steps", "topk", "topq", "max_reasoning_tokens", "extractor", "proposal", "batch_size", "harness_train", "compile")},
    # GPO
    **{
        f"GPOConfig.{name}": CONFIG
        for name in (
            "optimizer_model", "optimizer_base_url", "temperature", "samples", "max_tokens", "steps",
            "max_optimizer_tokens", "epochs", "batch", "k", "retrieval", "order", "update", "schedule",
            "budget_start", "budget_end", "warmup", "exemplars", "embedding_model", "timeout", "max_retries",
        )
    },
}  # fmt: skip
"""Field -> the key entry that holds it (directly, or a value derived from it)."""

NOT_IN_KEY: dict[str, str] = {
    "RunOptions.compare_baseline": "evaluates held-out docs after the search",
    "RunOptions.refresh": "decides whether the cache is read, not what a search finds",
    "RunOptions.exclude_source_docs": "applies to --optimized_prompts, which runs no search",
    "GPOConfig.api_key_env": "where the endpoint's key is read from: authentication, not the answers",
    "GPOConfig.concurrency": "how many requests run at once; answers are kept in request order",
}
"""Field -> why it cannot change the chosen instruction."""


def _place(obj: Any, name: str) -> str | None:
    """Where field `name` of `obj` goes in the key (None: not in it); unclassified: `optimizer_config`."""
    qualified = f"{type(obj).__name__}.{name}"
    return None if qualified in NOT_IN_KEY else IN_KEY.get(qualified, CONFIG)


def _fields(obj: Any, place: str) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if _place(obj, f.name) == place}


def search_key(
    *,
    optimizer: str,
    config: Any,
    options: Any,
    model: dict[str, Any],
    task: str,
    task_config_sha256: str,
    initial_instruction: str,
    metric: str,
    split_plan_sha256: str,
    seeds: dict[str, int | None],
    placement: str,
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """The key of one task's search: two searches with equal keys choose the same instruction."""
    return {
        "plugin_version": __version__,
        "model": model,
        "task": task,
        "task_config_sha256": task_config_sha256,
        "optimizer": optimizer,
        CONFIG: _fields(config, CONFIG),
        "optimizer_inputs": config.instructions() if hasattr(config, "instructions") else None,
        OPTIONS: _fields(options, OPTIONS),
        "initial_instruction": initial_instruction,
        "metric": metric,
        "split_plan_sha256": split_plan_sha256,
        "seeds": seeds,
        "placement": placement,
        "evaluation": evaluation,
    }


def cacheable(stop_reason: str) -> bool:
    """Whether a finished search goes into the cache: not one that a time limit stopped (how far
    it got depends on the machine's speed and load, so the same key would not give it again)."""
    return stop_reason != "time_limit"
