"""The run log's pieces on their own: composable stop conditions, torn-line-safe JSONL, resume."""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval_promptopt.run.files import read_jsonl
from lm_eval_promptopt.run.log import Checkpoint, RunLog
from lm_eval_promptopt.run.stop import AnyOf, MaxEvals, MaxTokens, Patience, Progress, TimeLimit, budget


def test_stop_conditions_combine_and_the_first_that_fires_names_the_stop():
    at = Progress(steps=4, evaluations=5, elapsed_s=10.0, since_best=3)
    assert MaxEvals(5).reason(at) == "max_evals" and MaxEvals(6).reason(at) is None
    assert TimeLimit(10.0).reason(at) == "time_limit" and TimeLimit(10.5).reason(at) is None
    assert Patience(3).reason(at) == "patience" and Patience(4).reason(at) is None
    assert (MaxEvals(9) | Patience(3) | TimeLimit(1.0)).reason(at) == "patience"  # in the order combined
    assert (TimeLimit(1.0) | Patience(3)).reason(at) == "time_limit"
    assert AnyOf().reason(at) is None
    assert budget(None, None, None) == AnyOf()
    assert budget(7, 1.0, 2) == AnyOf((MaxEvals(7), TimeLimit(1.0), Patience(2)))
    assert (MaxEvals(9) | MaxEvals(7) | Patience(1)).evaluations_left(5) == 2
    assert AnyOf((Patience(1),)).evaluations_left(5) is None


def test_a_token_budget_is_a_stop_condition_an_optimizer_puts_first():
    """GPO's max_optimizer_tokens: `MaxTokens`, combined ahead of the run's own conditions."""
    at = Progress(steps=4, evaluations=5, elapsed_s=10.0, since_best=3, tokens=100)
    assert MaxTokens(100).reason(at) == "max_optimizer_tokens" and MaxTokens(101).reason(at) is None
    first = MaxTokens(100) | budget(7, 1.0, 2)
    assert (
        first == AnyOf((MaxTokens(100), MaxEvals(7), TimeLimit(1.0), Patience(2)))
        and first.reason(at) == "max_optimizer_tokens"
    )
    assert first.evaluations_left(5) == 2  # one flat combination: the evaluation limit is still seen
    log = RunLog(stop=Patience(1))
    log.stop_first(MaxTokens(10))
    assert log.step_done(0.5, {}, tokens=9) is None
    assert (
        log.step_done(0.1, {}, tokens=10) == "max_optimizer_tokens" and log.progress().tokens == 10
    )  # patience fired too


def test_jsonl_keeps_the_entries_before_a_torn_line(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"b": \n{"c": 3}\n', encoding="utf-8")  # nothing after a torn line counts
    assert read_jsonl(path) == [{"a": 1}]


def test_a_resumed_log_keeps_completed_steps_and_drops_an_unfinished_steps_records(tmp_path: Path):
    trajectory, state = tmp_path / "trajectories" / "t.jsonl", tmp_path / "state" / "t.json"
    first = RunLog(trajectory, Checkpoint(state, "key"), stop=Patience(2))
    first.record({"instruction": "A", "score": 0.5})
    first.write_journal({"step": 1})
    assert first.step_done(0.5, {"at": 1}) is None
    first.write_journal({"step": 2})  # the step the kill interrupts
    with trajectory.open("a", encoding="utf-8") as handle:
        handle.write('{"torn": ')
    again = RunLog(trajectory, Checkpoint(state, "key"), stop=Patience(2))
    assert again.resumed == {"at": 1} and again.steps_done == 1
    assert again.journal() == [{"step": 1}]
    assert again.previous == [{"index": 0, "instruction": "A", "score": 0.5}]
    assert [json.loads(line) for line in trajectory.read_text(encoding="utf-8").splitlines()] == again.previous
    assert again.step_done(0.4, {"at": 2}) is None and again.step_done(0.4, {"at": 3}) == "patience"
    other = RunLog(trajectory, Checkpoint(state, "another key"))
    assert other.resumed is None and other.previous == [] and other.journal() == []
