"""What an `--optimize` run keeps off the terminal: lm-eval's repeats, and git's complaint.

An optimize run loads each task more than once (splits, search, held-out evaluation), and lm-eval
warns at every load. Each distinct warning is shown once; the `--metadata` hint that lm-eval
gives for every task with a `custom_dataset` (the same text after the task's name) once per run.
lm-eval records the git commit of the working directory by running `git describe`, whose
`fatal: not a git repository` reaches the terminal outside a checkout: it runs silenced here,
with the same recorded value. Nothing of this applies without `--optimize`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator

from .lm_eval_compat import git_commit_hash_replaced


METADATA_HINT = "Custom kwargs can be passed to `--metadata`"
TASK_LOGGER = "lm_eval.api.task"


class OnceEach(logging.Filter):
    """Lets each distinct warning through once, and the per-task `--metadata` hint once in all."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        key = METADATA_HINT if METADATA_HINT in message else message
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def git_commit_hash() -> str | None:
    """`lm_eval.loggers.utils.get_git_commit_hash` with git's stderr silenced."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()  # noqa: S607
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def quiet_run() -> Iterator[None]:
    """For one `--optimize` run: lm-eval's repeated warnings once, git's stderr silenced."""
    logger, once = logging.getLogger(TASK_LOGGER), OnceEach()
    logger.addFilter(once)
    try:
        with git_commit_hash_replaced(git_commit_hash):
            yield
    finally:
        logger.removeFilter(once)
