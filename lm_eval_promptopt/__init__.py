"""Optimize-then-evaluate prompt optimization inside lm-evaluation-harness.

`lm_eval_promptopt.simple_evaluate(...)` is the Python API (see `api.py`). Importing this package
is cheap on purpose: the startup hook imports it in every interpreter, so the API loads on first use.
"""

from typing import Any

from .version import __version__


__all__ = ["simple_evaluate", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "simple_evaluate":
        from .api import simple_evaluate

        return simple_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
