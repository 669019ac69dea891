"""The optimize-then-evaluate stage: search an instruction per leaf task, then evaluate held-out.

`OptimizeRun.simple_evaluate` stands in for `lm_eval.simple_evaluate` during one `lm_eval run`
(see `cli.py`): it receives exactly the arguments lm-eval's CLI built, loads the model once,
optimizes every leaf task, then calls the real `simple_evaluate` on the held-out docs with each
task bound to its own instruction, and adds a `prompt_optimization` section to the results that
lm-eval's tracker then saves and prints as usual.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import __version__
from .run.log import Budget, Checkpoint, SearchControl
from .errors import PromptOptError, StageError
from .harness.objective import (
    Objective,
    TaskSplits,
    group_metric,
    primary_metric,
    quiet_harness,
)
from .optimizers.base import Optimizer, Problem
from .options import RunOptions
from .harness.prompting import Placement, bind_instruction, detect_placement
from .run.report import (
    SCHEMA_VERSION,
    Trajectory,
    comparison_rows,
    fill_tracker,
    format_table,
    plot_dev_scores,
    write_json,
)
from .harness.splits import SplitPlan, plan_splits
from .run.store import InstructionCache, digest, model_identity
from .run.transfer import Source, check_transfer


@dataclass
class TaskOutcome:
    task: str
    metric: str
    placement: str
    plan: dict[str, Any]
    initial_instruction: str
    final_instruction: str
    initial_dev_score: float | None
    final_dev_score: float | None
    stop_reason: str
    evaluations: int
    wall_time_s: float
    trajectory_file: str
    source: str = "search"
    """`search`, `cache` (a cached search with the same key), or `given` (--optimized_prompts)."""
    cache_entry: str | None = None
    process: int = 0
    """Which process of an `accelerate launch` run searched this task (0 in a one-process run)."""
    initial_kept: bool = False
    """True where the initial instruction beat the search's choice on optimize-dev and was kept."""
    search_choice: str | None = None
    """The search's own choice, where the initial instruction was kept instead."""
    details: dict[str, Any] = field(default_factory=dict)


def build_lm(kw: dict[str, Any]) -> Any:
    """Build the model the way `simple_evaluate` does, once, for the search and the evaluation."""
    import lm_eval.api.model
    import lm_eval.api.registry

    model = kw["model"]
    if not isinstance(model, str):
        return model
    extra = {"batch_size": kw.get("batch_size"), "max_batch_size": kw.get("max_batch_size"), "device": kw.get("device")}
    factory = lm_eval.api.registry.get_model(model)
    args = kw.get("model_args") or ""
    lm = factory.create_from_arg_obj(args, extra) if isinstance(args, dict) else factory.create_from_arg_string(args, extra)
    if kw.get("use_cache"):
        lm = lm_eval.api.model.CachingLM(lm, f"{kw['use_cache']}_rank{lm.rank}.db")
    return lm


def apply_task_overrides(tasks: dict[str, Any], kw: dict[str, Any]) -> None:
    """Per-task settings exactly as `simple_evaluate` applies them (bare `evaluate()` does not)."""
    gen_kwargs, num_fewshot = kw.get("gen_kwargs"), kw.get("num_fewshot")
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
        task.set_fewshot_seed(seed=kw.get("fewshot_random_seed"))


def root_items(loaded: dict[str, Any]) -> list[Any]:
    """The top-level groups and tasks of a `TaskManager.load()` result, to load them again."""
    children = {c for group in loaded["groups"].values() for c in group.child_names}
    roots = [g for name, g in loaded["groups"].items() if name not in children]
    return roots + [t for name, t in loaded["tasks"].items() if name not in children]


DEFAULT_OUTPUT = Path("lm_eval_promptopt_runs")
"""Where run folders go without --output_path."""


def default_run_dir(kw: dict[str, Any]) -> Path:
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.utils import sanitize_model_name

    tracker = kw.get("evaluation_tracker")
    output = Path(tracker.output_path) if tracker is not None and tracker.output_path else DEFAULT_OUTPUT
    if output.suffix == ".json":
        output = output.parent
    model_name = GeneralConfigTracker._get_model_name(kw.get("model_args")) or str(kw.get("model"))
    stamp = datetime.datetime.now().isoformat(timespec="seconds").replace(":", "-")
    return output / sanitize_model_name(model_name) / f"prompt_optimization_{stamp}"


