"""Two optimizers that need no model of their own: `none` and `candidates`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import OptimizationResult, Optimizer, Problem, register_optimizer


@register_optimizer("none")
class KeepInitial(Optimizer):
    """Keeps the initial instruction: the held-out baseline through exactly the same path."""

    def optimize(self, problem: Problem) -> OptimizationResult:
        return OptimizationResult(problem.initial_instruction)


@dataclass(frozen=True)
class CandidatesConfig:
    file: str | None = None
    """A text file with one instruction per line (blank lines ignored)."""
    candidates: str | None = None
    """Inline instructions separated by `|`."""

    def __post_init__(self) -> None:
        if (self.file is None) == (self.candidates is None):
            raise ValueError("candidates needs exactly one of file=PATH or candidates='A|B|C'")
        if self.file is not None and not Path(self.file).is_file():
            raise ValueError(f"file={self.file!r} does not exist")
        if not self.instructions():
            raise ValueError("the candidate list is empty")

    def instructions(self) -> list[str]:
        text = Path(self.file).read_text(encoding="utf-8") if self.file else self.candidates or ""
        lines = text.splitlines() if self.file else text.split("|")
        unique: list[str] = []
        for line in (line.strip() for line in lines):
            if line and line not in unique:
                unique.append(line)
        return unique


@register_optimizer("candidates")
class BestCandidate(Optimizer):
    """Scores each user-supplied instruction on optimize-dev and keeps the best (first on ties)."""

    config_class = CandidatesConfig

    def optimize(self, problem: Problem) -> OptimizationResult:
        scored = [(problem.score(text, "dev"), -i, text) for i, text in enumerate(self.config.instructions())]
        best_score, _, best = max(scored)
        return OptimizationResult(best, details={"dev_scores": {t: s for s, _, t in scored}})
