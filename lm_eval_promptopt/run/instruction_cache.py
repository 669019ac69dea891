"""The instruction cache: a finished search, keyed by everything that can change its result.

An entry is one JSON file named by the key's hash. It holds the key fields (readable), the
outcome, and a checksum over both; an entry that does not parse, is not a JSON object, fails its
checksum, or was written for another key is reported and ignored, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import PromptOptError
from ..harness.setup import unwrap
from ..logs import get_logger
from ..version import __version__
from .files import unwritable, write_json


logger = get_logger(__name__)
ENV_CACHE = "LM_EVAL_PROMPTOPT_CACHE"


def cache_root() -> Path:
    """Where the plugin caches things: $LM_EVAL_PROMPTOPT_CACHE, else ~/.cache/lm_eval_promptopt."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lm_eval_promptopt"


def default_cache_dir() -> Path:
    """The instruction cache's default folder."""
    return cache_root() / "instructions"


def _stable(value: Any) -> str:
    """A run-independent stand-in for what JSON cannot hold (no memory addresses)."""
    return getattr(value, "__qualname__", None) or type(value).__name__


def plain(data: Any) -> Any:
    """`data` as plain JSON values."""
    return json.loads(json.dumps(data, sort_keys=True, default=_stable))


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=_stable).encode()).hexdigest()


def model_identity(lm: Any, model: Any, model_args: Any) -> dict[str, Any]:
    """Model name, revision and, for Hugging Face models, a hash of the loaded model's config."""
    args = model_args if isinstance(model_args, dict) else {"model_args": str(model_args or "")}
    identity = {"model": model if isinstance(model, str) else type(model).__name__, "model_args": args}
    inner = unwrap(lm)
    config = getattr(getattr(inner, "model", None), "config", None)
    if config is not None and hasattr(config, "to_dict"):
        identity["hf_config_sha256"] = digest(config.to_dict())
        identity["revision"] = getattr(inner, "revision", None)
    return identity


class InstructionCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, key: dict[str, Any]) -> Path:
        return self.directory / f"{digest(key)}.json"

    def lookup(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The cached outcome for `key`, or None (missing, or corrupt: reported and ignored)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            problem = None
            if not isinstance(entry, dict):
                problem = f"not a JSON object (a {type(entry).__name__})"
            elif entry.get("checksum") != digest({"key": entry.get("key"), "outcome": entry.get("outcome")}):
                problem = "checksum mismatch (partial or edited file)"
            elif entry["key"] != plain(key):
                problem = "written for another key"
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = f"unreadable ({err})"
        if problem:
            logger.warning("lm_eval_promptopt: ignoring corrupt cache entry %s: %s; searching again", path, problem)
            return None
        return entry["outcome"]

    def check_writable(self) -> None:
        """Raise a one-line error now, before any search, if entries cannot be written here."""
        reason = unwritable(self.directory)
        if reason:
            raise PromptOptError(
                f"--optimize_cache: cannot write the instruction cache {self.directory} ({reason}); "
                f"pass a writable folder with --optimize_cache or ${ENV_CACHE}"
            )

    def save(self, key: dict[str, Any], outcome: dict[str, Any]) -> Path | None:
        """Write the entry; a write that fails is a warning and returns None (the run's own
        outputs still hold the search)."""
        key, outcome = plain(key), plain(outcome)
        path = self.path(key)
        try:
            write_json(
                path,
                {
                    "plugin_version": __version__,
                    "key": key,
                    "outcome": outcome,
                    "checksum": digest({"key": key, "outcome": outcome}),
                },
            )
        except OSError as err:
            logger.warning(
                "lm_eval_promptopt: could not write the instruction cache entry %s (%s); the run's outputs still hold this search",
                path,
                err,
            )
            return None
        return path
