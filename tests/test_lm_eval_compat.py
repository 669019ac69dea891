"""The contract with lm-eval's internals: every private name or behaviour `harness/lm_eval_compat.py`
relies on exists in the installed lm-eval (scripts/check_lm_eval_versions.sh runs this file against
the lowest and highest supported versions), and a missing one is named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lm_eval_promptopt.harness import lm_eval_compat


PACKAGE = Path(lm_eval_compat.__file__).resolve().parents[1]


def test_the_installed_lm_eval_has_every_touchpoint():
    assert lm_eval_compat.missing_touchpoints() == []


def test_a_missing_touchpoint_is_named(monkeypatch: pytest.MonkeyPatch):
    """An lm-eval without `GeneralConfigTracker._get_model_name` (stubbed away here) fails the
    contract, naming that touchpoint and no other."""
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    monkeypatch.delattr(GeneralConfigTracker, "_get_model_name")
    assert lm_eval_compat.missing_touchpoints() == ["GeneralConfigTracker._get_model_name"]


def test_no_private_lm_eval_name_outside_the_compat_room():
    """Private lm-eval modules (`lm_eval._cli`, `lm_eval.tasks._index`) and the private attributes
    the room wraps are named in `harness/lm_eval_compat.py` only."""
    private = re.compile(
        r"lm_eval(\.\w+)*\._[a-z]|\._get_model_name|\._rank\b|\._world_size\b|sampler\.sample|build_all_requests\s*=|get_git_commit_hash\s*=|Tasks not found"
    )
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "lm_eval_compat.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert found == []
