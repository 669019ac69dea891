"""The `lm_eval run` flag extension: our argument group (`--optimize`, ...) and the dispatch to
the Python API when one is given. The startup hook (`hook.py`) installs it into stock `lm_eval`;
`lm-eval-promptopt run` (`cli.py`) is the same command through the same hook. lm-eval's `Run`
still parses and handles its own flags (tracker, output, samples); only its call of
`simple_evaluate` is routed to `api.run_prepared`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from .errors import PromptOptError, StageError


PLUGIN_KEYS = ("optimize", "optimize_args", "optimize_cache", "optimized_prompts")


def add_argument_group(parser: argparse.ArgumentParser) -> None:
    """Add our flags to lm-eval's `run` parser."""
    from .optimizers import available_optimizers

    group = parser.add_argument_group(
        "prompt optimization",
        description=textwrap.dedent(
            """\
            Added by lm_eval_promptopt. With --optimize, each leaf task's docs are split into
            optimize-train / optimize-dev / held-out; the optimizer searches an instruction on
            train/dev, and lm-eval then evaluates only the held-out docs, each task with its own
            instruction in the system-instruction slot. Without --optimize nothing changes."""
        ),
    )
    group.add_argument(
        "--optimize",
        default=None,
        metavar="<optimizer>",
        help=f"Prompt optimizer to run before evaluation: {', '.join(available_optimizers())}.",
    )
    group.add_argument(
        "--optimize_args",
        default=None,
        metavar="<k=v,...>",
        help=textwrap.dedent(
            """\
            Settings as k=v,... or a JSON object; quote values with commas. For every optimizer:
            seed (split and search seed, default 0), train_size / dev_size (per task; default by
            task family, see docs/splits.md), instruction (initial instruction), compare_baseline=true
            (also evaluate held-out with the initial instruction and print the difference),
            metric (objective as metric,filter, quoted for its comma, e.g.
            'metric="exact_match,flexible-extract"'; default: what the task's group aggregates),
            refresh=true (search again despite a cached search). Optimizer settings: see
            docs/optimizers/ (candidates: file=PATH or candidates='A|B|C'; greater: steps, topk,
            topq, ...); every setting: docs/flags.md."""
        ),
    )
    group.add_argument(
        "--optimize_cache",
        default=None,
        metavar="<dir>",
        help="Instruction cache: a search with the same model, task config, optimizer config, budgets, "
        "split plan and seeds is reused instead of run again (default: instructions/ under "
        "$LM_EVAL_PROMPTOPT_CACHE, else under ~/.cache/lm_eval_promptopt).",
    )
    group.add_argument(
        "--optimized_prompts",
        default=None,
        metavar="<file>",
        help="Evaluate these instructions on the held-out docs, with no search: JSON {task: instruction}, "
        'JSONL lines {"task", "instruction"}, or an earlier run\'s results / optimized_prompts.json.',
    )


def _lm_eval_setting(args: argparse.Namespace, key: str, default: Any = None) -> Any:
    """A setting as lm-eval resolves it: the flag, else the `--config` YAML's, else `default`."""
    value = getattr(args, key, None)
    if value or value == 0:
        return value
    if getattr(args, "config", None):
        from lm_eval.config.evaluate_config import EvaluatorConfig

        with contextlib.suppress(Exception):  # (a bad config file: lm-eval reports it)
            return EvaluatorConfig.load_yaml_config(args.config).get(key, default)
    return default


def _error(message: str, code: int = 2) -> None:
    print(f"lm_eval: error: {message}", file=sys.stderr)
    sys.exit(code)


def execute(args: argparse.Namespace, stock_execute: Callable[[argparse.Namespace], None]) -> None:
    """`lm_eval run`: stock behaviour without --optimize, optimize-then-evaluate with it."""
    plugin = {key: vars(args).pop(key, None) for key in PLUGIN_KEYS}
    if plugin["optimize"] is None and plugin["optimized_prompts"] is None:
        for key in ("optimize_args", "optimize_cache"):
            if plugin[key]:
                _error(f"--{key} needs --optimize NAME")
        stock_execute(args)
        return
    from .api import include_paths, prepare, run_prepared
    from .harness.lm_eval_compat import is_tasks_not_found, simple_evaluate_replaced
    from .harness.quiet import quiet_run
    from .harness.settings import EvalSettings
    from .run.processes import ProcessGroup

    run = None
    try:
        run = prepare(
            plugin["optimize"], plugin["optimize_args"], plugin["optimized_prompts"], plugin["optimize_cache"],
            model=_lm_eval_setting(args, "model", "hf"), model_args=_lm_eval_setting(args, "model_args"),
            output_path=_lm_eval_setting(args, "output_path"), system_instruction=getattr(args, "system_instruction", None),
            limit=getattr(args, "limit", None), samples=getattr(args, "samples", None), cache_requests=bool(getattr(args, "cache_requests", None)),
        )  # fmt: skip
        args.include_path = include_paths(getattr(args, "include_path", None))
        with simple_evaluate_replaced(lambda **kw: run_prepared(run, EvalSettings.from_lm_eval(kw))), quiet_run():
            try:
                stock_execute(args)
            except ValueError as err:
                if is_tasks_not_found(err):
                    raise StageError(
                        "task load", f"{err} (list tasks with `lm_eval ls tasks`; add task folders with --include_path)"
                    ) from None
                raise
    except PromptOptError as err:
        _error(str(err), err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (run.json already says `interrupted`)
        if run is None or run.is_main:
            from .run.folder import command_line

            print(
                f"\nlm_eval: interrupted; {run.interrupted() if run else 'nothing was saved yet'}. Resume with the same command: {command_line()}",
                file=sys.stderr,
            )
        sys.exit(130)
    if run.is_main:
        print(run.summary())
    ProcessGroup.close()
