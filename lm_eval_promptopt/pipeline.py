"""The optimize-then-evaluate stage: search an instruction per leaf task, then evaluate held-out.

`OptimizeRun.run` takes lm-eval's arguments as typed settings (from the Python API, `api.py`, or
the `lm_eval --optimize` command, `lm_eval_flags.py`) and runs five steps: open the run folder,
load the tasks and plan their splits, load the model once, search every leaf task (reusing a
finished search from the run folder or the instruction cache), then call lm-eval's own
`simple_evaluate` on the held-out docs with each task bound to its own instruction, and add the
`prompt_optimization` section to its results.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import PromptOptError, StageError
from .harness.context import check_fits
from .harness.heldout import evaluate_final, evaluate_initial, heldout_samples
from .harness.objective import Objective, TaskSplits, group_metric, primary_metric
from .harness.prompting import Placement, detect_placement
from .harness.settings import EvalSettings
from .harness.setup import (
    apply_task_overrides,
    build_lm,
    limited_plan,
    seed_everything,
)
from .harness.splits import SplitPlan, plan_splits
from .logs import follow_verbosity, get_logger
from .optimizers.base import Optimizer, Problem
from .options import RunOptions
from .report.run_report import (
    TaskOutcome,
    comparison_rows,
    fill_tracker,
    projected_cost_table,
    results_section,
    summary,
    write_outputs,
)
from .run.folder import RunFolder, log_error
from .run.instruction_cache import InstructionCache, digest, model_identity
from .run.log import Checkpoint, RunLog, Trajectory
from .run.processes import ProcessGroup
from .run.search_key import cacheable, search_key
from .run.stop import budget
from .run.transfer import Source, check_transfer


logger = get_logger(__name__)


@dataclass
class Workbench:
    """What one run works with: its lm-eval settings, the loaded tasks with their split plans, the model."""

    settings: EvalSettings
    loaded: dict[str, Any]
    """`TaskManager.load()`'s result: `tasks` (leaf tasks by name) and `groups`."""
    splits: dict[str, TaskSplits]
    plans: dict[str, SplitPlan]
    lm: Any = None
    placement: Placement | None = None


