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
    """Every candidate a search scored, appended to `<run_dir>/trajectories/<task>.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        self.entries: list[dict[str, Any]] = []

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
