"""A leaderboard across runs: results JSONs in, one models x tasks table out (md, csv, json, html).

Each results JSON is one run of one model. Its row is the model, the optimizer and the settings
that differ from the defaults; its cells are the held-out scores (with the stderr lm-eval
reports), the baseline (with `compare_baseline=true`) and the difference. Plain lm-eval results
(no `prompt_optimization` section) are baseline-only rows. Cells of one column that were
measured under different split plans, seeds or metrics are flagged, never silently mixed.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PromptOptError
from ..run.instruction_cache import digest
from .board import UNCHECKED_MARK, Cell, Leaderboard, Row, Run, cell_text, column_title, fmt, short_model, source_text
from .leaderboard_html import to_html
from .markdown import markdown_table


UNCHECKED = (
    "its given instruction's source records no split plan, so its held-out docs may include docs the instruction "
    "was optimized on (pass the source run's results JSON or prompt_optimization.json as --optimized_prompts)"
)
PLAIN = "baseline"
"""The optimizer label of plain lm-eval results (no prompt optimization section)."""
_UNSHOWN_OPTIONS = {"refresh", "compare_baseline"}  # they change no score


DATED = re.compile(r"_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(\.\d+)?\.json$")
"""The end of a results JSON's name as lm-eval's tracker writes it: `_<date>.json` after `results`
or, for `--output_path NAME.json`, after `NAME`."""


def find_results(paths: list[Path]) -> list[Path]:
    """The results JSONs given, every `results_*.json` or `*_<date>.json` under the folders given, and for a
    `NAME.json` that does not exist, the `NAME_<date>.json` files lm-eval wrote for that
    `--output_path`."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.json") if p.name.startswith("results_") or DATED.search(p.name))
        elif path.is_file():
            found.append(path)
        elif path.suffix == ".json" and (
            dated := sorted(
                p for p in path.parent.glob(f"{glob.escape(path.stem)}_*.json") if DATED.match(p.name[len(path.stem) :])
            )
        ):
            found += dated
        else:
            raise PromptOptError(f"leaderboard: {path} does not exist")
    if not found:
        raise PromptOptError(
            f"leaderboard: no results JSON (results_<date>.json, or NAME_<date>.json from --output_path NAME.json) under {', '.join(map(str, paths))}"
        )
    return list(dict.fromkeys(p.resolve() for p in found))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first_metric(entry: dict[str, Any]) -> str | None:
    for key, value in entry.items():
        if "," in key and "_stderr," not in key and _number(value) is not None:
            return key
    return None


def _stderr(entry: dict[str, Any], metric: str) -> float | None:
    name, _, filt = metric.partition(",")
    return _number(entry.get(f"{name}_stderr,{filt}"))


def _non_default(values: dict[str, Any], cls: type | None) -> dict[str, Any]:
    """The settings that differ from the dataclass defaults (all of them when `cls` is unknown)."""
    if cls is None:
        return values
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}


def _settings(section: dict[str, Any]) -> str:
    from ..options import RunOptions

    try:
        from ..optimizers import get_optimizer

        config_class = get_optimizer(section["optimizer"]).config_class
    except Exception:  # an optimizer this install does not have: show its whole config
        config_class = None
    shown = {**_non_default(section.get("optimizer_config") or {}, config_class),
             **_non_default(section.get("options") or {}, RunOptions)}  # fmt: skip
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items()) if k not in _UNSHOWN_OPTIONS)


