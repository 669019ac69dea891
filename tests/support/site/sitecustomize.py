"""Test runs only: lm-eval's built-in task folder is parsed once per test session, not once per process.

conftest puts this folder on PYTHONPATH and names a file in $LM_EVAL_PROMPTOPT_TEST_INDEX, so every
`lm_eval` process a test starts imports this module at start-up. Indexing lm-eval's ~14,000 task
YAMLs is most of such a process's time (10-20 s on two cores). The first process stores what
`load_yaml` returned for each built-in YAML; later processes read it back instead of parsing again.
lm-eval's own index building (order, overrides, kinds) and task loading run unchanged, and
--include_path folders are always parsed afresh. Without the variable this module does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from lm_eval_promptopt.harness.lm_eval_compat import TASK_INDEX_MODULE as MODULE  # (a private lm-eval module)

_FAILED = "__failed__"  # what the index makes of a YAML that does not parse: it skips it


def cache_index(module: ModuleType, store: Path) -> None:
    """Serve `module.load_yaml` for lm-eval's own task folder from `store`, writing it if missing."""
    builtin = f"{Path(module.__file__).parent}{os.sep}"
    real_load, real_build = module.load_yaml, module.TaskIndex.build
    state: dict[str, dict[str, Any] | None] = {"cached": None, "seen": None}

    def load_yaml(path: Path, **kwargs: Any) -> Any:
        key, cached, seen = str(path), state["cached"], state["seen"]
        if seen is None or kwargs != {"resolve_func": False, "recursive": True} or not key.startswith(builtin):
            return real_load(path, **kwargs)
        if cached is not None and key in cached:
            value = cached[key]
        else:
            try:
                value = real_load(path, **kwargs)
            except Exception as err:  # the index logs and skips such a file
                value = (_FAILED, repr(err))
            seen[key] = pickle.dumps(value)  # as parsed, before the index holds it
        if isinstance(value, tuple) and value[:1] == (_FAILED,):
            raise ValueError(value[1])
        return value

    def build(paths: Any, **kwargs: Any) -> Any:
        try:  # read afresh for every build: the index may keep and change what it gets
            state["cached"] = pickle.loads(store.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):
            state["cached"] = None
        fresh, state["seen"] = state["cached"] is None, {}
        try:
            index = real_build(paths, **kwargs)
            seen = state["seen"]
        finally:
            state.update(cached=None, seen=None)
        if fresh and seen:
            partial = store.with_name(f"{store.name}.{os.getpid()}")
            partial.write_bytes(pickle.dumps({key: pickle.loads(value) for key, value in seen.items()}))
            os.replace(partial, store)  # whole or not at all, also with two workers at once
        return index

    module.load_yaml = load_yaml
    module.TaskIndex.build = staticmethod(build)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loading of lm-eval's task index module so that `cache_index` runs right after it."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_then_cache(module: ModuleType) -> None:
            exec_module(module)
            cache_index(module, self.store)

        spec.loader.exec_module = exec_then_cache
        return spec


def install(store: Path) -> None:
    """Cache the built-in task index in `store` for this process (now, or once lm-eval loads it)."""
    if MODULE in sys.modules:
        cache_index(sys.modules[MODULE], store)
    else:
        sys.meta_path.insert(0, _AfterImport(store))


if os.environ.get("LM_EVAL_PROMPTOPT_TEST_INDEX"):
    install(Path(os.environ["LM_EVAL_PROMPTOPT_TEST_INDEX"]))