@dataclass
class OptimizeRun:
    """One optimize-then-evaluate run (`lm_eval --optimize NAME`, or the API): its settings and,
    once run, its outcome."""

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
    folder: RunFolder | None = None
    """The run folder this process opened and locked (rank 0 only; it marks how the run ends)."""

    def initial_instruction(self, settings: EvalSettings) -> str:
        if self.options.instruction is not None:
            return self.options.instruction
        if settings.system_instruction:
            return settings.system_instruction
        return self.optimizer_cls.default_instruction

    def run(self, settings: EvalSettings) -> dict[str, Any] | None:
        """Optimize, then evaluate the held-out docs: lm-eval's results dict with our section
        (None on the other processes of a data-parallel run)."""
        if settings.predict_only:
            raise PromptOptError("--predict_only computes no metric, so there is nothing to optimize; drop one of them")
        follow_verbosity(settings.verbosity)
        group = self._start(settings)
        bench = self._load_tasks(settings)
        with self._phase("model load"):  # after the tasks and their plans: a bad size fails before it
            bench.lm = build_lm(settings)
        bench.placement = detect_placement(bench.lm, settings.apply_chat_template)
        self._check_context(bench)
        self._search_all(group, bench)
        if group.size > 1 and bench.lm.world_size == 1 and not self.is_main:
            return None  # the model is not data-parallel here (e.g. on CPU): the main process evaluates
        return self._evaluate(bench)

    # -- the steps of a run ----------------------------------------------------------------------
    def _start(self, settings: EvalSettings) -> ProcessGroup:
        """Seed as `simple_evaluate` does, and open the run folder (rank 0) for every process."""
        seed_everything(settings)
        self.seeds = {"split_and_search": self.options.seed, **settings.seeds()}
        group = ProcessGroup.current()
        if group.rank == 0:
            self.folder = RunFolder.open(
                settings.output_path, settings.model, settings.model_args, self._run_key(settings), self.options.refresh
            )
            self.run_dir = self.folder.path
        self.run_dir = group.broadcast(self.run_dir)
        self.is_main, self.process = group.rank == 0, group.rank
        return group

    def _load_tasks(self, settings: EvalSettings) -> Workbench:
        """Load the tasks with `simple_evaluate`'s overrides, check the given prompts against
        them, and plan every leaf task's splits (checked against the given prompts' source)."""
        with self._phase("task load"):
            loaded = settings.task_manager.load(settings.tasks)
            apply_task_overrides(
                loaded["tasks"], settings.gen_kwargs, settings.num_fewshot, settings.fewshot_random_seed
            )
        if self.given_prompts is not None:
            missing = sorted(set(loaded["tasks"]) - set(self.given_prompts))
            if missing:
                raise PromptOptError(
                    f"--optimized_prompts has no instruction for: {', '.join(missing)}; add them or drop those tasks"
                )
            extra = sorted(set(self.given_prompts) - set(loaded["tasks"]))
            if extra and self.is_main:
                logger.info(
                    f"lm_eval_promptopt: --optimized_prompts: ignoring the instructions for tasks not in this run: {', '.join(extra)}"
                )
        splits = {name: TaskSplits(task) for name, task in loaded["tasks"].items()}
        fewshot_seed = settings.fewshot_random_seed
        plans = {
            name: plan_splits(
                name, task.config, self.options, s.size, lambda split, s=s: s.fewshot_exemplars(split, fewshot_seed)
            )
            for (name, task), s in zip(loaded["tasks"].items(), splits.values())
        }
        if self.given_prompts is not None and self.given_source is not None:
            self.transfer = check_transfer(
                self.given_source, self.given_prompts, plans, self.options.exclude_source_docs
            )
        return Workbench(settings, loaded, splits, plans)

    def _check_context(self, bench: Workbench) -> None:
        """Refuse an instruction known before the searches (initial, candidates, given) that does not
        fit the model's context with the task's first held-out doc."""
        listed = self.config.instructions() if hasattr(self.config, "instructions") else []
        initial = self.initial_instruction(bench.settings)
        for name, task in bench.loaded["tasks"].items():
            heldout = bench.plans[name].heldout
            doc = bench.splits[name].docs(heldout.split)[heldout.indices[0]]
            instructions = [self.given_prompts[name]] if self.given_prompts is not None else [initial, *listed]
            check_fits(
                name,
                task,
                doc,
                instructions,
                bench.lm,
                bench.placement,
                bench.settings.evaluate_kwargs(),
                bench.settings.fewshot_random_seed,
            )

    def _search_all(self, group: ProcessGroup, bench: Workbench) -> None:
        """Each process searches its shard of the tasks; every process then has every outcome.
        One task's failure does not lose the others' finished searches (a rerun reuses them)."""
        optimizer = self.optimizer_cls(self.config)
        if self.given_prompts is None and self.is_main:
            print(projected_cost_table(optimizer, bench.plans))
        initial = self.initial_instruction(bench.settings)
        failures: dict[str, str] = {}
        bar = tqdm(
            group.shard(list(bench.loaded["tasks"])),
            desc=f"optimize ({self.optimizer_cls.name})" + group.label,
            unit="task",
            position=group.rank,
        )
        # lines printed or logged during the search go above the progress bars, not onto them
        with group.local(bench.lm), logging_redirect_tqdm(loggers=[logging.getLogger("lm_eval")]):
            for name in bar:
                bar.set_postfix_str(name)
                try:
                    outcome = self._optimize_task(name, bench, optimizer, initial)
                except PromptOptError:
                    raise
                except Exception as err:
                    failures[name] = f"{type(err).__name__}: {err}"
                    log_error(self.run_dir, f"search of {name}")
                    continue
                self.outcomes.append(outcome)
                if self.is_main:
                    self._write_outputs(plot=False)
        bar.close()
        if group.size > 1:  # every process gets every search's outcome, in task order
            gathered = group.all_gather((self.outcomes, failures))
            order = list(bench.loaded["tasks"])
            self.outcomes = sorted((o for outs, _ in gathered for o in outs), key=lambda o: order.index(o.task))
            failures = {k: v for _, fails in gathered for k, v in fails.items()}
            if self.is_main:
                self._write_outputs(plot=False)
        if failures:
            names = ", ".join(f"{task} ({why})" for task, why in failures.items())
            cached = self.cache is not None and all(o.cache_entry for o in self.outcomes if o.source == "search")
            raise StageError(
                "optimizer",
                f"search failed for {names}; the other tasks' searches are in {self.run_dir}"
                f"{' and in the instruction cache' if cached else ''}, so a rerun repeats only the failed ones "
                f"(traceback: {self.run_dir / 'error.log'})",
            )

    def _evaluate(self, bench: Workbench) -> dict[str, Any] | None:
        """lm-eval's own `simple_evaluate` on the held-out docs, each task bound to its final
        instruction (with compare_baseline, `evaluate()` with the initial ones first)."""
        settings, loaded, lm, placement = bench.settings, bench.loaded, bench.lm, bench.placement
        samples = heldout_samples(bench.plans, [o.task for o in self.outcomes], settings.limit)
        if settings.limit is not None:  # the record lists what was evaluated
            for outcome in self.outcomes:
                outcome.plan = limited_plan(outcome.plan, samples[outcome.task], settings.limit)
        metrics = {o.task: o.metric for o in self.outcomes}
        metrics.update({name: group_metric(g) for name, g in loaded["groups"].items() if group_metric(g)})
        baseline = None
        if self.options.compare_baseline:
            initial = {o.task: o.initial_instruction for o in self.outcomes}
            baseline = evaluate_initial(initial, lm, loaded, samples, placement, settings)
        with self._phase("evaluation"):
            final = {o.task: o.final_instruction for o in self.outcomes}
            results = evaluate_final(final, lm, loaded, samples, placement, settings)
        if results is None:  # not the main process
            return None
        fill_tracker(settings.evaluation_tracker, final, settings.model, settings.model_args, self.run_dir.parent.name)
        if isinstance(settings.model, str):  # name the model as a stock run does, not the LM class
            results["config"]["model"] = settings.model
        results["config"]["limit"] = settings.limit  # lm-eval evaluated our `samples`, so it recorded none
        if baseline is not None:
            self.comparison = comparison_rows(baseline, results, metrics)
        results["prompt_optimization"] = self.section()
        self._write_outputs()
        self.finish("complete")
        return results

    # -- one task ----------------------------------------------------------------------------
    def _optimize_task(self, name: str, bench: Workbench, optimizer: Optimizer, initial: str) -> TaskOutcome:
        """The task's instruction: given, finished before an interruption, cached, or searched."""
        task, plan = bench.loaded["tasks"][name], bench.plans[name]
        metric = self.options.metric or primary_metric(name, task, bench.loaded["groups"])
        trajectory_path = self.run_dir / "trajectories" / f"{name}.jsonl"
        common = dict(
            task=name,
            metric=metric,
            placement=bench.placement.name,
            plan=plan.as_dict(),
            initial_instruction=initial,
            process=self.process,
        )
        if self.given_prompts is not None:
            Trajectory(trajectory_path).append({"kind": "given", "instruction": self.given_prompts[name]})
            details = {"transfer_check": self.transfer[name]} if name in self.transfer else {}
            return TaskOutcome(**common, final_instruction=self.given_prompts[name], source="given", initial_dev_score=None, final_dev_score=None,
                               stop_reason="given", evaluations=0, wall_time_s=0.0, trajectory_file=str(trajectory_path), details=details)  # fmt: skip
        key = self._cache_key(name, bench, initial, metric)
        checkpoint = Checkpoint(self.run_dir / "state" / f"{name}.json", digest(key))
        saved = checkpoint.load() or {}
        if "outcome" in saved:  # finished before the interruption
            logger.info(f"lm_eval_promptopt: {name}: search finished in the interrupted run; reusing it")
            return TaskOutcome(**saved["outcome"])
        cached = None if self.cache is None or self.options.refresh else self.cache.lookup(key)
        if cached is not None:
            entry = str(self.cache.path(key))
            Trajectory(trajectory_path).append(
                {"kind": "cache_hit", "cache_entry": entry, "instruction": cached["final_instruction"]}
            )
            logger.info(f"lm_eval_promptopt: {name}: reusing the cached search {entry} (refresh=true searches again)")
            kept = {
                k: cached[k]
                for k in (
                    "final_instruction",
                    "initial_dev_score",
                    "final_dev_score",
                    "stop_reason",
                    "evaluations",
                    "wall_time_s",
                    "details",
                )
            }
            return TaskOutcome(
                **common, **kept, trajectory_file=str(trajectory_path), source="cache", cache_entry=entry
            )
        searched = self._search(name, bench, optimizer, initial, metric, checkpoint, trajectory_path, common)
        if self.cache is not None and cacheable(searched.stop_reason):
            entry = self.cache.save(key, asdict(searched))  # a failed write warns; the run's outputs hold the search
            searched.cache_entry = str(entry) if entry else None
        elif self.cache is not None:
            logger.info(
                f"lm_eval_promptopt: {name}: the time limit stopped this search, so it is not cached (how far it gets depends on the machine's speed and load)"
            )
        checkpoint.save({"outcome": asdict(searched)})
        return searched

    def _search(self, name: str, bench: Workbench, optimizer: Optimizer, initial: str, metric: str,
                checkpoint: Checkpoint, trajectory_path: Path, common: dict[str, Any]) -> TaskOutcome:  # fmt: skip
        """Run the optimizer on the task (resuming an interrupted search) and keep the initial
        instruction where it scores better on optimize-dev (keep_initial)."""
        opts = self.options
        objective: Objective | None = None
        log = RunLog(
            trajectory_path,
            checkpoint,
            stop=budget(opts.max_evals, opts.time_limit, opts.patience),
            evaluations=lambda: objective.evaluations if objective else 0,
        )
        objective = Objective(
            task_name=name,
            splits=bench.splits[name],
            plan=bench.plans[name],
            lm=bench.lm,
            placement=bench.placement,
            metric=metric,
            fewshot_seed=bench.settings.fewshot_random_seed,
            eval_kwargs=bench.settings.evaluate_kwargs(),
            record=log.record,
        )
        objective.preload(log.previous)
        if log.resumed is not None:
            logger.info(f"lm_eval_promptopt: {name}: resuming after step {log.steps_done} ({checkpoint.path})")
            log.record({"kind": "resumed", "after_step": log.steps_done})
        problem = Problem(name, bench.lm, bench.plans[name], objective, initial, opts.seed, log)
        initial_score = problem.score(initial, "dev")
        result = optimizer.optimize(problem)
        final, final_score = result.instruction, problem.score(result.instruction, "dev")
        kept = opts.keep_initial and initial_score > final_score
        if kept:  # never worse on optimize-dev than the start
            logger.info(
                f"lm_eval_promptopt: {name}: the search's choice scores {final_score:.4f} on optimize-dev, below the initial "
                f"instruction's {initial_score:.4f}: keeping the initial instruction (keep_initial=false keeps the search's choice)"
            )
            log.record(
                {
                    "kind": "initial_kept",
                    "search_choice": final,
                    "search_choice_dev_score": final_score,
                    "initial_dev_score": initial_score,
                }
            )
        return TaskOutcome(
            **common,
            final_instruction=initial if kept else final,
            initial_dev_score=initial_score,
            final_dev_score=initial_score if kept else final_score,
            initial_kept=kept,
            search_choice=final if kept else None,
            stop_reason=result.stop_reason,
            evaluations=objective.evaluations,
            wall_time_s=round(log.elapsed(), 3),
            trajectory_file=str(trajectory_path),
            details=result.details,
        )

    def _cache_key(self, name: str, bench: Workbench, initial: str, metric: str) -> dict[str, Any]:
        """Everything that can change a search's result (the rule: `run/search_key.py`)."""
        settings = bench.settings
        return search_key(
            optimizer=self.optimizer_cls.name,
            config=self.config,
            options=self.options,
            model=model_identity(bench.lm, settings.model, settings.model_args),
            task=name,
            task_config_sha256=digest(bench.loaded["tasks"][name].config.to_dict()),
            initial_instruction=initial,
            metric=metric,
            split_plan_sha256=digest(bench.plans[name].as_dict()),
            seeds=self.seeds,
            placement=bench.placement.name,
            evaluation={
                k: bench.settings.evaluate_kwargs()[k] for k in ("apply_chat_template", "fewshot_as_multiturn")
            },
        )

    def _run_key(self, settings: EvalSettings) -> str:
        """What makes a rerun "the same command" (and so resumes an interrupted run)."""
        return digest(
            {
                "command": settings.command_identity(),
                "optimizer": self.optimizer_cls.name,
                "config": asdict(self.config),
                "options": asdict(self.options),
                "given": self.given_prompts,
            }
        )

    # -- how the run ends and what it reports ------------------------------------------------------
    def finish(self, status: str) -> None:
        """Mark how the run ended in `run.json` (`complete`, `failed`, `interrupted`) and unlock it."""
        if self.folder is not None:
            self.folder.finish(status)

    def interrupted(self) -> str:
        """What an interrupted run has saved (one line)."""
        if self.run_dir is None or self.folder is None:
            return "nothing was saved yet"
        searched = [o.task for o in self.outcomes if o.source != "given"]
        done = f"the finished searches ({', '.join(searched)})" if searched else "no finished search"
        return f"saved in {self.run_dir}: {done} and each unfinished search up to its last completed step"

    def section(self) -> dict[str, Any]:
        """The `prompt_optimization` section of the results JSON."""
        return results_section(
            self.optimizer_cls.name, self.config, self.options, self.seeds, self.run_dir, self.outcomes, self.comparison
        )

    def _write_outputs(self, plot: bool = True) -> None:
        write_outputs(self.run_dir, self.section(), plot)

    def summary(self) -> str:
        """What to print after lm-eval's own tables."""
        return summary(self.run_dir, self.outcomes, self.comparison)

    @contextlib.contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        """Turn an unexpected exception in `phase` into a one-line StageError (traceback to error.log)."""
        try:
            yield
        except PromptOptError:
            raise
        except Exception as err:
            log = log_error(self.run_dir, phase)
            raise StageError(phase, f"{type(err).__name__}: {err} (traceback: {log})") from err