def _shape_problem(data: Any) -> str | None:
    """What keeps valid JSON from being read as a results JSON (None: nothing)."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    results = data.get("results")
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        return "its `results` is not an object of task -> metrics"
    section = data.get("prompt_optimization")
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("optimizer"), str):
        return "its `prompt_optimization` section names no `optimizer`"
    tasks = section.get("tasks")
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        return "its `prompt_optimization.tasks` is not an object of task -> outcome"
    if not isinstance(section.get("baseline_vs_optimized") or [], list) or not all(
        isinstance(r, dict) and "name" in r for r in section.get("baseline_vs_optimized") or []
    ):
        return "its `prompt_optimization.baseline_vs_optimized` is not a list of rows"
    return None


def load_run(path: Path) -> Run:
    """Flatten one results JSON (ours, or plain lm-eval's) into a `Run`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PromptOptError(
            f"leaderboard: {path} is not an lm-eval results JSON ({type(err).__name__}: {err})"
        ) from None
    problem = _shape_problem(data)
    if problem:
        raise PromptOptError(
            f"leaderboard: {path} is not an lm-eval results JSON: {problem}; pass the results_<date>.json lm-eval wrote"
        )
    results = data["results"]
    config = data.get("config") or {}
    model = (
        data.get("model_name")
        or str((config.get("model_args") or {}).get("pretrained", ""))
        or str(config.get("model"))
    )
    groups = set(data.get("groups") or {})
    counts = {name: (info or {}).get("effective") for name, info in (data.get("n-samples") or {}).items()}
    section = data.get("prompt_optimization")
    if section is None:
        seeds = {
            "split_and_search": None,
            **{k: config.get(f"{k}_seed") for k in ("random", "numpy", "torch", "fewshot")},
        }
        run = Run(path, model, PLAIN, "", _number(data.get("date")) or 0.0, {"plain lm-eval": 1})
        plans = {name: "whole split" for name in results}
    else:
        seeds = section.get("seeds") or {}
        tasks = section.get("tasks") or {}
        run = Run(path, model, section["optimizer"], _settings(section), _number(data.get("date")) or 0.0,
                  dict(Counter(t.get("source", "search") for t in tasks.values())))  # fmt: skip
        plans = {name: digest(task.get("plan")) for name, task in tasks.items()}
        baseline_rows = {row["name"]: row for row in section.get("baseline_vs_optimized") or []}
    children = data.get("group_subtasks") or {}
    for name, entry in results.items():
        outcome = section["tasks"].get(name, {}) if section else {}
        compared = baseline_rows.get(name, {}) if section else {}
        metric = outcome.get("metric") or compared.get("metric") or _first_metric(entry)
        if metric is None:
            continue
        score = _number(entry.get(metric))
        members = _leaves(name, children) if name in groups else [name]
        plan = digest({m: [plans.get(m), counts.get(m)] for m in members})
        unchecked = [m for m in members if _transfer_check(section, m) == "unchecked"] if section else []
        cell = Cell(metric, score, _stderr(entry, metric), docs=sum(counts.get(m) or 0 for m in members) or None,
                    instruction=outcome.get("final_instruction"), plan=plan, seeds=digest(seeds),
                    unchecked_source=unchecked)  # fmt: skip
        if section is None:
            cell.baseline = score
        elif compared:
            cell.baseline, cell.delta = _number(compared.get("baseline")), _number(compared.get("delta"))
        run.cells[name] = cell
    run.groups = groups
    return run


def _transfer_check(section: dict[str, Any], task: str) -> str | None:
    """What the `--optimized_prompts` check found for the task (None: a search, or no check recorded)."""
    check = ((section["tasks"].get(task) or {}).get("details") or {}).get("transfer_check")
    return check.get("check") if isinstance(check, dict) else None


def _leaves(name: str, children: dict[str, list[str]]) -> list[str]:
    if name not in children:
        return [name]
    return [leaf for child in children[name] for leaf in _leaves(child, children)]


_ASPECTS = {"split plan": "plan", "seeds": "seeds", "metric": "metric"}


