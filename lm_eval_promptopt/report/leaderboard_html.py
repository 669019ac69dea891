"""The leaderboard as one self-contained HTML page (the jinja2 template templates/leaderboard.html.j2):
a sortable table and an inline SVG bar chart.

No network assets: the style, the sorting script and the chart are all inside the page.
"""

from __future__ import annotations

import functools
from pathlib import Path
from statistics import mean
from typing import Any

import jinja2

from .board import Cell, Leaderboard, Row, cell_text, column_title, fmt, short_model, source_text


LABEL_H, BAR_H, GAP, WIDTH = 16, 14, 12, 360
"""The chart's layout: a row's label line, one bar, the space after a row, the length of a score of 1."""


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return env.get_template("leaderboard.html.j2")


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def chart_points(board: Leaderboard) -> list[tuple[str, float | None, float | None]]:
    """Per row: (label, mean baseline, mean optimized) over the leaf tasks (groups would count twice)."""
    points = []
    for row, cells in zip(board.rows, _chart_cells(board)):
        optimized = None if row.optimizer == "baseline" else _mean([c.score for c in cells])
        points.append((row.label, _mean([c.baseline for c in cells]), optimized))
    return points


def _chart_cells(board: Leaderboard) -> list[list[Cell]]:
    leaves = [c for c in board.columns if c not in board.groups] or board.columns
    return [[row.cells[c] for c in leaves if c in row.cells] for row in board.rows]


def _chart(board: Leaderboard) -> dict[str, Any]:
    """Baseline vs optimized per row (mean over its leaf tasks), laid out for the page's SVG: each
    row's label on its own line above its bars, whole and left-aligned, so no label is cut; where
    rows average over different numbers of tasks, each label says over how many."""
    points = chart_points(board)
    counts = [len(cells) for cells in _chart_cells(board)]
    uneven = len(set(counts)) > 1
    rows, y = [], 10
    for (label, baseline, optimized), count in zip(points, counts):
        over = f" (mean of {count} task{'s' if count != 1 else ''})" if uneven else ""
        group = {"label": label + over, "row": label, "label_y": y + LABEL_H - 4, "bars": []}
        y += LABEL_H
        for kind, value, color, offset in (
            ("baseline", baseline, "#9aa5b1", 0),
            ("optimized", optimized, "#2b7bb9", BAR_H),
        ):
            if value is not None:
                group["bars"].append(
                    {
                        "kind": kind,
                        "value": value,
                        "color": color,
                        "y": y + offset,
                        "length": max(value, 0.0) * WIDTH,
                        "text": fmt(value),
                    }
                )
        rows.append(group)
        y += 2 * BAR_H + GAP
    height = len(points) * (LABEL_H + 2 * BAR_H + GAP) + 40
    return {
        "heading": chart_heading(board),
        "rows": rows,
        "bottom": y,
        "width": WIDTH,
        "height": height,
        "bar_h": BAR_H,
    }


def chart_heading(board: Leaderboard) -> str:
    """The chart's heading; it says so where rows average over different numbers of tasks."""
    counts = {len(cells) for cells in _chart_cells(board)}
    if len(counts) > 1:
        return "Baseline vs optimized (mean over each row's tasks; rows have different numbers of tasks, so compare with care)"
    return f"Baseline vs optimized (mean over {next(iter(counts), 0)} tasks per row)"


def _row(board: Leaderboard, row: Row) -> dict[str, Any]:
    cells = []
    for column in board.columns:
        cell = row.cells.get(column)
        trend = "" if cell is None or cell.delta is None or cell.delta == 0 else (" up" if cell.delta > 0 else " down")
        cells.append({
            "column": column,
            "value": "" if cell is None or cell.score is None else f"{cell.score:.6f}",
            "trend": trend,
            "title": cell.instruction if cell is not None else "",
            "text": cell_text(cell),
        })  # fmt: skip
    return {
        "texts": [short_model(row.model), row.optimizer, row.settings or "defaults", source_text(row.sources)],
        "cells": cells,
    }


def to_html(board: Leaderboard) -> str:
    columns = [{"title": column_title(board, c), "mixed": c in board.mixed} for c in board.columns]
    return _template().render(
        columns=columns, rows=[_row(board, row) for row in board.rows], flags=board.flags, chart=_chart(board)
    )
