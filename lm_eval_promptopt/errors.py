"""Errors shown to the user as one line, with an exit code per failure class."""

from __future__ import annotations


class PromptOptError(Exception):
    """A problem the user can fix (bad arguments or settings): the message names it and the fix."""

    exit_code = 2


class StageError(PromptOptError):
    """A phase of the run failed: model load (3), task load (4), optimizer (5), evaluation (6)."""

    CODES = {"model load": 3, "task load": 4, "optimizer": 5, "evaluation": 6}

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"{phase} failed: {message}")
        self.exit_code = self.CODES[phase]
