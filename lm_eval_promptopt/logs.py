"""Our loggers: one tree under `lm_eval_promptopt`, at lm-eval's `--verbosity`, written above progress bars.

Every module logs to `get_logger(__name__)` (importing this module installs the handler). The tree's one handler writes each line with
`tqdm.write`, so it lands above any progress bar: information to stdout (beside the run's
summary), warnings and errors to stderr. The tree is not a child of lm-eval's `lm_eval` logger,
whose level a search raises to WARNING while it runs (lm-eval's per-call lines would flood it);
`follow_verbosity` gives it the level lm-eval's `--verbosity` (or `LMEVAL_LOG_LEVEL`) sets.
Records still propagate to the root logger, where an application's own handlers see them.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm


ROOT = "lm_eval_promptopt"


class _AboveBars(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = (
                sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            )  # looked up now: a test may swap them
            tqdm.write(self.format(record), file=stream)
        except Exception:  # noqa: BLE001 (logging's own contract: report, never raise)
            self.handleError(record)


def _install() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _AboveBars) for h in logger.handlers):
        logger.addHandler(_AboveBars())
        logger.setLevel(logging.INFO)
    return logger


_install()


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (one of ours), under the tree's handler."""
    assert name == ROOT or name.startswith(ROOT + "."), name
    return logging.getLogger(name)


def follow_verbosity(verbosity: str | int | None) -> None:
    """Give our loggers lm-eval's level: as `--verbosity` sets it, as stock `simple_evaluate` does
    (where given), else as lm-eval's CLI set it at start (`LMEVAL_LOG_LEVEL`); INFO where unset."""
    if verbosity is not None:
        from lm_eval.utils import setup_logging

        setup_logging(verbosity)
    level = logging.getLogger("lm_eval").level
    logging.getLogger(ROOT).setLevel(level or logging.INFO)
