"""The leaderboard as one self-contained HTML page: a sortable table and an inline SVG bar chart.

No network assets: the style, the sorting script and the chart are all inside the page.
"""

from __future__ import annotations

from html import escape
from statistics import mean

from .board import Cell, Leaderboard, Row, cell_text, column_title, fmt, short_model, source_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
td.text, th.text { text-align: left; }
td.up { background: #e6f4e6; } td.down { background: #fbe4e4; }
th.mixed { background: #fff1c2; }
ul.flags li { color: #8a5a00; }
"""

# Click a header to sort by it (numbers by their data-value, text otherwise); click again to reverse.
_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, index) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var descending = th.dataset.order !== 'desc';
    th.dataset.order = descending ? 'desc' : 'asc';
    function key(row) {
      var cell = row.cells[index];
      var value = cell.dataset.value;
      return value === undefined || value === '' ? cell.textContent : parseFloat(value);
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


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


def bar_chart(board: Leaderboard) -> str:
    """Baseline vs optimized per row (mean over its leaf tasks), as inline SVG: each row's label on
    its own line above its bars, whole and left-aligned, so no label is cut; where rows average over
    different numbers of tasks, each label says over how many."""
    points = chart_points(board)
    counts = [len(cells) for cells in _chart_cells(board)]
    uneven = len(set(counts)) > 1
    label_h, bar_h, gap, width = 16, 14, 12, 360
    height = len(points) * (label_h + 2 * bar_h + gap) + 40
    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{width + 80}" height="{height}" style="overflow: visible" '
             'role="img" aria-label="baseline vs optimized per model">']  # fmt: skip
    y = 10
    for row, (label, baseline, optimized), count in zip(board.rows, points, counts):
        over = f" (mean of {count} task{'s' if count != 1 else ''})" if uneven else ""
        parts.append(f'<text class="label" x="0" y="{y + label_h - 4}" font-size="12">{escape(label + over)}</text>')
        y += label_h
        for kind, value, color, offset in (("baseline", baseline, "#9aa5b1", 0), ("optimized", optimized, "#2b7bb9", bar_h)):
            if value is None:
                continue
            bar = max(value, 0.0) * width
            parts.append(
                f'<rect class="bar {kind}" data-row="{escape(label)}" data-value="{value:.6f}" x="0" y="{y + offset}" '
                f'width="{bar:.1f}" height="{bar_h - 2}" fill="{color}"><title>{escape(label)}: {kind} {fmt(value)}</title></rect>'
            )
            parts.append(f'<text x="{bar + 4}" y="{y + offset + bar_h - 4}" font-size="11">{fmt(value)}</text>')
        y += 2 * bar_h + gap
    parts.append(f'<line x1="0" y1="4" x2="0" y2="{y}" stroke="#444"/>')
    parts.append(f'<text x="0" y="{y + 16}" font-size="11">0</text><text x="{width}" y="{y + 16}" font-size="11" text-anchor="middle">1</text>')
    legend_x = width - 170
    parts.append(f'<rect x="{legend_x}" y="{y + 6}" width="10" height="10" fill="#9aa5b1"/><text x="{legend_x + 14}" y="{y + 15}" font-size="11">baseline</text>')
    parts.append(f'<rect x="{legend_x + 80}" y="{y + 6}" width="10" height="10" fill="#2b7bb9"/><text x="{legend_x + 94}" y="{y + 15}" font-size="11">optimized</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def chart_heading(board: Leaderboard) -> str:
    """The chart's heading; it says so where rows average over different numbers of tasks."""
    counts = {len(cells) for cells in _chart_cells(board)}
    if len(counts) > 1:
        return "Baseline vs optimized (mean over each row's tasks; rows have different numbers of tasks, so compare with care)"
    return f"Baseline vs optimized (mean over {next(iter(counts), 0)} tasks per row)"


def _row_cells(board: Leaderboard, row: Row) -> list[str]:
    out = [
        f'<td class="text">{escape(short_model(row.model))}</td>',
        f'<td class="text">{escape(row.optimizer)}</td>',
        f'<td class="text">{escape(row.settings or "defaults")}</td>',
        f'<td class="text">{escape(source_text(row.sources))}</td>',
    ]
    for column in board.columns:
        cell = row.cells.get(column)
        value = "" if cell is None or cell.score is None else f"{cell.score:.6f}"
        trend = "" if cell is None or cell.delta is None or cell.delta == 0 else (" up" if cell.delta > 0 else " down")
        title = "" if cell is None or not cell.instruction else f' title="{escape(cell.instruction)}"'
        out.append(f'<td class="score{trend}" data-column="{escape(column)}" data-value="{value}"{title}>{escape(cell_text(cell))}</td>')
    return out


def to_html(board: Leaderboard) -> str:
    heads = [f'<th class="text">{name}</th>' for name in ("model", "optimizer", "settings", "source")]
    heads += [f'<th class="{"mixed" if c in board.mixed else ""}">{escape(column_title(board, c))}</th>' for c in board.columns]
    body = "\n".join("<tr>" + "".join(_row_cells(board, row)) + "</tr>" for row in board.rows)
    flags = "".join(f"<li>{escape(flag)}</li>" for flag in board.flags)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>lm_eval_promptopt leaderboard</title><style>{_STYLE}</style></head>
<body>
<h1>Leaderboard</h1>
<p>Held-out score ± stderr per model and task; with a baseline (the initial instruction), its score and the difference.
Click a column header to sort.</p>
<table id="leaderboard" class="sortable">
<thead><tr>{"".join(heads)}</tr></thead>
<tbody>
{body}
</tbody>
</table>
{f'<h2>Flags</h2><ul class="flags">{flags}</ul>' if flags else ""}
<h2>{escape(chart_heading(board))}</h2>
{bar_chart(board)}
<script>{_SCRIPT}</script>
</body>
</html>
"""
