"""The front door: `simple_evaluate`, lm-eval's function with a prompt optimizer in front.

Both ways in come through here: Python callers use `simple_evaluate`; the `lm_eval --optimize`
command (`lm_eval_flags.py`) checks its flags with `prepare` before lm-eval's own set-up and then
hands lm-eval's arguments to `run_prepared`, as `simple_evaluate` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PromptOptError
from .harness.settings import EvalSettings, check_names
from .pipeline import OptimizeRun


def task_configs_dir() -> Path:
    """Our task YAMLs (FOLIO, ...): inside the installed package, or beside it in a checkout."""
    installed = Path(__file__).resolve().parent / "task_configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "task_configs"


def include_paths(given: str | Path | None) -> list[str]:
    """Our task folder, and the caller's `include_path` unless it is inside ours (lm-eval would
    then warn of every task twice)."""
    include = [str(task_configs_dir())]
    if given and not Path(given).resolve().is_relative_to(task_configs_dir().resolve()):
        include.append(str(given))
    return include


def check_output_folder(output_path: str | Path | None) -> None:
    """The run folders go under `output_path`: refuse one that cannot be written, before any work."""
    from .run.files import unwritable
    from .run.folder import DEFAULT_OUTPUT

    folder = Path(output_path) if output_path else DEFAULT_OUTPUT
    folder = folder.parent if folder.suffix == ".json" else folder
    reason = unwritable(folder)
    if reason:
        raise PromptOptError(f"cannot write the run folder under {folder} ({reason}); pass a writable --output_path")


def prepare(
    optimizer: str | None,
    optimizer_args: str | dict[str, Any] | None = None,
    optimized_prompts: str | Path | None = None,
    optimize_cache: str | Path | None = None,
    *,
    model: Any = "hf",
    model_args: str | dict[str, Any] | None = None,
    output_path: str | Path | None = None,
    system_instruction: str | None = None,
    limit: int | float | None = None,
    samples: Any = None,
    cache_requests: bool = False,
) -> OptimizeRun:
    """Check the optimizer, its settings and the lm-eval arguments that conflict with them, before
    any task or model loads or any paid call; the run, ready for `run_prepared`."""
    from .harness.setup import check_model_paths
    from .harness.splits import resolve_split
    from .optimizers import get_optimizer
    from .options import parse_optimize_args
    from .run.instruction_cache import InstructionCache, default_cache_dir
    from .run.transfer import read_source

    if optimizer and optimized_prompts:
        raise PromptOptError("use either --optimize (search) or --optimized_prompts (no search), not both")
    optimizer_cls = get_optimizer(optimizer or "none")
    text = json.dumps(optimizer_args) if isinstance(optimizer_args, dict) else optimizer_args
    options, config = parse_optimize_args(text, optimizer_cls.name, optimizer_cls.config_class)
    options = resolve_split(options, optimizer_cls.name)
    given = load_prompts(Path(optimized_prompts)) if optimized_prompts else None
    cache = InstructionCache(Path(optimize_cache) if optimize_cache else default_cache_dir())
    if given is None:
        cache.check_writable()  # before any search, not after it
    if options.exclude_source_docs and given is None:
        raise PromptOptError("exclude_source_docs=true applies to --optimized_prompts only")
    if samples:
        raise PromptOptError(
            "--samples cannot be combined with --optimize: the plugin selects the held-out docs (use --limit to cap them)"
        )
    if cache_requests:
        raise PromptOptError(
            "--cache_requests cannot be combined with --optimize: lm-eval's request cache ignores which docs are selected (lm-eval PR #4105)"
        )
    if limit is not None and limit <= 0:
        raise PromptOptError(
            f"--limit {limit:g}: give a number of held-out docs per task above 0 (or leave it out for all of them)"
        )
    if system_instruction and options.instruction is not None:
        raise PromptOptError(
            "the initial instruction is given twice: pass either --system_instruction or --optimize_args instruction=..., not both"
        )
    checks = optimizer_cls(config)  # before lm-eval's set-up, the model load and any paid call
    checks.check_model(model)
    check_model_paths(model_args)
    checks.preflight()
    check_output_folder(output_path)
    source = read_source(Path(optimized_prompts)) if given is not None else None
    return OptimizeRun(
        optimizer_cls, config, options, cache=None if given else cache, given_prompts=given, given_source=source
    )


def run_prepared(run: OptimizeRun, settings: EvalSettings) -> dict[str, Any] | None:
    """Run it; `run.json` in the run folder records how it ended (complete, failed, interrupted)."""
    from .harness.quiet import quiet_run

    try:
        with quiet_run():
            return run.run(settings)
    except KeyboardInterrupt:
        run.finish("interrupted")
        raise
    except BaseException:
        run.finish("failed")
        raise


def simple_evaluate(
    model: Any,
    model_args: str | dict[str, Any] | None = None,
    tasks: list[Any] | str | None = None,
    *,
    optimizer: str | None = None,
    optimizer_args: str | dict[str, Any] | None = None,
    optimized_prompts: str | Path | None = None,
    optimize_cache: str | Path | None = None,
    output_path: str | Path | None = None,
    include_path: str | Path | None = None,
    **lm_eval_kwargs: Any,
) -> dict[str, Any] | None:
    """`lm_eval.simple_evaluate` with prompt optimization: search an instruction per leaf task on
    its optimize-train/dev docs, then evaluate the held-out docs with it.

    `model`, `model_args`, `tasks` and `lm_eval_kwargs` are lm-eval's `simple_evaluate` arguments
    (`num_fewshot`, `batch_size`, `device`, `limit`, `apply_chat_template`, seeds, ...).
    `optimizer` names the optimizer (`greater`, `gpo`, `candidates`, `none`) and `optimizer_args`
    its settings and the run options (a dict, or the `--optimize_args` text); `optimized_prompts`
    (a file) evaluates given instructions with no search instead. `optimize_cache` is the
    instruction cache folder (default: as on the command line). `include_path` adds task folders.

    Returns lm-eval's results dict with a `prompt_optimization` section (None on the other
    processes of a data-parallel run). Writes the run folder under `output_path` (default
    ./lm_eval_promptopt_runs): `<model>/prompt_optimization_<time>/` with run.json,
    prompt_optimization.json, optimized_prompts.json and each task's trajectory; and the
    instruction cache. Like lm-eval's own function it writes no results JSON or samples file.
    Raises `PromptOptError` (a one-line message) for bad settings or a failed stage.
    """
    check_names(lm_eval_kwargs)  # a typo fails before anything loads
    run = prepare(
        optimizer, optimizer_args, optimized_prompts, optimize_cache, model=model, model_args=model_args,
        output_path=output_path, system_instruction=lm_eval_kwargs.get("system_instruction"), limit=lm_eval_kwargs.get("limit"),
        samples=lm_eval_kwargs.get("samples"), cache_requests=lm_eval_kwargs.get("cache_requests", False),
    )  # fmt: skip
    if lm_eval_kwargs.get("task_manager") is None:
        from lm_eval.tasks import TaskManager

        lm_eval_kwargs["task_manager"] = TaskManager(
            include_path=include_paths(include_path), metadata=lm_eval_kwargs.get("metadata")
        )
    settings = EvalSettings.from_lm_eval(
        {**lm_eval_kwargs, "model": model, "model_args": model_args, "tasks": tasks}, output_path
    )
    return run_prepared(run, settings)


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
