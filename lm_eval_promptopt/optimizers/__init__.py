"""Prompt optimizers, registered by name (`--optimize NAME`)."""

from .base import OptimizationResult, Optimizer, Problem
from .registry import available_optimizers, get_optimizer, register_optimizer


__all__ = [
    "OptimizationResult",
    "Optimizer",
    "Problem",
    "available_optimizers",
    "get_optimizer",
    "register_optimizer",
]