def build(runs: list[Run]) -> Leaderboard:
    """Merge runs into rows (one per model, optimizer and settings) and flag mixed columns."""
    rows: dict[tuple[str, str, str], Row] = {}
    flags: list[str] = []
    dates: dict[tuple[tuple[str, str, str], str], Run] = {}
    columns: list[str] = []
    for run in sorted(runs, key=lambda r: r.date):
        row = rows.setdefault(run.key, Row(*run.key, cells={}, sources=Counter(), files=[]))
        row.files.append(str(run.path))
        row.sources.update(run.sources)
        for name, cell in run.cells.items():
            if name in row.cells:
                flags.append(
                    f"{name}: {row.label}: {dates[(run.key, name)].path} is superseded by the newer {run.path}"
                )
            row.cells[name] = cell
            dates[(run.key, name)] = run
            if cell.unchecked_source and name not in run.groups:
                flags.append(f"{name}: {row.label}: {UNCHECKED} ({run.path})")
            if name not in columns:
                columns.append(name)
    groups = set().union(*(r.groups for r in runs)) if runs else set()
    leaves = [c for c in columns if c not in groups]
    columns = leaves + [c for c in columns if c in groups]
    ordered = sorted(rows.values(), key=lambda r: (short_model(r.model), r.optimizer != PLAIN, r.optimizer, r.settings))
    mixed: dict[str, list[str]] = {}
    for column in columns:
        present = [(row, row.cells[column]) for row in ordered if column in row.cells]
        for aspect, attr in _ASPECTS.items():
            variants: dict[str, list[str]] = {}
            for row, cell in present:
                variants.setdefault(getattr(cell, attr), []).append(row.label)
            if len(variants) > 1:
                mixed.setdefault(column, []).append(aspect)
                sides = " vs ".join("[" + ", ".join(labels) + "]" for labels in variants.values())
                flags.append(f"{column}: rows differ in {aspect}: {sides}; do not compare them directly")
    return Leaderboard(columns, groups, ordered, flags, mixed)


def leaderboard(paths: list[Path]) -> Leaderboard:
    runs = []
    for path in find_results(paths):
        try:
            runs.append(load_run(path))
        except (AttributeError, KeyError, TypeError) as err:  # a field of another shape than lm-eval writes
            raise PromptOptError(
                f"leaderboard: {path} is not an lm-eval results JSON of the usual shape ({type(err).__name__}: {err})"
            ) from None
    return build(runs)


# --------------------------------------------------------------------------- formats


def to_markdown(board: Leaderboard) -> str:
    """The scores table, then where each row came from (source, files), then the flags."""

    scores = [
        [
            short_model(row.model),
            row.optimizer,
            row.settings or "defaults",
            *(cell_text(row.cells.get(c)) for c in board.columns),
        ]
        for row in board.rows
    ]
    out = [
        markdown_table(
            ["model", "optimizer", "settings", *(column_title(board, c) for c in board.columns)], scores, numeric_from=3
        )
    ]
    out += [
        "",
        "Cells: held-out score ± stderr (base: the initial instruction's held-out score, then the difference)."
        + (
            f" {UNCHECKED_MARK}: unchecked source (see the flags)."
            if any(c.unchecked_source for r in board.rows for c in r.cells.values())
            else ""
        ),
        "",
    ]
    origins = [
        [
            short_model(row.model),
            row.optimizer,
            row.settings or "defaults",
            source_text(row.sources),
            "<br>".join(row.files),
        ]
        for row in board.rows
    ]
    out.append(markdown_table(["model", "optimizer", "settings", "source", "results"], origins, numeric_from=5))
    if board.flags:
        out += ["", "Flags:", *(f"- {flag}" for flag in board.flags)]
    return "\n".join(out) + "\n"


def scores_table(markdown: str) -> str:
    """The first table of `to_markdown`'s output (what two runs with the same scores share)."""
    return markdown.split("\n\n", 1)[0]


def to_records(board: Leaderboard) -> list[dict[str, Any]]:
    """One record per row and column (the csv rows, and the json's `cells`)."""
    records = []
    for row in board.rows:
        for column in board.columns:
            cell = row.cells.get(column)
            if cell is None:
                continue
            records.append({
                "model": row.model, "optimizer": row.optimizer, "settings": row.settings,
                "source": source_text(row.sources), "task": column, "group": column in board.groups,
                "metric": cell.metric, "score": cell.score, "stderr": cell.stderr, "baseline": cell.baseline,
                "delta": cell.delta, "docs": cell.docs, "instruction": cell.instruction,
                "flagged": ";".join(board.mixed.get(column, []) + (["unchecked source"] if cell.unchecked_source else [])),
            })  # fmt: skip
    return records


