"""Shared fixtures: the tiny model, local-data task overrides, and running the real `lm_eval`."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each (and their lm_eval runs)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (the test bed and the planted tests use it)
from support.site import sitecustomize  # noqa: E402
from support.testbed import build_tiny_model, write_local_task_overrides  # noqa: E402 (after the thread count)


TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SITE = TESTS / "support" / "site"
SHARED_DATA = REPO.parent / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: The one skip message of every test that needs the real benchmark data (which tests: docs/contributing/test-bed.md).
NO_SHARED_DATA = f"real benchmark data not found at {SHARED_DATA} (check out ../shared beside the repo)"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=NO_SHARED_DATA)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests sharing a module-scoped fixture (one run that several tests assert on) go to one xdist
    worker, so that it runs once; tests without one are spread one by one."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if (
            item.get_closest_marker("xdist_group") is None
            and fixtures is not None
            and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values())
        ):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session", autouse=True)
def _task_index_parsed_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """lm-eval parses its ~14,000 built-in task YAMLs once per test session (both workers), not in
    every `lm_eval` process: support/site/sitecustomize.py, on these processes' PYTHONPATH."""
    base = tmp_path_factory.getbasetemp()
    store = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "lm_eval_task_index.pickle"
    os.environ["LM_EVAL_PROMPTOPT_TEST_INDEX"] = str(store)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    sitecustomize.install(store)  # and in this process (the tests that load tasks in-process)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own tmp_path: an `lm_eval` run without --output_path writes its
    run folder (./lm_eval_promptopt_runs) there, never into the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _logger_levels_restored() -> Iterator[None]:
    """Each test leaves lm-eval's and our loggers at the levels it found: lm-eval's
    `simple_evaluate(verbosity=...)` sets the `lm_eval` logger's level for the whole process, and
    our loggers follow that level, so a level left behind would hide the next test's lines."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm_eval_promptopt")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a chat template that has a system role."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_no_system(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with a Gemma-2-style template that rejects the system role."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model_nosys"), seed=0, system_role=False)


@pytest.fixture(scope="session")
def local_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-eval's own BBH / MMLU / GSM8k task YAMLs with only the dataset source made local."""
    if not SHARED_DATA.is_dir():
        pytest.skip(NO_SHARED_DATA)
    return write_local_task_overrides(tmp_path_factory.mktemp("local_tasks"), SHARED_DATA)


def lm_eval_command(entry: str = "lm_eval") -> list[str]:
    """The real console script (next to this interpreter), or one of the test entry scripts."""
    if entry in ("lm_eval", "lm-eval-promptopt"):
        return [str(Path(sys.executable).with_name(entry))]
    return [sys.executable, str(TESTS / f"{entry}.py")]


def hf_on_cpu(model: str | Path) -> list[str]:
    """`lm_eval` flags for a local HF model folder on the CPU."""
    return ["--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu"]


def run_lm_eval(args: list[str], entry: str = "lm_eval", check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run lm_eval in a subprocess, offline; on unexpected failure show its output."""
    with tempfile.TemporaryDirectory() as cache:  # a fresh instruction cache unless the test gives one
        proc = subprocess.run(
            [*lm_eval_command(entry), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **OFFLINE, "LM_EVAL_PROMPTOPT_CACHE": cache, **env},
            timeout=600,
        )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lm_eval exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
        )
    return proc


def evaluate_in_process(**kwargs: Any) -> dict:
    """`lm_eval_promptopt.simple_evaluate` in this process, with the test stand-ins (`--model
    oracle`, the `flaky` optimizer, ...) registered. Each call builds its own TaskManager, model and
    seeds, as the API does, so calls do not share state."""
    import oracle_model  # noqa: F401  (registers them)

    from lm_eval_promptopt import simple_evaluate

    return simple_evaluate(**kwargs)


@pytest.fixture
def evaluate(tmp_path: Path) -> Callable[..., dict]:
    """`evaluate_in_process` with a fresh instruction cache and the run folders under tmp_path,
    unless the test gives others."""

    def run(**kwargs: Any) -> dict:
        kwargs.setdefault("optimize_cache", tmp_path / "instruction-cache")
        kwargs.setdefault("output_path", tmp_path)
        return evaluate_in_process(**kwargs)

    return run


def squeezed(markdown: str) -> str:
    """Markdown with runs of spaces made one (pytablewriter pads table cells to the column width)."""
    return re.sub(" +", " ", markdown)


def load_results(output_path: Path) -> dict:
    """The results JSON that lm-eval's tracker wrote under `output_path`."""
    files = sorted(glob.glob(str(output_path / "**" / "results_*.json"), recursive=True))
    assert len(files) == 1, f"expected one results file under {output_path}, found {files}"
    return json.loads(Path(files[0]).read_text(encoding="utf-8"))


CI_SCRIPT = REPO / "examples" / "ci" / "leaderboard.sh"
#: The CI example's cheap settings: the planted group (4 tasks), 10 dev and 10 held-out docs each, two candidates.
CI_TASKS = ["planted_first", "planted_last", "planted_largest", "planted_smallest"]
CI_TASK = "planted_largest"
CI_ARGS = "instruction=Please answer.,candidates=Please answer the question.|Please find the largest one.,train_size=0,dev_size=10,compare_baseline=true"


def run_ci_script(models: list[Path], out: Path, cache: Path) -> subprocess.CompletedProcess:
    """examples/ci/leaderboard.sh on CPU for `models`, with `cache` as the restored CI cache."""
    bindir = str(Path(sys.executable).parent)
    command = [
        "bash", str(CI_SCRIPT), "--models", " ".join(map(str, models)), "--tasks", "planted", "--optimize", "candidates",
        "--optimize-args", CI_ARGS, "--cache", str(cache), "--out", str(out),
        "--", "--device", "cpu", "--batch_size", "32", "--include_path", str(REPO / "task_configs" / "planted"), "--limit", "10",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    """One cold run of the CI example (planted and tiny model): shared by the CI and leaderboard tests."""
    from benchmarks import planted

    root = tmp_path_factory.mktemp("ci")
    models = [planted.planted_model(), tiny_model]
    proc = run_ci_script(models, root / "out1", root / "ci-cache")
    if proc.returncode != 0:
        raise AssertionError(
            f"leaderboard.sh exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
        )
    return {"root": root, "models": models, "out": root / "out1", "cache": root / "ci-cache", "proc": proc}
