"""Every private lm-eval name or behaviour this package depends on, and nothing else.

lm-eval has no public hook for a plugin's CLI flags, per-task system instructions, the few-shot
draw, or a data-parallel model run as one process; this module is the one place that reaches
behind its public API for them. Each touchpoint says why it is needed and since which lm-eval
version it holds (all: `hook.SUPPORTED`'s lower bound, 0.4.10, unless said). `TOUCHPOINTS` lists
them for the contract test (tests/test_lm_eval_compat.py), which names the one an installed
lm-eval lacks. Importing this module imports nothing of lm-eval (the startup hook uses it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any


CLI_MODULE = "lm_eval._cli.run"
"""lm-eval's `run` subcommand (since 0.4.10's subcommand CLI). It has no plugin hook, so its
class `Run` gets our argument group through `_add_args` and our dispatch through `_execute`."""

TASK_INDEX_MODULE = "lm_eval.tasks._index"
"""lm-eval's task index (since 0.4.12; test-only): the test suite's start-up cache
(tests/support/site) serves its `load_yaml` so each test process does not parse ~14,000 YAMLs.
On an older lm-eval the module is never imported and the cache does nothing (slower tests)."""

TASKS_NOT_FOUND = "Tasks not found"
"""How lm-eval's `EvaluatorConfig` starts the ValueError for unknown task names (no own type)."""


def extend_run_command(
    module: ModuleType, add_args: Callable[[Any, Any], None], execute: Callable[[Any, Callable[[Any], None]], None]
) -> str | None:
    """Give `Run` in `module` (lm_eval._cli.run) our flags and dispatch, once: `add_args(run, parser)`
    after lm-eval's own, and `execute(args, stock_execute)` instead of its `_execute`. Returns why
    it cannot (None: done)."""
    run_cls = getattr(module, "Run", None)
    if not (callable(getattr(run_cls, "_add_args", None)) and callable(getattr(run_cls, "_execute", None))):
        return f"lm-eval's CLI internals ({CLI_MODULE}.Run) changed"
    if getattr(run_cls, "_lm_eval_promptopt", False):
        return None
    stock_add_args, stock_execute = run_cls._add_args, run_cls._execute

    def _add_args(self: Any) -> None:
        stock_add_args(self)
        add_args(self, self._parser)  # (`_parser`: the subcommand's argparse parser)

    def _execute(args: Any) -> None:
        execute(args, stock_execute)

    run_cls._add_args = _add_args
    run_cls._execute = staticmethod(_execute)
    run_cls._lm_eval_promptopt = True
    return None


def run_command(argv: list[str]) -> None:
    """`lm_eval run ARGV`, as lm-eval's console script runs it, without rewriting `sys.argv`:
    `HarnessCLI.parse_args()` reads only `sys.argv`, so its parser (`_parser`) parses `argv`."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    cli = HarnessCLI()
    if not argv:  # `lm_eval run` alone prints the subcommand's help, as lm-eval does
        cli._subparsers.choices["run"].print_help()
        raise SystemExit(0)
    cli.execute(cli._parser.parse_args(["run", *argv]))


@contextlib.contextmanager
def simple_evaluate_replaced(replacement: Callable[..., Any]) -> Iterator[None]:
    """Let lm-eval's `Run._execute` call `replacement` where it calls `simple_evaluate`: it imports
    it from the package at call time (`from lm_eval import simple_evaluate`, a lazy module
    attribute), so the CLI keeps parsing its flags, and saving results, as it does."""
    import lm_eval

    lm_eval.simple_evaluate = replacement
    try:
        yield
    finally:
        del lm_eval.simple_evaluate  # lm_eval resolves it lazily again


def is_tasks_not_found(err: Exception) -> bool:
    """Whether `err` is lm-eval's refusal of unknown task names."""
    return isinstance(err, ValueError) and str(err).startswith(TASKS_NOT_FOUND)


def bind_build_requests(task: Any, adjust: Callable[[dict[str, Any]], None]) -> None:
    """Make this task object's `build_all_requests` (lm-eval calls it with keyword arguments,
    `system_instruction` and `chat_template` among them) run `adjust(kwargs)` first: the only way
    to give one task its own system instruction within one `evaluate()`."""
    stock = type(task).build_all_requests.__get__(task)

    def build_all_requests(**kwargs: Any) -> Any:
        adjust(kwargs)
        return stock(**kwargs)

    task.build_all_requests = build_all_requests


@contextlib.contextmanager
def recorded_fewshot_draws(task: Any) -> Iterator[list[dict] | None]:
    """The few-shot exemplars `task` draws while the block renders prompts (appended to the yielded
    list): its `sampler.sample` is the one place lm-eval picks them. None: the task has no sampler."""
    sampler = getattr(task, "sampler", None)
    if sampler is None:
        yield None
        return
    drawn: list[dict] = []
    sample = sampler.sample

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = sample(*args, **kwargs)
        drawn.extend(out)
        return out

    sampler.sample = recording
    try:
        yield drawn
    finally:
        del sampler.sample