def to_csv(board: Leaderboard) -> str:
    buffer = io.StringIO()
    records = to_records(board)
    fields = list(records[0]) if records else ["model", "task"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buffer.getvalue()


def to_json(board: Leaderboard) -> str:
    data = {
        "columns": board.columns,
        "groups": sorted(board.groups),
        "rows": [
            {
                "model": row.model,
                "optimizer": row.optimizer,
                "settings": row.settings,
                "sources": dict(row.sources),
                "files": row.files,
                "cells": {name: dataclasses.asdict(cell) for name, cell in row.cells.items()},
            }
            for row in board.rows
        ],
        "mixed": board.mixed,
        "flags": board.flags,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(board: Leaderboard, form: str) -> str:
    return {"md": to_markdown, "csv": to_csv, "json": to_json, "html": to_html}[form](board)


# --------------------------------------------------------------------------- CI gates


def parse_threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        number = float(value)
    except ValueError:
        raise PromptOptError(f"--fail-under takes TASK=VALUE (e.g. bbh=0.45), got {text!r}") from None
    if not math.isfinite(number):
        raise PromptOptError(f"--fail-under {text}: no score is under {value}; give a finite VALUE (e.g. {name}=0.45)")
    return name, number


@dataclass(frozen=True)
class Tolerance:
    """How far under its baseline a score may be before --fail-on-regression fails it."""

    value: float
    in_stderr: bool
    """True: `value` counts the optimized score's stderr (lm-eval's); False: score points."""

    def allowed(self, cell: Cell) -> float:
        return self.value * (cell.stderr or 0.0) if self.in_stderr else self.value

    def __str__(self) -> str:
        return f"{self.value:g} stderr" if self.in_stderr else f"{self.value:g}"


FLOAT_NOISE = 1e-9
"""Differences this small are float arithmetic, never a regression."""


def parse_tolerance(text: str) -> Tolerance:
    """`2se` (two stderrs of the optimized score) or `0.01` (score points)."""
    in_stderr = text.endswith("se")
    try:
        value = float(text[:-2] if in_stderr else text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise PromptOptError(
            f"--regression-tolerance takes Nse (N stderrs, e.g. 1se) or score points (e.g. 0.01), at least 0; got {text!r}"
        )
    return Tolerance(value, in_stderr)


def gate(board: Leaderboard, fail_under: list[tuple[str, float]], fail_on_regression: bool,
         tolerance: Tolerance = Tolerance(1.0, True), require_baseline: bool = False) -> tuple[list[str], list[str]]:  # fmt: skip
    """Why CI should fail (scores under a threshold; with `fail_on_regression`, scores more than
    `tolerance` below their baseline; with `require_baseline`, optimized rows without one), and
    notes (with `fail_on_regression`: the optimized rows it could not check, having no baseline)."""
    problems, notes = [], []
    for name, threshold in fail_under:
        cells = [(row, row.cells[name]) for row in board.rows if name in row.cells]
        if not cells:
            problems.append(f"--fail-under {name}={threshold}: no run has {name!r}")
        for row, cell in cells:
            if cell.score is None or cell.score < threshold:
                problems.append(f"{name}: {row.label} scores {fmt(cell.score)}, under {threshold}")
    for row in board.rows:
        if fail_on_regression:
            for name, cell in row.cells.items():
                allowed = tolerance.allowed(cell)
                if cell.delta is not None and cell.delta < -(allowed + FLOAT_NOISE):
                    problems.append(f"{name}: {row.label} regressed: {fmt(cell.baseline)} -> {fmt(cell.score)} "
                                    f"({fmt(cell.delta, signed=True)}, beyond the tolerance {tolerance} = {allowed:.4f})")  # fmt: skip
        unchecked = [name for name, cell in row.cells.items() if cell.delta is None] if row.optimizer != PLAIN else []
        if unchecked and require_baseline:
            problems.append(
                f"{row.label} has no baseline for {', '.join(unchecked)} (rerun with --optimize_args compare_baseline=true)"
            )
        elif unchecked and fail_on_regression:
            notes.append(f"{row.label} has no baseline for {', '.join(unchecked)}: not checked for regression "
                         "(compare_baseline=true measures one; --require-baseline fails such rows)")  # fmt: skip
    return problems, notes
