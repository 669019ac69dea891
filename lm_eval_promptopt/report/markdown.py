"""Markdown tables through pytablewriter (lm-eval's choice for its own tables)."""

from __future__ import annotations

from pytablewriter import MarkdownTableWriter, String
from pytablewriter.style import Style


def markdown_table(headers: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """A markdown table of text cells, kept verbatim; the columns from `numeric_from` on are right-aligned."""
    styles = [Style(align="left" if i < numeric_from else "right") for i in range(len(headers))]
    writer = MarkdownTableWriter(
        headers=headers, value_matrix=rows, margin=1, type_hints=[String] * len(headers), column_styles=styles
    )
    return writer.dumps().rstrip("\n")
