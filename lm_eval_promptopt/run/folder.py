"""The run folder: where a run writes (`<output>/<model>/prompt_optimization_<time>/`), how a
rerun of the same command finds the folder of an unfinished run to resume, the lock that keeps
a second live run of the command out, `run.json` (how the run ended, and the command that resumes
it, credentials masked) and `error.log`."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from filelock import FileLock, Timeout

from ..errors import PromptOptError
from ..logs import get_logger
from .files import write_json


logger = get_logger(__name__)

DEFAULT_OUTPUT = Path("lm_eval_promptopt_runs")
"""Where run folders go without --output_path."""


_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<userinfo>[^/@\s,'\"]*@)?(?P<rest>[^\s?#,'\"]*)(?P<query>\?[^\s#,'\"]*)?"
)


def mask_credentials(text: str) -> str:
    """`text` with each URL's user-info and query values masked (`http://u:k@h/v1?key=k` ->
    `http://***@h/v1?key=***`): where credentials are written into a command line."""

    def mask(match: re.Match[str]) -> str:
        query = match["query"] and "?" + "&".join(
            f"{k}=***" for k, _ in parse_qsl(match["query"][1:], keep_blank_values=True)
        )
        return match["scheme"] + ("***@" if match["userinfo"] else "") + match["rest"] + (query or "")

    return _URL.sub(mask, text)


def command_line() -> str:
    """This process's command, as typed, with credentials masked."""
    return mask_credentials(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))


def default_run_dir(output_path: Path | None, model: Any, model_args: str | dict[str, Any] | None) -> Path:
    """A new run folder under `output_path`, named as lm-eval names its results folder (the
    model), then the time."""
    from lm_eval.utils import sanitize_model_name

    from ..harness.lm_eval_compat import model_name as lm_eval_model_name

    output = output_path or DEFAULT_OUTPUT
    if output.suffix == ".json":
        output = output.parent
    model_name = lm_eval_model_name(model_args) or str(model)
    stamp = datetime.datetime.now().isoformat(timespec="seconds").replace(":", "-")
    return output.absolute() / sanitize_model_name(model_name) / f"prompt_optimization_{stamp}"


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

    def __init__(self, path: Path, run_key: str, lock: FileLock, resumed: bool) -> None:
        self.path = path
        self.run_key = run_key
        self.command = command_line()
        self.resumed = resumed
        self._lock = lock

    @classmethod
    def open(
        cls, output_path: Path | None, model: Any, model_args: str | dict[str, Any] | None, run_key: str, refresh: bool
    ) -> RunFolder:
        """Resume the same command's unfinished run folder (unless `refresh`) or start one; lock
        it and mark it running. The lock refuses a second live run of the same command (it
        would pay every call twice)."""
        new = default_run_dir(output_path, model, model_args)
        try:
            # one process at a time chooses its folder, so two runs started together cannot both miss each other
            new.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(new.parent / ".prompt_optimization.lock"):
                found = None if refresh else find_interrupted_run(new.parent, run_key)
                path = found or new
                path.mkdir(parents=True, exist_ok=True)
                lock = FileLock(path / ".lock")
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    raise PromptOptError(
                        f"another lm_eval process is running this command in {path} now; wait for it to "
                        "finish, or stop it and rerun to resume it, or pass another --output_path"
                    ) from None
                folder = cls(path, run_key, lock, found is not None)
                folder._mark("running")
        except OSError as err:
            raise PromptOptError(
                f"cannot write the run folder {new.parent} ({err.strerror or err}); pass a writable --output_path"
            ) from None
        if found is not None:
            logger.info(f"lm_eval_promptopt: resuming the interrupted run in {path} (refresh=true starts afresh)")
        return folder

    def finish(self, status: str) -> None:
        """Mark how the run ended in `run.json` (`complete`, `failed`, `interrupted`) and unlock it;
        a rerun of the same command resumes any run that did not complete."""
        self._mark(status)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _mark(self, status: str) -> None:
        write_json(self.path / "run.json", {"run_key": self.run_key, "status": status, "command": self.command})


UNFINISHED = {
    "interrupted": "interrupted",
    "failed": "failed (see error.log)",
    "running": "not finished: running now, or killed before it could record how it ended",
}


def unfinished(run_dir: Path) -> str | None:
    """One line for a run folder whose run did not complete: how it ended and the command that
    resumes it (None: it completed, or no run.json says otherwise)."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except OSError:
        return None
    except ValueError:
        return f"{run_dir / 'run.json'} is not valid JSON: how the run ended is unknown"
    status = info.get("status") if isinstance(info, dict) else None
    if status not in UNFINISHED:
        return None
    command = info.get("command") or "the command that started it"
    masked = " (put back each credential shown as ***)" if "***" in command else ""
    return f"{UNFINISHED[status]}: resume with: {command}{masked}"


def log_error(run_dir: Path, what: str) -> Path:
    """Append the current exception's traceback to `run_dir/error.log`; its path."""
    log = run_dir / "error.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {what}\n{traceback.format_exc()}\n")
    return log
