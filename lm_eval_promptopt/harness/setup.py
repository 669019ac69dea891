"""Model and task set-up as `lm_eval.simple_evaluate` does it, in one place.

During an `--optimize` run lm-eval's own `simple_evaluate` runs only for the final, held-out
evaluation; the search needs the model and the tasks before that. This module repeats the few
steps of `simple_evaluate` the search depends on (seeding, the model, per-task overrides), so
that the search and the evaluation see the same model and the same task settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

from .settings import EvalSettings


def seed_everything(settings: EvalSettings) -> None:
    """Seed Python, NumPy and torch from `simple_evaluate`'s seed arguments (None: left alone)."""
    seeds = (settings.random_seed, settings.numpy_random_seed, settings.torch_random_seed)
    if seeds[0] is not None:
        random.seed(seeds[0])
    if seeds[1] is not None:
        import numpy as np

        np.random.seed(seeds[1])
    if seeds[2] is not None:
        import torch

        torch.manual_seed(seeds[2])


def build_lm(settings: EvalSettings) -> Any:
    """Build the model the way `simple_evaluate` does, once, for the search and the evaluation."""
    import lm_eval.api.model
    import lm_eval.api.registry

    model = settings.model
    if not isinstance(model, str):
        return model
    extra = {"batch_size": settings.batch_size, "max_batch_size": settings.max_batch_size, "device": settings.device}
    factory = lm_eval.api.registry.get_model(model)
    args = settings.model_args or ""
    lm = (
        factory.create_from_arg_obj(args, extra)
        if isinstance(args, dict)
        else factory.create_from_arg_string(args, extra)
    )
    if settings.use_cache:
        lm = lm_eval.api.model.CachingLM(lm, f"{settings.use_cache}_rank{lm.rank}.db")
    return lm


PATH_ARGS = ("pretrained", "tokenizer", "peft")
"""`--model_args` keys that name a model's files: a local folder, or a Hugging Face repo id."""


def looks_local(value: str) -> bool:
    """Whether `value` is a path rather than a repo id (`org/name`): absolute, `./`, `../`, `~`, or
    more than one `/`."""
    return value in (".", "..") or value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def check_model_paths(model_args: str | dict[str, Any] | None) -> None:
    """Refuse a local-looking model path that does not exist, naming it, before anything loads
    (Hugging Face would otherwise try it as a repo id after the slow set-up)."""
    from pathlib import Path

    from lm_eval.utils import simple_parse_args_string

    from ..errors import PromptOptError

    args = model_args if isinstance(model_args, dict) else simple_parse_args_string(model_args or "")
    for key in PATH_ARGS:
        value = args.get(key)
        if isinstance(value, str) and looks_local(value) and not Path(value).expanduser().exists():
            raise PromptOptError(
                f"--model_args {key}={value}: no such file or folder (a local path; a Hugging Face repo id reads org/name)"
            )


def unwrap(lm: Any) -> Any:
    """The model behind `--use_cache`'s `CachingLM` (the model itself otherwise)."""
    return getattr(lm, "lm", lm)


def apply_task_overrides(tasks: dict[str, Any], gen_kwargs: str | dict[str, Any] | None = None, num_fewshot: int | None = None,
                         fewshot_seed: int | None = None) -> None:  # fmt: skip
    """Per-task settings exactly as `simple_evaluate` applies them (bare `evaluate()` does not)."""
    if isinstance(gen_kwargs, str):
        from lm_eval.utils import simple_parse_args_string

        gen_kwargs = simple_parse_args_string(gen_kwargs) or None
    for task in tasks.values():
        if gen_kwargs and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=gen_kwargs, update=True)
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)


def root_items(loaded: dict[str, Any]) -> list[Any]:
    """The top-level groups and tasks of a `TaskManager.load()` result, to load them again."""
    children = {c for group in loaded["groups"].values() for c in group.child_names}
    roots = [g for name, g in loaded["groups"].items() if name not in children]
    return roots + [t for name, t in loaded["tasks"].items() if name not in children]


def limited(indices: list[int], limit: int | float | None) -> list[int]:
    """The docs `--limit` keeps: the first `limit`, or below 1 that fraction rounded up (as lm-eval counts it)."""
    if limit is None:
        return indices
    count = math.ceil(limit * len(indices)) if limit < 1 else int(limit)
    return indices[: max(count, 1)]


def limited_plan(plan: dict[str, Any], evaluated: list[int], limit: int | float) -> dict[str, Any]:
    """A recorded plan after `--limit`: its held-out lists only the docs evaluated, and says why."""
    heldout = plan["heldout"]
    rule = f"{plan['rule']}; --limit {limit:g}: the first {len(evaluated)} of its {heldout['size']} held-out docs evaluated"
    return {
        **plan,
        "rule": rule,
        "heldout": {
            **heldout,
            "size": len(evaluated),
            "indices": evaluated,
            "limit": limit,
            "planned_size": heldout["size"],
        },
    }


@contextlib.contextmanager
def quiet(logger_name: str, level: int) -> Iterator[None]:
    """Raise a logger's level for the block, then restore it."""
    logger = logging.getLogger(logger_name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def quiet_harness() -> contextlib.AbstractContextManager[None]:
    """Keep lm-eval's per-call INFO logging out of the search loop."""
    return quiet("lm_eval", logging.WARNING)
