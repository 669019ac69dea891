"""How the stock `lm_eval` command learns `--optimize`, and nothing else.

`lm_eval_promptopt_hook.pth` (installed with the package) calls `install()` at interpreter
start. That only puts an import hook on `sys.meta_path`; nothing of lm-eval is imported then.
When lm-eval's CLI module (`lm_eval_compat.CLI_MODULE`) is imported, its `run` subcommand gets our
argument group and a dispatch that runs the optimize-then-evaluate stage when `--optimize` is
given and lm-eval's own code path when it is not (`lm_eval_flags.py`). On an lm-eval outside the supported range nothing is
patched, plain `lm_eval` works, and `--optimize` fails with a message naming the versions.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .harness.lm_eval_compat import CLI_MODULE


SUPPORTED = ">=0.4.10,<0.5"
_state: dict[str, Any] = {"patched": False, "problem": "lm-eval's CLI was not loaded"}


def incompatibility() -> str | None:
    """Why the installed lm-eval cannot be extended, or None if it can."""
    from packaging.specifiers import SpecifierSet

    try:
        version = importlib.metadata.version("lm-eval")
    except importlib.metadata.PackageNotFoundError:
        return "lm-eval is not installed"
    if version not in SpecifierSet(SUPPORTED, prereleases=True):
        return f"lm-eval {version} is installed"
    return None


def patch_run(module: ModuleType) -> None:
    """Extend lm-eval's `run` subcommand (in `module`) with our flags and dispatch (idempotent)."""
    problem = incompatibility()
    if problem is None:
        from . import lm_eval_flags
        from .harness.lm_eval_compat import extend_run_command

        problem = extend_run_command(
            module, lambda _run, parser: lm_eval_flags.add_argument_group(parser), lm_eval_flags.execute
        )
    if problem is not None:
        _state["problem"] = problem
        return
    _state.update(patched=True, problem=None)


def _wants_optimize(argv: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in ("--optimize", "--optimize_args") for arg in argv)


def guard_main(_module: ModuleType | None = None) -> None:
    """On `lm_eval` start-up: refuse `--optimize` cleanly when we could not patch."""
    if not _state["patched"] and _wants_optimize(sys.argv[1:]):
        sys.stderr.write(
            f"lm_eval: error: --optimize is unavailable: {_state['problem']}, but lm_eval_promptopt "
            f"supports lm-eval{SUPPORTED}. Install a supported version (pip install 'lm-eval{SUPPORTED}'); "
            "lm_eval without --optimize works as usual.\n"
        )
        sys.exit(2)


_AFTER_IMPORT: dict[str, Callable[[ModuleType], None]] = {CLI_MODULE: patch_run, "lm_eval.__main__": guard_main}


class _PostExecLoader(importlib.abc.Loader):
    """Wraps a module's loader to run a callback once the module has executed."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.callback(module)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        callback = _AFTER_IMPORT.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PostExecLoader(spec.loader, callback)
                return spec
        return None


def install() -> None:
    """Put the import hook in place (called from the `.pth` file; cheap and idempotent)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name, callback in _AFTER_IMPORT.items():
        if name in sys.modules:
            callback(sys.modules[name])


def require_compatible() -> None:
    """Patch now (for `lm-eval-promptopt run`, which works without the `.pth` file too)."""
    import importlib

    patch_run(importlib.import_module(CLI_MODULE))
    guard_main()