@dataclass
class ProcessGroup:
    """The processes of an `accelerate launch` / `torchrun` run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> ProcessGroup:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():  # (lm-eval's HFLM then shares this state)
            from accelerate import PartialState

            PartialState()
        return cls(dist.get_rank(), dist.get_world_size())

    @staticmethod
    def close() -> None:
        """Wait for every process, then tear the group down: a process that leaves while the main
        one still evaluates can abort in the collective library's threads at exit."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @property
    def label(self) -> str:
        return f" [process {self.rank + 1}/{self.size}]" if self.size > 1 else ""

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    @contextlib.contextmanager
    def local(self, lm: Any):
        """Make a data-parallel lm-eval model act as a single process (its own requests only)."""
        inner = getattr(lm, "lm", lm)
        saved = (getattr(inner, "_rank", None), getattr(inner, "_world_size", None))
        swap = self.size > 1 and saved[1] not in (None, 1)
        if swap:
            inner._rank, inner._world_size = 0, 1
        try:
            yield
        finally:
            if swap:
                inner._rank, inner._world_size = saved


def lock_file(path: Path, wait: bool) -> Any | None:
    """An OS lock on `path` (held while the returned handle is open; released when the process
    ends, even by SIGKILL), or None where another process holds it and not `wait`."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def find_interrupted_run(parent: Path, run_key: str) -> Path | None:
    """The newest run folder under `parent` that the same command started and did not finish
    (its `run.json` says `running`, `failed` or `interrupted`)."""
    for run in sorted(parent.glob("prompt_optimization_*"), reverse=True):
        try:
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("run_key") == run_key:
            return run if info.get("status") != "complete" else None
    return None


def projected_cost_table(optimizer: Optimizer, plans: dict[str, SplitPlan]) -> str:
    """What the searches will cost at most, per task and in total, printed before they start."""
    lines = [f"lm_eval_promptopt: projected cost of the {optimizer.name} searches (upper bounds)",
             "| task | train | dev | harness evaluations | model calls | optimizer calls |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    total = {"harness_evaluations": 0, "model_calls": 0, "optimizer_calls": 0}
    for name, plan in plans.items():
        n_train, n_dev = len(plan.train.indices), len(plan.dev.indices)
        cost = optimizer.projected_cost(n_train, n_dev)
        total = {k: total[k] + cost[k] for k in total}
        lines.append(f"| {name} | {n_train} | {n_dev} | {cost['harness_evaluations']} | {cost['model_calls']} | {cost['optimizer_calls']} |")
    lines.append(f"| total | | | {total['harness_evaluations']} | {total['model_calls']} | {total['optimizer_calls']} |")
    return "\n".join(lines)


@dataclass
class OptimizeRun:
    """One `lm_eval ... --optimize NAME` invocation: its settings and, once run, its outcome."""

    optimizer_cls: type[Optimizer]
    config: Any
    options: RunOptions
    outcomes: list[TaskOutcome] = field(default_factory=list)
    comparison: list[dict[str, Any]] | None = None
    cache: InstructionCache | None = None
    given_prompts: dict[str, str] | None = None
    run_dir: Path | None = None
    seeds: dict[str, int | None] = field(default_factory=dict)
    is_main: bool = True
    """False on the other processes of an `accelerate launch` run (they write no summary files)."""
    process: int = 0
    given_source: Source | None = None
    """Where the given prompts came from and the split plans it records (the transfer check)."""
    transfer: dict[str, dict[str, Any]] = field(default_factory=dict)
    _marked: str | None = None
    """Set once this process has marked `run_dir/run.json` running (it marks how the run ends)."""
    _lock: Any = None

    def initial_instruction(self, kw: dict[str, Any]) -> str:
        if self.options.instruction is not None:
            return self.options.instruction
        if kw.get("system_instruction"):
            return kw["system_instruction"]
        return self.optimizer_cls.default_instruction

    def simple_evaluate(self, stock: Callable[..., Any], **kw: Any) -> dict[str, Any] | None:
        """Drop-in for `lm_eval.simple_evaluate`: optimize, then evaluate held-out docs."""
        if kw.get("predict_only"):
            raise PromptOptError("--predict_only computes no metric, so there is nothing to optimize; drop one of them")
        for seed, setter in zip(
            (kw.get("random_seed"), kw.get("numpy_random_seed"), kw.get("torch_random_seed")),
            (random.seed, _numpy_seed, _torch_seed),
        ):
            if seed is not None:
                setter(seed)
        self.seeds = {
            "split_and_search": self.options.seed,
            "random": kw.get("random_seed"),
            **{name: kw.get(f"{name}_random_seed") for name in ("numpy", "torch", "fewshot")},
        }
        initial = self.initial_instruction(kw)
        group = ProcessGroup.current()
        if group.rank == 0:
            self._open_run_dir(kw, self._run_key(kw))
        self.run_dir = group.broadcast(self.run_dir)
        self.is_main, self.process = group.rank == 0, group.rank
        with self._phase("task load"):
            loaded = kw["task_manager"].load(kw["tasks"])
            apply_task_overrides(loaded["tasks"], kw)
        eval_kwargs = {
            "apply_chat_template": kw.get("apply_chat_template", False),
            "fewshot_as_multiturn": kw.get("fewshot_as_multiturn", False),
            "confirm_run_unsafe_code": kw.get("confirm_run_unsafe_code", False),
        }
        if self.given_prompts is not None:
            missing = sorted(set(loaded["tasks"]) - set(self.given_prompts))
            if missing:
                raise PromptOptError(f"--optimized_prompts has no instruction for: {', '.join(missing)}; add them or drop those tasks")
            extra = sorted(set(self.given_prompts) - set(loaded["tasks"]))
            if extra and self.is_main:
                print(f"lm_eval_promptopt: --optimized_prompts: ignoring the instructions for tasks not in this run: {', '.join(extra)}")
        heldout: dict[str, list[int]] = {}
        metrics: dict[str, str] = {}
        failures: dict[str, str] = {}
        prepared = {name: self._plan(name, task, kw) for name, task in loaded["tasks"].items()}
        plans = {name: plan for name, (_, plan) in prepared.items()}
        if self.given_prompts is not None and self.given_source is not None:
            self.transfer = check_transfer(self.given_source, self.given_prompts, plans, self.options.exclude_source_docs)
            prepared = {name: (splits, plans[name]) for name, (splits, _) in prepared.items()}
        with self._phase("model load"):  # after the tasks and their plans: a bad size fails before it
            lm = build_lm(kw)
        placement = detect_placement(lm, kw.get("apply_chat_template", False))
        optimizer = self.optimizer_cls(self.config)
        if self.given_prompts is None and self.is_main:
            print(projected_cost_table(optimizer, plans))
        mine = list(loaded["tasks"].items())[group.rank :: group.size]  # this process's shard of the searches
        bar = tqdm(mine, desc=f"optimize ({self.optimizer_cls.name})" + group.label, unit="task", position=group.rank)
        with group.local(lm):  # each process searches on its own model copy, without collectives
            for name, task in bar:
                bar.set_postfix_str(name)
                try:
                    outcome = self._optimize_task(name, task, *prepared[name], optimizer, lm, loaded, placement, initial, kw, eval_kwargs)
                except PromptOptError:
                    raise
                except Exception as err:  # one task's failure must not lose the others' finished searches
                    failures[name] = f"{type(err).__name__}: {err}"
                    self._log_error(f"search of {name}")
                    continue
                self.outcomes.append(outcome)
                if self.is_main:
                    self._write_outputs(plot=False)
        bar.close()
        if group.size > 1:  # every process gets every search's outcome, in task order
            gathered = group.all_gather((self.outcomes, failures))
            order = list(loaded["tasks"])
            self.outcomes = sorted((o for outs, _ in gathered for o in outs), key=lambda o: order.index(o.task))
            failures = {k: v for _, fails in gathered for k, v in fails.items()}
            if self.is_main:
                self._write_outputs(plot=False)
        for outcome in self.outcomes:
            metrics[outcome.task] = outcome.metric
            heldout[outcome.task] = list(plans[outcome.task].heldout.indices)
        if failures:
            names = ", ".join(f"{task} ({why})" for task, why in failures.items())
            cached = self.cache is not None and all(o.cache_entry for o in self.outcomes if o.source == "search")
            raise StageError(
                "optimizer",
                f"search failed for {names}; the other tasks' searches are in {self.run_dir}"
                f"{' and in the instruction cache' if cached else ''}, so a rerun repeats only the failed ones "
                f"(traceback: {self.run_dir / 'error.log'})",
            )

        limit = kw.get("limit")
        samples = {name: _limited(indices, limit) for name, indices in heldout.items()}
        metrics.update({name: group_metric(g) for name, g in loaded["groups"].items() if group_metric(g)})

        if group.size > 1 and lm.world_size == 1 and not self.is_main:
            return None  # the model is not data-parallel here (e.g. on CPU): the main process evaluates
        baseline = None
        if self.options.compare_baseline:
            for outcome in self.outcomes:
                bind_instruction(loaded["tasks"][outcome.task], outcome.initial_instruction, placement)
            apply_task_overrides(loaded["tasks"], kw)
            from lm_eval.evaluator import evaluate

            with quiet_harness():
                baseline = evaluate(lm=lm, task_dict=loaded, samples=samples, bootstrap_iters=0, log_samples=False, **eval_kwargs)
        for outcome in self.outcomes:
            bind_instruction(loaded["tasks"][outcome.task], outcome.final_instruction, placement)

        final_kw = dict(kw, model=lm, tasks=root_items(loaded), samples=samples, limit=None, system_instruction=None, use_cache=None)
        with self._phase("evaluation"):
            results = stock(**final_kw)
        if results is None:  # not the main process
            return None
        instructions = {o.task: o.final_instruction for o in self.outcomes}
        fill_tracker(kw.get("evaluation_tracker"), instructions, kw["model"], kw.get("model_args"), self.run_dir.parent.name)
        if isinstance(kw["model"], str):  # name the model as a stock run does, not the LM class
            results["config"]["model"] = kw["model"]
        if baseline is not None:
            self.comparison = comparison_rows(baseline, results, metrics)
        results["prompt_optimization"] = self.section()
        self._write_outputs()
        self.finish("complete")
        return results

    def _open_run_dir(self, kw: dict[str, Any], run_key: str) -> None:
        """Resume the same command's unfinished run folder or start one; lock it and mark it running.
        The lock refuses a second live run of the same command (it would pay every call twice)."""
        new = default_run_dir(kw)
        try:
            # one process at a time chooses its folder, so two runs started together cannot both miss each other
            with contextlib.closing(lock_file(new.parent / ".prompt_optimization.lock", wait=True)):
                found = None if self.options.refresh else find_interrupted_run(new.parent, run_key)
                self.run_dir = found or new
                self._lock = lock_file(self.run_dir / ".lock", wait=False)
                if self._lock is None:
                    raise PromptOptError(
                        f"another lm_eval process is running this command in {self.run_dir} now; wait for it to "
                        "finish, or stop it and rerun to resume it, or pass another --output_path"
                    )
                write_json(self.run_dir / "run.json", {"run_key": run_key, "status": "running"})
        except OSError as err:
            raise PromptOptError(f"cannot write the run folder {new.parent} ({err.strerror or err}); pass a writable --output_path") from None
        self._marked = run_key
        if found is not None:
            print(f"lm_eval_promptopt: resuming the interrupted run in {self.run_dir} (refresh=true starts afresh)")

    def finish(self, status: str) -> None:
        """Mark how the run ended in `run.json` (`complete`, `failed`, `interrupted`) and unlock it;
        a rerun of the same command resumes any run that did not complete."""
        if self._marked is None:
            return
        write_json(self.run_dir / "run.json", {"run_key": self._marked, "status": status})
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def interrupted(self) -> str:
        """What an interrupted run has saved (one line)."""
        if self.run_dir is None or self._marked is None:
            return "nothing was saved yet"
        searched = [o.task for o in self.outcomes if o.source != "given"]
        done = f"the finished searches ({', '.join(searched)})" if searched else "no finished search"
        return f"saved in {self.run_dir}: {done} and each unfinished search up to its last completed step"

    def _run_key(self, kw: dict[str, Any]) -> str:
        """What makes a rerun "the same command" (and so resumes an interrupted run)."""
        keys = ("model", "model_args", "tasks", "num_fewshot", "gen_kwargs", "limit", "apply_chat_template",
                "fewshot_as_multiturn", "system_instruction", "random_seed", "numpy_random_seed",
                "torch_random_seed", "fewshot_random_seed")  # fmt: skip
        return digest(
            {
                "command": {k: kw.get(k) for k in keys},
                "optimizer": self.optimizer_cls.name,
                "config": asdict(self.config),
                "options": asdict(self.options),
                "given": self.given_prompts,
            }
        )

    def _plan(self, name: str, task: Any, kw: dict[str, Any]) -> tuple[TaskSplits, SplitPlan]:
        """The task's split copies (reused by its search) and its split plan."""
        splits = TaskSplits(task)
        fewshot_seed = kw.get("fewshot_random_seed")
        return splits, plan_splits(name, task.config, self.options, splits.size, lambda split: splits.fewshot_exemplars(split, fewshot_seed))

    def _optimize_task(self, name, task, splits: TaskSplits, plan: SplitPlan, optimizer: Optimizer, lm, loaded, placement: Placement, initial, kw, eval_kwargs):
        metric = self.options.metric or primary_metric(name, task, loaded["groups"])
        trajectory_path = self.run_dir / "trajectories" / f"{name}.jsonl"
        outcome = dict(task=name, metric=metric, placement=placement.name, plan=plan.as_dict(), initial_instruction=initial, process=self.process)
        if self.given_prompts is not None:
            trajectory = Trajectory(trajectory_path)
            trajectory.append({"kind": "given", "instruction": self.given_prompts[name]})
            outcome.update(final_instruction=self.given_prompts[name], source="given", initial_dev_score=None, final_dev_score=None)
            details = {"transfer_check": self.transfer[name]} if name in self.transfer else {}
            return TaskOutcome(**outcome, stop_reason="given", evaluations=0, wall_time_s=0.0, trajectory_file=str(trajectory_path), details=details)
        key = self._cache_key(name, task, lm, kw, plan, placement, initial, metric, eval_kwargs)
        checkpoint = Checkpoint(self.run_dir / "state" / f"{name}.json", digest(key))
        saved = checkpoint.load() or {}
        if "outcome" in saved:  # finished before the interruption
            print(f"lm_eval_promptopt: {name}: search finished in the interrupted run; reusing it")
            return TaskOutcome(**saved["outcome"])
        cached = None if self.cache is None or self.options.refresh else self.cache.lookup(key)
        if cached is not None:
            trajectory = Trajectory(trajectory_path)
            entry = str(self.cache.path(key))
            trajectory.append({"kind": "cache_hit", "cache_entry": entry, "instruction": cached["final_instruction"]})
            print(f"lm_eval_promptopt: {name}: reusing the cached search {entry} (refresh=true searches again)")
            kept = {k: cached[k] for k in ("final_instruction", "initial_dev_score", "final_dev_score", "stop_reason", "evaluations", "wall_time_s", "details")}
            return TaskOutcome(**outcome, **kept, trajectory_file=str(trajectory_path), source="cache", cache_entry=entry)
        resumed = "search" in saved
        trajectory = Trajectory(trajectory_path, resume=resumed)
        objective = Objective(
            task_name=name,
            splits=splits,
            plan=plan,
            lm=lm,
            placement=placement,
            metric=metric,
            fewshot_seed=kw.get("fewshot_random_seed"),
            eval_kwargs=eval_kwargs,
            record=trajectory.append,
        )
        previous = list(trajectory.entries) if resumed else []
        objective.preload(previous)
        opts = self.options
        control = SearchControl(
            Budget(opts.max_evals, opts.time_limit, opts.patience),
            evaluations=lambda: objective.evaluations,
            checkpoint=checkpoint,
            previous=previous,
        )
        if resumed:
            print(f"lm_eval_promptopt: {name}: resuming after step {control.steps_done} ({checkpoint.path})")
            trajectory.append({"kind": "resumed", "after_step": control.steps_done})
        problem = Problem(name, lm, plan, objective, initial, opts.seed, control)
        initial_score = problem.score(initial, "dev")
        result = optimizer.optimize(problem)
        final, final_score = result.instruction, problem.score(result.instruction, "dev")
        kept = opts.keep_initial and initial_score > final_score
        if kept:  # never worse on optimize-dev than the start
            print(
                f"lm_eval_promptopt: {name}: the search's choice scores {final_score:.4f} on optimize-dev, below the initial "
                f"instruction's {initial_score:.4f}: keeping the initial instruction (keep_initial=false keeps the search's choice)"
            )
            trajectory.append({"kind": "initial_kept", "search_choice": final, "search_choice_dev_score": final_score, "initial_dev_score": initial_score})
        searched = TaskOutcome(
            **outcome,
            final_instruction=initial if kept else final,
            initial_dev_score=initial_score,
            final_dev_score=initial_score if kept else final_score,
            initial_kept=kept,
            search_choice=final if kept else None,
            stop_reason=result.stop_reason,
            evaluations=objective.evaluations,
            wall_time_s=round(control.elapsed(), 3),
            trajectory_file=str(trajectory_path),
            details=result.details,
        )
        if self.cache is not None:
            entry = self.cache.save(key, asdict(searched))  # a failed write warns; the run's outputs hold the search
            searched.cache_entry = str(entry) if entry else None
        checkpoint.save({"outcome": asdict(searched)})
        return searched

    def _cache_key(self, name, task, lm, kw, plan: SplitPlan, placement: Placement, initial, metric, eval_kwargs) -> dict[str, Any]:
        """Everything that can change a search's result."""
        return {
            "plugin_version": __version__,
            "model": model_identity(lm, kw["model"], kw.get("model_args")),
            "task": name,
            "task_config_sha256": digest(task.config.to_dict()),
            "optimizer": self.optimizer_cls.name,
            "optimizer_config": asdict(self.config),
            # the candidate list itself, not only the file it came from
            "optimizer_inputs": self.config.instructions() if hasattr(self.config, "instructions") else None,
            "initial_instruction": initial,
            "metric": metric,
            "split_plan_sha256": digest(plan.as_dict()),
            "seeds": self.seeds,
            "placement": placement.name,
            "evaluation": {k: eval_kwargs[k] for k in ("apply_chat_template", "fewshot_as_multiturn")},
        }

    @contextlib.contextmanager
    def _phase(self, phase: str):
        """Turn an unexpected exception in `phase` into a one-line StageError (traceback to error.log)."""
        try:
            yield
        except PromptOptError:
            raise
        except Exception as err:
            log = self._log_error(phase)
            raise StageError(phase, f"{type(err).__name__}: {err} (traceback: {log})") from err

    def _log_error(self, what: str) -> Path:
        log = self.run_dir / "error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {what}\n{traceback.format_exc()}\n")
        return log

    def section(self) -> dict[str, Any]:
        """The `prompt_optimization` section of the results JSON."""
        return {
            "schema_version": SCHEMA_VERSION,
            "plugin_version": __version__,
            "optimizer": self.optimizer_cls.name,
            "optimizer_config": asdict(self.config),
            "options": asdict(self.options),
            "seeds": self.seeds,
            "run_dir": str(self.run_dir),
            "tasks": {o.task: asdict(o) for o in self.outcomes},
            **({"baseline_vs_optimized": self.comparison} if self.comparison is not None else {}),
        }

    def _write_outputs(self, plot: bool = True) -> None:
        write_json(self.run_dir / "optimized_prompts.json", {o.task: o.final_instruction for o in self.outcomes})
        write_json(self.run_dir / "prompt_optimization.json", self.section())
        if self.comparison is not None:
            (self.run_dir / "baseline_vs_optimized.md").write_text(format_table(self.comparison) + "\n", encoding="utf-8")
        if plot and self.outcomes:
            plot_dev_scores(self.section(), self.run_dir / "dev_scores.png")

    def summary(self) -> str:
        """What to print after lm-eval's own tables."""
        lines = []
        if self.comparison is not None:
            lines += ["Held-out: baseline (initial instruction) vs optimized", format_table(self.comparison), ""]
        for o in self.outcomes:
            scores = "" if o.final_dev_score is None else f"dev {o.initial_dev_score:.4f} -> {o.final_dev_score:.4f}  "
            origin = {"cache": " (cached search)", "given": " (given)"}.get(o.source, "")
            lines.append(f"{o.task}: {scores}instruction{origin}: {o.final_instruction!r}")
        plot = ", dev_scores.png" if (self.run_dir / "dev_scores.png").exists() else ""
        lines.append(f"prompt optimization outputs: {self.run_dir} (prompt_optimization.json, optimized_prompts.json, trajectories/{plot})")
        return "\n".join(lines)


def _limited(indices: list[int], limit: int | float | None) -> list[int]:
    if limit is None:
        return indices
    count = int(limit * len(indices)) if limit < 1 else int(limit)
    return indices[: max(count, 1)]


def _numpy_seed(seed: int) -> None:
    import numpy as np

    np.random.seed(seed)


def _torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
