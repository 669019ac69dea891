"""Stop conditions: each a small object that names why a search stops, combined with `|`.

A condition looks at the search's `Progress` between steps (a step that has begun is finished)
and returns its reason (`max_evals`, `time_limit`, `patience`, `max_optimizer_tokens`) or None.
`AnyOf` stops at the first condition that fires, in the order they were combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Progress:
    """Where a search stands after a completed step."""

    steps: int
    evaluations: int
    """Harness evaluations so far (an interrupted process's included)."""
    elapsed_s: float
    """Seconds of search so far, summed over resumed processes."""
    since_best: int
    """Completed steps since the best step score."""
    tokens: int = 0
    """Optimizer-LLM tokens so far (prompt + completion; 0 without an optimizer LLM)."""


class StopCondition(Protocol):
    def reason(self, progress: Progress) -> str | None:
        """Why the search stops now, or None."""
        ...


class Combinable:
    """`a | b`: stop when either does."""

    def __or__(self, other: StopCondition) -> AnyOf:
        return AnyOf((self, *(other.conditions if isinstance(other, AnyOf) else (other,))))


@dataclass(frozen=True)
class MaxEvals(Combinable):
    """At most `limit` harness evaluations."""

    limit: int

    def reason(self, progress: Progress) -> str | None:
        return "max_evals" if progress.evaluations >= self.limit else None


@dataclass(frozen=True)
class TimeLimit(Combinable):
    """At most `seconds` of search."""

    seconds: float

    def reason(self, progress: Progress) -> str | None:
        return "time_limit" if progress.elapsed_s >= self.seconds else None


@dataclass(frozen=True)
class Patience(Combinable):
    """At most `steps` completed steps without a better step score."""

    steps: int

    def reason(self, progress: Progress) -> str | None:
        return "patience" if progress.since_best >= self.steps else None


@dataclass(frozen=True)
class MaxTokens(Combinable):
    """At most `limit` optimizer-LLM tokens (GPO's `max_optimizer_tokens`)."""

    limit: int

    def reason(self, progress: Progress) -> str | None:
        return "max_optimizer_tokens" if progress.tokens >= self.limit else None


@dataclass(frozen=True)
class AnyOf:
    """Stops when any of `conditions` does (the first one's reason); never when empty."""

    conditions: tuple[StopCondition, ...] = ()

    def reason(self, progress: Progress) -> str | None:
        return next((r for c in self.conditions if (r := c.reason(progress))), None)

    def __or__(self, other: StopCondition) -> AnyOf:
        return AnyOf((*self.conditions, other))

    def evaluations_left(self, evaluations: int) -> int | None:
        """Harness evaluations left under the tightest `MaxEvals` (None: no such limit)."""
        limits = [c.limit for c in self.conditions if isinstance(c, MaxEvals)]
        return min(limits) - evaluations if limits else None


def budget(max_evals: int | None, time_limit: float | None, patience: int | None) -> AnyOf:
    """The stop conditions every optimizer shares (`--optimize_args max_evals, time_limit,
    patience`; None: no such limit), checked in that order."""
    conditions: list[StopCondition] = []
    if max_evals is not None:
        conditions.append(MaxEvals(max_evals))
    if time_limit is not None:
        conditions.append(TimeLimit(time_limit))
    if patience is not None:
        conditions.append(Patience(patience))
    return AnyOf(tuple(conditions))
