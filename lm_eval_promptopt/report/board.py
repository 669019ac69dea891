"""A leaderboard's data: its rows of cells (one per task or group of a run) and how a cell reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


UNCHECKED_MARK = "[unchecked source]"
"""Marks a cell whose given instruction's source could not be checked against its held-out docs."""


@dataclass
class Cell:
    """One task or group of one run: held-out score, baseline, difference, and what it was measured under."""

    metric: str
    score: float | None
    stderr: float | None = None
    baseline: float | None = None
    delta: float | None = None
    docs: int | None = None
    instruction: str | None = None
    plan: str = ""
    """Digest of the split plan and the number of docs scored (plain runs: the whole split)."""
    seeds: str = ""
    unchecked_source: list[str] = field(default_factory=list)
    """The tasks whose given instruction could not be checked against this run's held-out docs."""


@dataclass
class Run:
    """One results JSON, flattened."""

    path: Path
    model: str
    optimizer: str
    settings: str
    date: float
    sources: dict[str, int] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.optimizer, self.settings


@dataclass
class Row:
    model: str
    optimizer: str
    settings: str
    cells: dict[str, Cell]
    sources: dict[str, int]
    files: list[str]

    @property
    def label(self) -> str:
        return f"{short_model(self.model)} / {self.optimizer}" + (f" ({self.settings})" if self.settings else "")


@dataclass
class Leaderboard:
    columns: list[str]
    groups: set[str]
    rows: list[Row]
    flags: list[str]
    mixed: dict[str, list[str]]
    """column -> what its rows disagree in (`split plan`, `seeds`, `metric`)."""


def short_model(model: str) -> str:
    """A model path's last two parts (`org/name`), a name as it is."""
    parts = [p for p in model.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 2 else model


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    text = fmt(cell.score) + (f" ± {cell.stderr:.4f}" if cell.stderr is not None else "")
    if cell.delta is not None:
        text += f" (base {fmt(cell.baseline)}, {fmt(cell.delta, signed=True)})"
    return text + (f" {UNCHECKED_MARK}" if cell.unchecked_source else "")


def column_title(board: Leaderboard, column: str) -> str:
    return column + (" (group)" if column in board.groups else "") + (" ⚠" if column in board.mixed else "")


def source_text(sources: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" if len(sources) > 1 else name for name, count in sorted(sources.items()))
