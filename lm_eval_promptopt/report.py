"""What a run writes down: trajectories, the results section, the baseline-vs-optimized table."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


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


def plot_dev_scores(section: dict[str, Any], path: Path) -> Path:
    """One line per task: the best optimize-dev score so far after each harness evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, outcome in section["tasks"].items():
        scores = dev_curve(outcome["trajectory_file"])
        if not scores:
            continue
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
