"""The instruction cache's key and entries: every option classified once; corrupt entries ignored."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from lm_eval_promptopt.optimizers import get_optimizer
from lm_eval_promptopt.optimizers.simple import CandidatesConfig
from lm_eval_promptopt.options import RunOptions
from lm_eval_promptopt.run.instruction_cache import InstructionCache
from lm_eval_promptopt.run.search_key import IN_KEY, NOT_IN_KEY, cacheable, search_key


BUILT_IN = ("none", "candidates", "greater", "gpo")


def test_every_option_of_every_optimizer_is_classified_once():
    """A new run option or optimizer setting must be put in the key or said not to change the
    result (run/search_key.py); a table entry for a field that no longer exists fails too."""
    classes = {RunOptions, *(get_optimizer(name).config_class for name in BUILT_IN)}
    fields = {f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)}
    assert not set(IN_KEY) & set(NOT_IN_KEY)
    assert sorted(fields - set(IN_KEY) - set(NOT_IN_KEY)) == [], "unclassified: add them to IN_KEY or NOT_IN_KEY"
    assert sorted((set(IN_KEY) | set(NOT_IN_KEY)) - fields) == [], "stale entries"


def key(options: RunOptions, config: CandidatesConfig = CandidatesConfig(candidates="A|B")) -> dict:
    return search_key(
        optimizer="candidates", config=config, options=options, model={"model": "m"}, task="t", task_config_sha256="c",
        initial_instruction="", metric="acc,none", split_plan_sha256="p", seeds={"split_and_search": 0}, placement="system",
        evaluation={},
    )  # fmt: skip


@pytest.mark.parametrize("change", [{"max_evals": 1}, {"time_limit": 60.0}, {"patience": 2}, {"keep_initial": False}])
def test_budgets_and_keep_initial_change_the_key(change):
    assert key(RunOptions(**change)) != key(RunOptions())


@pytest.mark.parametrize("change", [{"compare_baseline": True}, {"refresh": True}, {"exclude_source_docs": True}])
def test_what_cannot_change_the_search_leaves_the_key_alone(change):
    assert key(RunOptions(**change)) == key(RunOptions())


def test_candidates_are_keyed_by_their_text_not_their_file(tmp_path: Path):
    listed = tmp_path / "c.txt"
    listed.write_text("A\nB\n")
    assert key(RunOptions(), CandidatesConfig(file=str(listed))) == key(RunOptions())


def test_a_search_stopped_by_its_time_limit_is_not_cached():
    assert not cacheable("time_limit") and cacheable("max_evals") and cacheable("completed")


def test_an_entry_that_is_valid_json_but_not_an_object_is_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cache, entry_key = InstructionCache(tmp_path), {"task": "t"}
    cache.save(entry_key, {"final_instruction": "x"})
    assert cache.lookup(entry_key) == {"final_instruction": "x"}
    for text in ("[]", "3", "null", '"text"'):
        cache.path(entry_key).write_text(text)
        with caplog.at_level(logging.WARNING):
            assert cache.lookup(entry_key) is None
        assert f"ignoring corrupt cache entry {cache.path(entry_key)}: not a JSON object" in caplog.text
        caplog.clear()
    cache.save(entry_key, {"final_instruction": "y"})  # the search again rewrites it whole
    assert json.loads(cache.path(entry_key).read_text())["outcome"] == {"final_instruction": "y"}
