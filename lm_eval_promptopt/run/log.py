"""The run log of one task's search: its trajectory, per-step state, journal, resume and replay.

Three files per task under the run folder:
- ``trajectories/<task>.jsonl``: every candidate scored, every optimizer-LLM call, every step
  (appended as it happens; the report's plot and `show` read it);
- ``state/<task>.json``: the optimizer's state after its last completed step, with the run log's
  own counters, rewritten atomically by `RunLog.step_done`, valid only for the search's key;
- ``state/<task>.journal.jsonl``: bulky per-step records (e.g. GReaTer's scored candidates),
  kept on resume up to the last completed step.

`step_done` also asks the stop conditions (`stop.py`) whether the search stops now; limits are
checked between steps, so a step that has begun is finished. A rerun of the same command finds
the state (`resumed`) and continues after the last completed step; what the killed process paid
for inside an unfinished step (harness evaluations, optimizer-LLM calls) is in the trajectory,
and is replayed from there (`previous`, `replayed_calls`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import read_jsonl, write_json
from .stop import AnyOf, Combinable, Progress


class Trajectory:
    """Every candidate a search scored, appended to `<run_dir>/trajectories/<task>.jsonl`.

    With `resume`, the entries already in the file are kept (a torn last line is dropped) and
    new ones follow them; otherwise the file starts empty.
    """

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, Any]] = read_jsonl(path) if resume else []
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries), encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        entry = {"index": len(self.entries), **entry}
        self.entries.append(entry)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


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


class RunLog:
    """What one search records, and what it finds again when resumed.

    Without files (`trajectory` and `checkpoint` None) it records nothing and resumes nothing:
    an optimizer run outside `lm_eval` (tests, scripts) gets the same interface.
    """

    def __init__(
        self,
        trajectory: Path | None = None,
        checkpoint: Checkpoint | None = None,
        *,
        stop: AnyOf = AnyOf(),
        evaluations: Callable[[], int] = lambda: 0,
    ) -> None:
        self.stop = stop
        self.evaluations = evaluations
        """Harness evaluations of the search so far (the objective counts them)."""
        self.checkpoint = checkpoint
        saved = (checkpoint.load() if checkpoint else None) or {}
        self.resumed: dict[str, Any] | None = saved.get("search")
        """The optimizer's state after its last completed step, if this search is resumed."""
        self.trajectory = Trajectory(trajectory, resume=self.resumed is not None) if trajectory else None
        self.previous: list[dict[str, Any]] = (
            list(self.trajectory.entries) if self.trajectory and self.resumed is not None else []
        )
        """Trajectory entries of the interrupted process (empty on a fresh search)."""
        self.steps_done: int = saved.get("steps_done", 0)
        self.best: float | None = saved.get("best")
        self.since_best: int = saved.get("since_best", 0)
        self.tokens = 0
        """Optimizer-LLM tokens as of the last completed step (what the optimizer reported)."""
        self._elapsed_before: float = saved.get("elapsed_s", 0.0)
        self._started = time.perf_counter()
        self._journal: list[dict[str, Any]] = []
        if checkpoint is not None:  # keep the entries of completed steps; drop an unfinished step's
            self._journal = read_jsonl(self._journal_path)[: saved.get("journal", 0)]
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_path.write_text("".join(json.dumps(e) + "\n" for e in self._journal), encoding="utf-8")

    @property
    def path(self) -> Path | None:
        """The trajectory file (None without files)."""
        return self.trajectory.path if self.trajectory else None

    @property
    def _journal_path(self) -> Path:
        assert self.checkpoint is not None
        return self.checkpoint.path.with_suffix(".journal.jsonl")

    def record(self, entry: dict[str, Any]) -> None:
        """Append an entry (a scored candidate, an optimizer call, a step) to the trajectory."""
        if self.trajectory is not None:
            self.trajectory.append(entry)

    def journal(self) -> list[dict[str, Any]]:
        """Bulky per-step records (e.g. GReaTer's scored candidates) of the completed steps."""
        return list(self._journal)

    def write_journal(self, entry: dict[str, Any]) -> None:
        """Append to the journal (kept on resume once the step that wrote it is done)."""
        self._journal.append(entry)
        if self.checkpoint is not None:
            with self._journal_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def elapsed(self) -> float:
        """Seconds of search so far, earlier processes of a resumed search included."""
        return self._elapsed_before + time.perf_counter() - self._started

    def progress(self) -> Progress:
        return Progress(self.steps_done, self.evaluations(), self.elapsed(), self.since_best, self.tokens)

    def stop_first(self, condition: Combinable) -> None:
        """Check an optimizer's own budget (e.g. GPO's token limit) before the run's stop conditions."""
        self.stop = condition | self.stop

    def step_done(
        self, score: float | None, state: dict[str, Any], reason: str | None = None, tokens: int = 0
    ) -> str | None:
        """Record a completed step (its score: higher is better; None: not scored; `tokens`: the
        optimizer LLM's so far), save `state`, and return why the search stops now: `reason`
        (the optimizer's own), a stop condition's, or None."""
        self.steps_done += 1
        self.tokens = tokens
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
        return reason or self.stop.reason(self.progress())

    def evaluations_left(self) -> int | None:
        """Harness evaluations the stop conditions still allow (None: no limit)."""
        return self.stop.evaluations_left(self.evaluations())

    def replayed_calls(self) -> dict[str, dict[str, Any]]:
        """Optimizer-LLM responses the interrupted process already paid for, by request key."""
        return {
            e["request_key"]: e
            for e in self.previous
            if e.get("kind") == "optimizer_call" and "response" in e and not e.get("replayed")
        }
