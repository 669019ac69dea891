"""What a run writes down: trajectories, the results section, the baseline-vs-optimized table."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written file), with the mode the umask
    gives any new file (a shared cache stays shared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None if they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        return "a file, not a folder" if folder.is_file() else (err.strerror or str(err))
    return None


class Trajectory:
    """Every candidate a search scored, appended to `<run_dir>/trajectories/<task>.jsonl`.

    With `resume`, the entries already in the file are kept (a torn last line is dropped) and
    new ones follow them; otherwise the file starts empty.
    """

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, Any]] = []
        if resume and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    break  # written up to a kill
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries), encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        entry = {"index": len(self.entries), **entry}
        self.entries.append(entry)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


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

    def num(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.4f}" if signed else f"{value:.4f}"

    lines = [
        "| task | metric | baseline | optimized | delta |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['metric']} | {num(row['baseline'])} | "
            f"{num(row['optimized'])} | {num(row['delta'], signed=True)} |"
        )
    return "\n".join(lines)


def dev_curve(trajectory_file: str | Path) -> list[float]:
    """The optimize-dev scores of a task's trajectory, in the order they were measured."""
    path = Path(trajectory_file)
    if not path.exists():
        return []
    entries = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [e["score"] for e in entries if e.get("split") == "dev" and "score" in e]


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
    ax.set_xlabel("harness evaluation on optimize-dev (in search order)")
    ax.set_ylabel("dev score (dots: each candidate; line: best so far)")
    ax.set_title(f"{section['optimizer']}: optimize-dev score per step")
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
        scores = "n/a" if o["final_dev_score"] is None else f"{o['initial_dev_score']:.4f} -> {o['final_dev_score']:.4f}"
        counters = o.get("details", {}).get("counters") or {}
        cost = f"{o['evaluations']} harness evaluations, {o['wall_time_s']:.1f} s" + "".join(f", {k} {v}" for k, v in counters.items())
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
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.utils import hash_string

    general = tracker.general_config_tracker
    text = harness_system_instruction(instructions)
    general.system_instruction = text
    general.system_instruction_sha = hash_string(text) if text and text != PER_TASK_INSTRUCTIONS else None
    if not GeneralConfigTracker._get_model_name(model_args):
        general.model_name = str(model)
        general.model_name_sanitized = model_folder
