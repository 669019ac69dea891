"""The run folder: where a run writes (`<output>/<model>/prompt_optimization_<time>/`), how a
rerun of the same command finds the folder of an unfinished run to resume, the lock that keeps
a second live run of the command out, `run.json` (how the run ended) and `error.log`."""

from __future__ import annotations

import contextlib
import datetime
import json
import traceback
from pathlib import Path
from typing import Any

from ..errors import PromptOptError
from .files import lock_file, write_json

DEFAULT_OUTPUT = Path("lm_eval_promptopt_runs")
"""Where run folders go without --output_path."""


def default_run_dir(kw: dict[str, Any]) -> Path:
    """A new run folder, named as lm-eval names its results folder (the model), then the time."""
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.utils import sanitize_model_name

    tracker = kw.get("evaluation_tracker")
    output = Path(tracker.output_path) if tracker is not None and tracker.output_path else DEFAULT_OUTPUT
    if output.suffix == ".json":
        output = output.parent
    model_name = GeneralConfigTracker._get_model_name(kw.get("model_args")) or str(kw.get("model"))
    stamp = datetime.datetime.now().isoformat(timespec="seconds").replace(":", "-")
    return output / sanitize_model_name(model_name) / f"prompt_optimization_{stamp}"


def find_interrupted_run(parent: Path, run_key: str) -> Path | None:
    """The newest run folder under `parent` that the same command started and did not finish
    (its `run.json` says `running`, `failed` or `interrupted`)."""
    for run in sorted(parent.glob("prompt_optimization_*"), reverse=True):
        try:
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("run_key") == run_key:
            return run if info.get("status") != "complete" else None
    return None


class RunFolder:
    """The folder this process chose, locked and marked `running` until `finish`."""

    def __init__(self, path: Path, run_key: str, lock: Any, resumed: bool) -> None:
        self.path = path
        self.run_key = run_key
        self.resumed = resumed
        self._lock = lock

    @classmethod
    def open(cls, kw: dict[str, Any], run_key: str, refresh: bool) -> RunFolder:
        """Resume the same command's unfinished run folder (unless `refresh`) or start one; lock
        it and mark it running. The lock refuses a second live run of the same command (it
        would pay every call twice)."""
        new = default_run_dir(kw)
        try:
            # one process at a time chooses its folder, so two runs started together cannot both miss each other
            with contextlib.closing(lock_file(new.parent / ".prompt_optimization.lock", wait=True)):
                found = None if refresh else find_interrupted_run(new.parent, run_key)
                path = found or new
                lock = lock_file(path / ".lock", wait=False)
                if lock is None:
                    raise PromptOptError(
                        f"another lm_eval process is running this command in {path} now; wait for it to "
                        "finish, or stop it and rerun to resume it, or pass another --output_path"
                    )
                write_json(path / "run.json", {"run_key": run_key, "status": "running"})
        except OSError as err:
            raise PromptOptError(f"cannot write the run folder {new.parent} ({err.strerror or err}); pass a writable --output_path") from None
        if found is not None:
            print(f"lm_eval_promptopt: resuming the interrupted run in {path} (refresh=true starts afresh)")
        return cls(path, run_key, lock, found is not None)

    def finish(self, status: str) -> None:
        """Mark how the run ended in `run.json` (`complete`, `failed`, `interrupted`) and unlock it;
        a rerun of the same command resumes any run that did not complete."""
        write_json(self.path / "run.json", {"run_key": self.run_key, "status": status})
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def log_error(run_dir: Path, what: str) -> Path:
    """Append the current exception's traceback to `run_dir/error.log`; its path."""
    log = run_dir / "error.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {what}\n{traceback.format_exc()}\n")
    return log
