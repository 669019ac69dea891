"""Two optimizers that need no model of their own: `none` and `candidates`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .base import OptimizationResult, Optimizer, Problem
from .registry import register_optimizer


@register_optimizer("none")
class NoSearch(Optimizer):
    """Keeps the initial instruction: the held-out baseline through exactly the same path."""

    def optimize(self, problem: Problem) -> OptimizationResult:
        return OptimizationResult(problem.initial_instruction)


@dataclass(frozen=True)
class CandidatesConfig:
    file: str | None = None
    """A text file with one instruction per line (blank lines ignored)."""
    candidates: str | tuple[str, ...] | None = None
    """Inline instructions separated by `|` (in a JSON `--optimize_args`, also a list of strings)."""

    def __post_init__(self) -> None:
        if (self.file is None) == (self.candidates is None):
            raise ValueError("candidates needs exactly one of file=PATH or candidates='A|B|C'")
        if self.file is not None and not Path(self.file).is_file():
            raise ValueError(f"file={self.file!r} does not exist")
        if not self.instructions():
            raise ValueError("the candidate list is empty")

    def instructions(self) -> list[str]:
        if isinstance(self.candidates, tuple):
            lines = list(self.candidates)
        else:
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
    dev_scored = "then each candidate, in the order given"

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        evals = 1 + len(self.config.instructions())
        return {"harness_evaluations": evals, "model_calls": evals * n_dev, "optimizer_calls": 0}

    def optimize(self, problem: Problem) -> OptimizationResult:
        """One step per candidate; a resumed search re-reads the scores it already has."""
        scored, reason = [], "completed"
        texts = self.config.instructions()
        done = (problem.log.resumed or {}).get("scored", 0)
        for i, text in enumerate(tqdm(texts, desc=f"candidates {problem.task_name}", unit="step", leave=False)):
            scored.append((problem.score(text, "dev"), -i, text))
            if i < done:  # scored before the interruption (its score is replayed from the trajectory)
                continue
            stop = problem.log.step_done(scored[-1][0], {"scored": len(scored)})
            if stop and i + 1 < len(texts):
                reason = stop
                break
        _, _, best = max(scored)
        return OptimizationResult(best, reason, details={"dev_scores": {t: s for s, _, t in scored}})
