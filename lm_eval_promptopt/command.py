"""`lm_eval run` with `--optimize`: our argument group and the dispatch to the optimize-then-evaluate
stage. Both entry points use it: the startup hook (`hook.py`) for stock `lm_eval`, and
`lm-eval-promptopt run` (`cli.py`) through the hook."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import PromptOptError, StageError

PLUGIN_KEYS = ("optimize", "optimize_args", "optimize_cache", "optimized_prompts")


def task_configs_dir() -> Path:
    """Our task YAMLs (FOLIO, ...): inside the installed package, or beside it in a checkout."""
    installed = Path(__file__).resolve().parent / "task_configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "task_configs"


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
            task family, see README), instruction (initial instruction), compare_baseline=true
            (also evaluate held-out with the initial instruction and print the difference),
            metric (objective as metric,filter, quoted for its comma, e.g.
            'metric="exact_match,flexible-extract"'; default: what the task's group aggregates),
            refresh=true (search again despite a cached search). Optimizer settings: see README
            (candidates: file=PATH or candidates='A|B|C'; greater: steps, topk, topq, ...)."""
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
        "JSONL lines {\"task\", \"instruction\"}, or an earlier run's results / optimized_prompts.json.",
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


def check_output_folder(output_path: str | None) -> None:
    """The run folders go under `--output_path`: refuse one that cannot be written, before any work."""
    from .run.folder import DEFAULT_OUTPUT
    from .run.files import unwritable

    folder = Path(output_path) if output_path else DEFAULT_OUTPUT
    folder = folder.parent if folder.suffix == ".json" else folder
    reason = unwritable(folder)
    if reason:
        raise PromptOptError(f"cannot write the run folder under {folder} ({reason}); pass a writable --output_path")


def _error(message: str, code: int = 2) -> None:
    print(f"lm_eval: error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def _simple_evaluate_replaced(replacement: Callable[..., Any]) -> Iterator[None]:
    """Let lm-eval's own `Run._execute` call `replacement` where it calls `simple_evaluate`."""
    import lm_eval

    lm_eval.simple_evaluate = replacement
    try:
        yield
    finally:
        del lm_eval.simple_evaluate  # lm_eval resolves it lazily again


def execute(args: argparse.Namespace, stock_execute: Callable[[argparse.Namespace], None]) -> None:
    """`lm_eval run`: stock behaviour without --optimize, optimize-then-evaluate with it."""
    plugin = {key: vars(args).pop(key, None) for key in PLUGIN_KEYS}
    if plugin["optimize"] is None and plugin["optimized_prompts"] is None:
        for key in ("optimize_args", "optimize_cache"):
            if plugin[key]:
                _error(f"--{key} needs --optimize NAME")
        stock_execute(args)
        return
    from .optimizers import get_optimizer
    from .options import parse_optimize_args
    from .pipeline import OptimizeRun
    from .run.processes import ProcessGroup
    from .harness.setup import check_model_paths
    from .harness.splits import resolve_split
    from .run.instruction_cache import InstructionCache, default_cache_dir
    from .run.transfer import read_source

    run = None
    try:
        if plugin["optimize"] and plugin["optimized_prompts"]:
            raise PromptOptError("use either --optimize (search) or --optimized_prompts (no search), not both")
        optimizer_cls = get_optimizer(plugin["optimize"] or "none")
        options, config = parse_optimize_args(plugin["optimize_args"], optimizer_cls.name, optimizer_cls.config_class)
        options = resolve_split(options, optimizer_cls.name)
        given = load_prompts(Path(plugin["optimized_prompts"])) if plugin["optimized_prompts"] else None
        cache = InstructionCache(Path(plugin["optimize_cache"]) if plugin["optimize_cache"] else default_cache_dir())
        if given is None:
            cache.check_writable()  # before any search, not after it
        if options.exclude_source_docs and given is None:
            raise PromptOptError("exclude_source_docs=true applies to --optimized_prompts only")
        if getattr(args, "samples", None):
            raise PromptOptError("--samples cannot be combined with --optimize: the plugin selects the held-out docs (use --limit to cap them)")
        if getattr(args, "cache_requests", None):
            raise PromptOptError("--cache_requests cannot be combined with --optimize: lm-eval's request cache ignores which docs are selected (lm-eval PR #4105)")
        if getattr(args, "limit", None) is not None and args.limit <= 0:
            raise PromptOptError(f"--limit {args.limit:g}: give a number of held-out docs per task above 0 (or leave it out for all of them)")
        if getattr(args, "system_instruction", None) and options.instruction is not None:
            raise PromptOptError("the initial instruction is given twice: pass either --system_instruction or --optimize_args instruction=..., not both")
        checks = optimizer_cls(config)  # before lm-eval's set-up, the model load and any paid call
        checks.check_model(_lm_eval_setting(args, "model", "hf"))
        check_model_paths(_lm_eval_setting(args, "model_args"))
        checks.preflight()
        check_output_folder(_lm_eval_setting(args, "output_path"))
        include = [str(task_configs_dir())]
        given_path = getattr(args, "include_path", None)
        if given_path and not Path(given_path).resolve().is_relative_to(task_configs_dir().resolve()):
            include.append(given_path)  # (ours are already included: twice would warn of duplicate tasks)
        args.include_path = include
        source = read_source(Path(plugin["optimized_prompts"])) if given is not None else None
        run = OptimizeRun(optimizer_cls, config, options, cache=None if given else cache, given_prompts=given, given_source=source)
        from lm_eval.evaluator import simple_evaluate as stock

        from .harness.quiet import quiet_run

        with _simple_evaluate_replaced(lambda **kw: run.simple_evaluate(stock, **kw)), quiet_run():
            try:
                stock_execute(args)
            except ValueError as err:
                if str(err).startswith("Tasks not found"):
                    raise StageError("task load", f"{err} (list tasks with `lm_eval ls tasks`; add task folders with --include_path)") from None
                raise
    except PromptOptError as err:
        if run is not None:
            run.finish("failed")
        _error(str(err), err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        if run is not None:
            run.finish("interrupted")
        if run is None or run.is_main:
            from .run.folder import command_line

            print(f"\nlm_eval: interrupted; {run.interrupted() if run else 'nothing was saved yet'}. Resume with the same command: {command_line()}", file=sys.stderr)
        sys.exit(130)
    except Exception:
        if run is not None:
            run.finish("failed")
        raise
    if run.is_main:
        print(run.summary())
    ProcessGroup.close()


def load_prompts(path: Path) -> dict[str, str]:
    """task -> instruction from JSON, JSONL, or an earlier run's results / prompt_optimization.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PromptOptError(f"--optimized_prompts: cannot read {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            data = {row["task"]: row["instruction"] for row in rows}
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PromptOptError(
                f"--optimized_prompts: {path} is neither JSON {{task: instruction}} nor JSONL lines "
                '{"task": ..., "instruction": ...}'
            ) from None
    section = data.get("prompt_optimization", data) if isinstance(data, dict) else None
    if isinstance(section, dict) and isinstance(section.get("tasks"), dict):
        data = {task: entry["final_instruction"] for task, entry in section["tasks"].items()}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise PromptOptError(f"--optimized_prompts: {path} must map task names to instruction strings")
    return data
