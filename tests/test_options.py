"""`--optimize_args` parsing and validation."""

from __future__ import annotations

import pytest

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.optimizers.simple import CandidatesConfig
from lm_eval_promptopt.options import RunOptions, parse_optimize_args, split_pairs


def test_split_pairs_respects_quotes_and_json():
    assert split_pairs('instruction="Think, then answer.",seed=2') == {
        "instruction": "Think, then answer.",
        "seed": "2",
    }
    assert split_pairs("a='x,y', b=3") == {"a": "x,y", "b": "3"}
    assert split_pairs('{"seed": 4, "instruction": "Hi, there"}') == {"seed": 4, "instruction": "Hi, there"}
    assert split_pairs("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed", "not of the form key=value"),
        ("seed=1,seed=2", "given twice"),
        ('instruction="open', "unclosed"),
        ("{bad json", "not valid JSON"),
        ('{"seed": 1, "seed": 2}', "'seed' is given twice"),  # (JSON itself would keep the last)
    ],
)
def test_split_pairs_errors(text, message):
    with pytest.raises(PromptOptError, match=message):
        split_pairs(text)


def test_values_are_typed_and_split_between_run_and_optimizer():
    options, config = parse_optimize_args(
        "seed=3,compare_baseline=yes,train_size=none,candidates=A|B", "candidates", CandidatesConfig
    )
    assert options == RunOptions(seed=3, compare_baseline=True)
    assert config.instructions() == ["A", "B"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps=3,candidates=A", r"unknown key\(s\) steps .* valid keys: .*candidates"),
        ("seed=x,candidates=A", "seed='x' must be an integer"),
        ("compare_baseline=maybe,candidates=A", "must be true or false"),
        ("dev_size=0,candidates=A", "dev_size must be at least 1"),
        ("metric=acc,candidates=A", "metric must read `metric,filter`"),
        ("metric=exact_match,flexible-extract,candidates=A", "quote values that contain commas"),
        ("candidates= | ", "candidate list is empty"),
        ("file=/nonexistent.txt", "does not exist"),
        ("", "exactly one of file=PATH or candidates"),
    ],
)
def test_bad_values_name_the_key(text, message):
    with pytest.raises(PromptOptError, match=message):
        parse_optimize_args(text, "candidates", CandidatesConfig)


def test_json_values_keep_their_type():
    """A JSON list is the candidate list (never its text as one candidate); a number is not an
    instruction; every JSON value is checked against its field's type."""
    _, config = parse_optimize_args(
        '{"candidates": ["Please answer.", "Find the largest one."]}', "candidates", CandidatesConfig
    )
    assert config.instructions() == ["Please answer.", "Find the largest one."]
    options, _ = parse_optimize_args(
        '{"candidates": "A", "time_limit": 5, "compare_baseline": true, "train_size": null}',
        "candidates",
        CandidatesConfig,
    )
    assert options == RunOptions(time_limit=5.0, compare_baseline=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"candidates": "A", "instruction": 5}', "instruction=5 must be a string"),
        ('{"candidates": ["A", 3]}', r'candidates=\["A", 3\] must be a string or a list of strings'),
        ('{"candidates": "A", "seed": true}', "seed=true must be an integer"),
        ('{"candidates": "A", "seed": 1.5}', "seed=1.5 must be an integer"),
        ('{"candidates": "A", "compare_baseline": "maybe"}', "compare_baseline='maybe' must be true or false"),
        ('{"candidates": "A", "keep_initial": 1}', "keep_initial=1 must be true or false"),
        ("candidates=A,time_limit=nan", "time_limit='nan' must be a finite number"),
        ('{"candidates": "A", "time_limit": NaN}', "time_limit=NaN must be a finite number"),
        ("candidates=A,time_limit=inf", "time_limit='inf' must be a finite number"),
    ],
)
def test_json_values_of_the_wrong_type_and_non_finite_numbers_are_refused(text, message):
    with pytest.raises(PromptOptError, match=message):
        parse_optimize_args(text, "candidates", CandidatesConfig)


def test_candidates_file_one_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("First one.\n\nSecond, with comma.\nFirst one.\n", encoding="utf-8")
    _, config = parse_optimize_args(f"file={path}", "candidates", CandidatesConfig)
    assert config.instructions() == ["First one.", "Second, with comma."]
