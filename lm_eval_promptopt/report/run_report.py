"""What a run reports: each task's outcome, the results section, the baseline-vs-optimized
table, the projected cost, the dev-score plot, and the summaries printed after a run or by `show`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PromptOptError
from ..run.files import read_jsonl, write_json
from ..version import __version__
from .board import fmt
from .markdown import markdown_table


SCHEMA_VERSION = 1


@dataclass
class TaskOutcome:
    """One task's entry in the results section (`prompt_optimization.tasks.<task>`)."""

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


def results_section(
    optimizer: str,
    config: Any,
    options: Any,
    seeds: dict[str, int | None],
    run_dir: Path,
    outcomes: list[TaskOutcome],
    comparison: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The `prompt_optimization` section of the results JSON."""
    return {
        "schema_version": SCHEMA_VERSION,
        "plugin_version": __version__,
        "optimizer": optimizer,
        "optimizer_config": asdict(config),
        "options": asdict(options),
        "seeds": seeds,
        "run_dir": str(run_dir),
        "tasks": {o.task: asdict(o) for o in outcomes},
        **({"baseline_vs_optimized": comparison} if comparison is not None else {}),
    }


def write_outputs(run_dir: Path, section: dict[str, Any], plot: bool = True) -> None:
    """The run folder's summary files: optimized_prompts.json, prompt_optimization.json, the
    baseline-vs-optimized table and (with `plot`) the dev-score plot."""
    write_json(
        run_dir / "optimized_prompts.json", {task: o["final_instruction"] for task, o in section["tasks"].items()}
    )
    write_json(run_dir / "prompt_optimization.json", section)
    if "baseline_vs_optimized" in section:
        (run_dir / "baseline_vs_optimized.md").write_text(
            format_table(section["baseline_vs_optimized"]) + "\n", encoding="utf-8"
        )
    if plot and section["tasks"]:
        plot_dev_scores(section, run_dir / "dev_scores.png")


def summary(run_dir: Path, outcomes: list[TaskOutcome], comparison: list[dict[str, Any]] | None) -> str:
    """What to print after lm-eval's own tables."""
    lines = []
    if comparison is not None:
        lines += ["Held-out: baseline (initial instruction) vs optimized", format_table(comparison), ""]
    for o in outcomes:
        scores = "" if o.final_dev_score is None else f"dev {o.initial_dev_score:.4f} -> {o.final_dev_score:.4f}  "
        origin = {"cache": " (cached search)", "given": " (given)"}.get(o.source, "")
        lines.append(f"{o.task}: {scores}instruction{origin}: {o.final_instruction!r}")
    plot = ", dev_scores.png" if (run_dir / "dev_scores.png").exists() else ""
    lines.append(
        f"prompt optimization outputs: {run_dir} (prompt_optimization.json, optimized_prompts.json, trajectories/{plot})"
    )
    return "\n".join(lines)


def projected_cost_table(optimizer: Any, plans: dict[str, Any]) -> str:
    """What the searches will cost at most, per task and in total, printed before they start."""
    rows, total = [], {"harness_evaluations": 0, "model_calls": 0, "optimizer_calls": 0}
    for name, plan in plans.items():
        n_train, n_dev = len(plan.train.indices), len(plan.dev.indices)
        cost = optimizer.projected_cost(n_train, n_dev)
        total = {k: total[k] + cost[k] for k in total}
        rows.append([name, str(n_train), str(n_dev), *(str(cost[k]) for k in total)])
    rows.append(["total", "", "", *(str(v) for v in total.values())])
    headers = ["task", "train", "dev", "harness evaluations", "model calls", "optimizer calls"]
    return f"lm_eval_promptopt: projected cost of the {optimizer.name} searches (upper bounds)\n" + markdown_table(
        headers, rows, numeric_from=1
    )


def metric_value(results: dict[str, Any], name: str, metric: str) -> float | None:
    for section in ("groups", "results"):
        value = results.get(section, {}).get(name, {}).get(metric)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def comparison_rows(
    baseline: dict[str, Any], optimized: dict[str, Any], metrics: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per task and group: the metric on held-out with the initial and final instruction."""
    rows = []
    for name, metric in metrics.items():
        before, after = metric_value(baseline, name, metric), metric_value(optimized, name, metric)
        delta = None if before is None or after is None else after - before
        rows.append({"name": name, "metric": metric, "baseline": before, "optimized": after, "delta": delta})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: | task | metric | baseline | optimized | delta |."""
    cells = [
        [row["name"], row["metric"], fmt(row["baseline"]), fmt(row["optimized"]), fmt(row["delta"], signed=True)]
        for row in rows
    ]
    return markdown_table(["task", "metric", "baseline", "optimized", "delta"], cells, numeric_from=2)


def dev_curve(trajectory_file: str | Path) -> list[float]:
    """The optimize-dev scores of a task's trajectory, in the order they were measured."""
    return [e["score"] for e in read_jsonl(Path(trajectory_file)) if e.get("split") == "dev" and "score" in e]


def dev_plot_labels(optimizer: str) -> dict[str, str]:
    """The dev-score plot's title and axes: what its points are, for this optimizer."""
    from ..optimizers import get_optimizer
    from ..optimizers.base import Optimizer

    try:
        scored = get_optimizer(optimizer).dev_scored
    except PromptOptError:  # an optimizer this install does not have
        scored = Optimizer.dev_scored
    return {
        "title": f"{optimizer}: optimize-dev score of each harness evaluation\n(the initial instruction first, {scored})",
        "xlabel": "harness evaluation on optimize-dev (1: the initial instruction)",
        "ylabel": "dev score (dots: each evaluation; line: best so far)",
    }


def plot_dev_scores(section: dict[str, Any], path: Path) -> Path | None:
    """One line per task: the best optimize-dev score so far after each harness evaluation.
    Nothing is written (None) when no task has a dev score (given prompts are not scored)."""
    curves = {task: dev_curve(outcome["trajectory_file"]) for task, outcome in section["tasks"].items()}
    curves = {task: scores for task, scores in curves.items() if scores}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, scores in curves.items():
        best = [max(scores[: i + 1]) for i in range(len(scores))]
        steps = range(1, len(scores) + 1)
        (line,) = ax.plot(steps, best, drawstyle="steps-post", label=task)
        ax.scatter(steps, scores, s=12, color=line.get_color(), alpha=0.5)
    labels = dev_plot_labels(section["optimizer"])
    ax.set_xlabel(labels["xlabel"])
    ax.set_ylabel(labels["ylabel"])
    ax.set_title(labels["title"], fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def describe(section: dict[str, Any]) -> str:
    """Per task: instruction, dev scores, stop reason, origin and cost."""
    lines = [f"optimizer: {section['optimizer']}  config: {json.dumps(section['optimizer_config'])}"]
    for task, o in section["tasks"].items():
        scores = (
            "n/a" if o["final_dev_score"] is None else f"{o['initial_dev_score']:.4f} -> {o['final_dev_score']:.4f}"
        )
        counters = o.get("details", {}).get("counters") or {}
        cost = f"{o['evaluations']} harness evaluations, {o['wall_time_s']:.1f} s" + "".join(
            f", {k} {v}" for k, v in counters.items()
        )
        lines += [
            f"{task}",
            f"  instruction: {o['final_instruction']!r}",
            f"  dev score: {scores}  ({o['metric']})  stop: {o['stop_reason']}  source: {o.get('source', 'search')}",
            f"  cost: {cost}",
        ]
    return "\n".join(lines)


PER_TASK_INSTRUCTIONS = "one instruction per task: see prompt_optimization.tasks.<task>.final_instruction"


def harness_system_instruction(instructions: dict[str, str]) -> str | None:
    """What lm-eval's own `system_instruction` field says after a run: the instruction every task
    used, if they share one (None if it is empty, as stock lm-eval records no instruction); else
    where each task's is."""
    distinct = set(instructions.values())
    if len(distinct) > 1:
        return PER_TASK_INSTRUCTIONS
    return next(iter(distinct), "") or None


def fill_tracker(tracker: Any, instructions: dict[str, str], model: Any, model_args: Any, model_folder: str) -> None:
    """Fill lm-eval's tracker fields that its results JSON takes from it: `system_instruction`
    (the instruction used, see `harness_system_instruction`), and, where `model_args` names no
    model (lm-eval would then pick a random folder), the model folder of the run directory, so
    the results JSON lands beside it."""
    if tracker is None:
        return
    from lm_eval.utils import hash_string

    from ..harness.lm_eval_compat import model_name

    general = tracker.general_config_tracker
    text = harness_system_instruction(instructions)
    general.system_instruction = text
    general.system_instruction_sha = hash_string(text) if text and text != PER_TASK_INSTRUCTIONS else None
    if not model_name(model_args):
        general.model_name = str(model)
        general.model_name_sanitized = model_folder
