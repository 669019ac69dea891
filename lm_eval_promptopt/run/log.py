"""Budgets, stop conditions and per-step checkpoints of one task's search.

An optimizer calls `SearchControl.step_done` after every completed step. That call writes the
step's state atomically to ``<run_dir>/state/<task>.json`` (with the search's own counters), and
returns why the search must stop now, if it must: ``max_evals`` (harness evaluations),
``time_limit`` (seconds of search, summed over resumed processes) or ``patience`` (steps without
a better step score). Limits are checked between steps: a step that has begun is finished.

A rerun of the same command finds the checkpoint (`resumed`) and continues after the last
completed step; what the killed process paid for inside an unfinished step (harness
evaluations, optimizer-LLM calls) is in the task's trajectory, and is replayed from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import write_json


@dataclass(frozen=True)
class Budget:
    """Limits shared by every optimizer (None: no limit)."""

    max_evals: int | None = None
    time_limit: float | None = None
    patience: int | None = None


class Checkpoint:
    """One task's search state, rewritten atomically after every step, valid only for its key."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def load(self) -> dict[str, Any] | None:
        """The saved payload for this key, or None (missing, another search's, or unreadable)."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return saved.get("payload") if isinstance(saved, dict) and saved.get("key") == self.key else None

    def save(self, payload: dict[str, Any]) -> None:
        write_json(self.path, {"key": self.key, "payload": payload})


class SearchControl:
    """Counts a search's steps against its budget and checkpoints each step."""

    def __init__(
        self,
        budget: Budget = Budget(),
        *,
        evaluations: Callable[[], int] = lambda: 0,
        checkpoint: Checkpoint | None = None,
        previous: list[dict[str, Any]] | None = None,
    ) -> None:
        self.budget = budget
        self.evaluations = evaluations
        self.checkpoint = checkpoint
        self.previous = previous or []
        """Trajectory entries of the interrupted process (empty on a fresh search)."""
        saved = (checkpoint.load() if checkpoint else None) or {}
        self.resumed: dict[str, Any] | None = saved.get("search")
        """The optimizer's state after its last completed step, if this search is resumed."""
        self.steps_done: int = saved.get("steps_done", 0)
        self.best: float | None = saved.get("best")
        self.since_best: int = saved.get("since_best", 0)
        self._elapsed_before: float = saved.get("elapsed_s", 0.0)
        self._started = time.perf_counter()
        self._journal: list[dict[str, Any]] = []
        if checkpoint is not None:  # keep the entries of completed steps; drop an unfinished step's
            lines = self._journal_path.read_text(encoding="utf-8").splitlines() if self._journal_path.exists() else []
            self._journal = [json.loads(line) for line in lines[: saved.get("journal", 0)]]
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_path.write_text("".join(line + "\n" for line in lines[: len(self._journal)]), encoding="utf-8")

    @property
    def _journal_path(self) -> Path:
        assert self.checkpoint is not None
        return self.checkpoint.path.with_suffix(".journal.jsonl")

    def journal(self) -> list[dict[str, Any]]:
        """Bulky per-step records (e.g. GReaTer's scored candidates) of the completed steps."""
        return list(self._journal)

    def log(self, entry: dict[str, Any]) -> None:
        """Append to the journal (kept on resume once the step that wrote it is done)."""
        self._journal.append(entry)
        if self.checkpoint is not None:
            with self._journal_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def elapsed(self) -> float:
        """Seconds of search so far, earlier processes of a resumed search included."""
        return self._elapsed_before + time.perf_counter() - self._started

    def step_done(self, score: float | None, state: dict[str, Any], reason: str | None = None) -> str | None:
        """Record a completed step (its score: higher is better; None: not scored), save `state`,
        and return why the search stops now: `reason` (the optimizer's own), a budget, or None."""
        self.steps_done += 1
        if score is not None and (self.best is None or score > self.best):
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1
        if self.checkpoint is not None:
            self.checkpoint.save(
                {
                    "steps_done": self.steps_done,
                    "best": self.best,
                    "since_best": self.since_best,
                    "elapsed_s": round(self.elapsed(), 3),
                    "journal": len(self._journal),
                    "search": state,
                }
            )
        return reason or self.exhausted()

    def exhausted(self) -> str | None:
        """The budget that is used up, if any."""
        b = self.budget
        if b.max_evals is not None and self.evaluations() >= b.max_evals:
            return "max_evals"
        if b.time_limit is not None and self.elapsed() >= b.time_limit:
            return "time_limit"
        if b.patience is not None and self.since_best >= b.patience:
            return "patience"
        return None

    def replayed_calls(self) -> dict[str, dict[str, Any]]:
        """Optimizer-LLM responses the interrupted process already paid for, by request key."""
        return {
            e["request_key"]: e
            for e in self.previous
            if e.get("kind") == "optimizer_call" and "response" in e and not e.get("replayed")
        }
