"""Optimizers by name (`--optimize NAME`), in lm-eval's own `Registry`.

The built-in ones are lazy placeholders (greater pulls in torch). Another package adds one with an
entry point in the group `lm_eval_promptopt.optimizers` naming its class, e.g. in setup.cfg:

    [options.entry_points]
    lm_eval_promptopt.optimizers =
        mine = my_package.search:MyOptimizer
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable

from lm_eval.api.registry import Registry

from ..errors import PromptOptError
from .base import Optimizer


ENTRY_POINT_GROUP = "lm_eval_promptopt.optimizers"

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer", base_cls=Optimizer)
for _name, _target in {
    "none": "simple:NoSearch",
    "candidates": "simple:BestCandidate",
    "greater": "greater:Greater",
    "gpo": "gpo:GPO",
}.items():
    OPTIMIZERS.register(_name, target=f"{__package__}.{_target}")


def register_optimizer(name: str) -> Callable[[type[Optimizer]], type[Optimizer]]:
    """Class decorator: register an optimizer under `name` (its `--optimize NAME`)."""

    def decorate(cls: type[Optimizer]) -> type[Optimizer]:
        cls.name = name
        return OPTIMIZERS.register(name)(cls)

    return decorate


@functools.cache
def _add_entry_points() -> None:
    """Register the optimizers other packages declare, once, as lazy placeholders."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not entry.attr:
            raise PromptOptError(
                f"entry point {entry.name} = {entry.value} in {ENTRY_POINT_GROUP}: name the optimizer class as module:Class"
            )
        try:
            OPTIMIZERS.register(entry.name, target=f"{entry.module}:{entry.attr}")
        except ValueError:
            raise PromptOptError(
                f"entry point {entry.name} = {entry.value} in {ENTRY_POINT_GROUP}: the name {entry.name!r} is taken; give the entry point another name"
            ) from None


def available_optimizers() -> list[str]:
    _add_entry_points()
    return sorted(OPTIMIZERS.keys())


def get_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class registered as `name` (imported on first use)."""
    _add_entry_points()
    if name not in OPTIMIZERS:
        raise PromptOptError(f"--optimize: unknown optimizer {name!r}; available: {', '.join(available_optimizers())}")
    try:
        cls = OPTIMIZERS.get(name)
    except (ImportError, AttributeError, TypeError) as err:  # another package's entry point that does not load
        raise PromptOptError(f"--optimize {name}: cannot load the optimizer ({type(err).__name__}: {err})") from None
    if getattr(cls, "name", None) is None:  # an entry point's class, registered without the decorator
        cls.name = name
    return cls