def model_name(model_args: str | dict[str, Any] | None) -> str:
    """The model name lm-eval's tracker takes from `model_args` (`pretrained=...`, ...; "" if none)
    and names its results folder after: `GeneralConfigTracker._get_model_name`."""
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    return GeneralConfigTracker._get_model_name(model_args)


@contextlib.contextmanager
def single_process(lm: Any) -> Iterator[None]:
    """Make a data-parallel lm-eval model (HFLM under `accelerate launch`) act as one process for
    the block: it splits requests by `_rank` / `_world_size`, which have no public setter."""
    saved = (getattr(lm, "_rank", None), getattr(lm, "_world_size", None))
    swap = saved[1] not in (None, 1)
    if swap:
        lm._rank, lm._world_size = 0, 1
    try:
        yield
    finally:
        if swap:
            lm._rank, lm._world_size = saved


@contextlib.contextmanager
def git_commit_hash_replaced(replacement: Callable[[], str | None]) -> Iterator[None]:
    """`simple_evaluate` records the working directory's git commit through the module attribute
    `lm_eval.evaluator.get_git_commit_hash` (whose `git describe` prints to the terminal outside
    a checkout); the block uses `replacement` instead."""
    import lm_eval.evaluator

    stock = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = replacement
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = stock


@dataclass(frozen=True)
class Touchpoint:
    """One private name or behaviour: where it is, how to see that the installed lm-eval has it,
    and the first lm-eval version that has it."""

    name: str
    present: Callable[[], bool]
    since: str = "0.4.10"


def _has(module: str, *path: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            return False
        for part in path:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True

    return check


def _tasks_not_found_text() -> bool:
    import inspect

    from lm_eval.config.evaluate_config import EvaluatorConfig

    return f'"{TASKS_NOT_FOUND}: ' in inspect.getsource(EvaluatorConfig.process_tasks)


def _run_parser() -> bool:
    import argparse

    run_cls = importlib.import_module(CLI_MODULE).Run
    return isinstance(
        getattr(run_cls(argparse.ArgumentParser().add_subparsers()), "_parser", None), argparse.ArgumentParser
    )


def _harness_cli_parsers() -> bool:
    import argparse

    from lm_eval._cli.harness import HarnessCLI

    cli = HarnessCLI()
    return isinstance(getattr(cli, "_parser", None), argparse.ArgumentParser) and "run" in cli._subparsers.choices


def _hflm_rank_fields() -> bool:
    from lm_eval.models.huggingface import HFLM

    names = HFLM.__init__.__code__.co_names  # the attributes __init__ assigns
    return "_rank" in names and "_world_size" in names


def _build_requests_keywords() -> bool:
    import inspect

    from lm_eval.api.task import Task

    params = inspect.signature(Task.build_all_requests).parameters
    return all(name in params for name in ("system_instruction", "chat_template"))


TOUCHPOINTS = (
    Touchpoint(f"{CLI_MODULE}.Run._add_args", _has(CLI_MODULE, "Run", "_add_args")),
    Touchpoint(f"{CLI_MODULE}.Run._execute", _has(CLI_MODULE, "Run", "_execute")),
    Touchpoint(f"{CLI_MODULE}.Run(...)._parser", _run_parser),
    Touchpoint("lm_eval._cli.harness.HarnessCLI()._parser / ._subparsers", _harness_cli_parsers),
    Touchpoint("lm_eval.simple_evaluate (lazy module attribute)", _has("lm_eval", "simple_evaluate")),
    Touchpoint(f"ValueError('{TASKS_NOT_FOUND}: ...') for unknown tasks", _tasks_not_found_text),
    Touchpoint("Task.build_all_requests(system_instruction=, chat_template=)", _build_requests_keywords),
    Touchpoint("ContextSampler.sample", _has("lm_eval.api.samplers", "ContextSampler", "sample")),
    Touchpoint(
        "GeneralConfigTracker._get_model_name",
        _has("lm_eval.loggers.evaluation_tracker", "GeneralConfigTracker", "_get_model_name"),
    ),
    Touchpoint("HFLM._rank / HFLM._world_size", _hflm_rank_fields),
    Touchpoint("lm_eval.evaluator.get_git_commit_hash", _has("lm_eval.evaluator", "get_git_commit_hash")),
    Touchpoint(
        f"{TASK_INDEX_MODULE}.load_yaml / TaskIndex.build",
        lambda: _has(TASK_INDEX_MODULE, "load_yaml")() and _has(TASK_INDEX_MODULE, "TaskIndex", "build")(),
        since="0.4.12",
    ),
)


def missing_touchpoints() -> list[str]:
    """The touchpoints the installed lm-eval should have (by version) but lacks (empty: this
    package works with it)."""
    import importlib.metadata

    from packaging.version import Version

    installed = Version(importlib.metadata.version("lm-eval"))
    missing = []
    for point in (p for p in TOUCHPOINTS if installed >= Version(p.since)):
        try:
            ok = point.present()
        except Exception:  # noqa: BLE001 (a probe that cannot run: the touchpoint moved)
            ok = False
        if not ok:
            missing.append(point.name)
    return missing
