"""The leaderboard as one self-contained HTML page: a sortable table and an inline SVG bar chart.

No network assets: the style, the sorting script and the chart are all inside the page.
"""

from __future__ import annotations

from html import escape
from statistics import mean

from .board import Leaderboard, Row, cell_text, column_title, fmt, short_model, source_text

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
    leaves = [c for c in board.columns if c not in board.groups] or board.columns
    points = []
    for row in board.rows:
        cells = [row.cells[c] for c in leaves if c in row.cells]
        optimized = None if row.optimizer == "baseline" else _mean([c.score for c in cells])
        points.append((row.label, _mean([c.baseline for c in cells]), optimized))
    return points


def _short(text: str, width: int = 38) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def bar_chart(board: Leaderboard) -> str:
    """Baseline vs optimized per row (mean over leaf tasks), as inline SVG."""
    points = chart_points(board)
    label_w, bar_h, gap, width = 260, 14, 12, 360
    height = len(points) * (2 * bar_h + gap) + 40
    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 80}" height="{height}" role="img" aria-label="baseline vs optimized per model">']
    y = 10
    for row, (label, baseline, optimized) in zip(board.rows, points):
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 2}" text-anchor="end" font-size="12"><title>{escape(label)}</title>'
            f'{escape(_short(f"{short_model(row.model)} / {row.optimizer}"))}</text>'
            f'<text x="{label_w - 6}" y="{y + 2 * bar_h - 2}" text-anchor="end" font-size="10" fill="#666">{escape(_short(row.settings or "defaults", 44))}</text>'
        )
        for kind, value, color, offset in (("baseline", baseline, "#9aa5b1", 0), ("optimized", optimized, "#2b7bb9", bar_h)):
            if value is None:
                continue
            bar = max(value, 0.0) * width
            parts.append(
                f'<rect class="bar {kind}" data-row="{escape(label)}" data-value="{value:.6f}" x="{label_w}" y="{y + offset}" '
                f'width="{bar:.1f}" height="{bar_h - 2}" fill="{color}"><title>{escape(label)}: {kind} {fmt(value)}</title></rect>'
            )
            parts.append(f'<text x="{label_w + bar + 4}" y="{y + offset + bar_h - 4}" font-size="11">{fmt(value)}</text>')
        y += 2 * bar_h + gap
    parts.append(f'<line x1="{label_w}" y1="4" x2="{label_w}" y2="{y}" stroke="#444"/>')
    parts.append(f'<text x="{label_w}" y="{y + 16}" font-size="11">0</text><text x="{label_w + width}" y="{y + 16}" font-size="11" text-anchor="middle">1</text>')
    legend_x = label_w + width - 170
    parts.append(f'<rect x="{legend_x}" y="{y + 6}" width="10" height="10" fill="#9aa5b1"/><text x="{legend_x + 14}" y="{y + 15}" font-size="11">baseline</text>')
    parts.append(f'<rect x="{legend_x + 80}" y="{y + 6}" width="10" height="10" fill="#2b7bb9"/><text x="{legend_x + 94}" y="{y + 15}" font-size="11">optimized</text>')
    parts.append("</svg>")
    return "\n".join(parts)


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
<h2>Baseline vs optimized (mean over tasks)</h2>
{bar_chart(board)}
<script>{_SCRIPT}</script>
</body>
</html>
"""
