"""GReaTer's diagnosis: the harness's train score beside the criterion, their rank correlation,
and the warning when the gold answer is out of reach after the extractor."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_shared_data
from test_greater import TASK, lm, make_problem, tasks  # noqa: F401  (module fixtures)

from lm_eval_promptopt.optimizers.greater import Greater, GreaterConfig, Search
from lm_eval_promptopt.optimizers.greater.diagnosis import diagnose, ranks, spearman


def test_ranks_share_ties_and_spearman_matches_the_textbook_formula():
    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    # no ties: rho = 1 - 6 sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 2, 3], [5, 5, 5]) is None


def _steps(near: list[float]) -> list[dict]:
    return [{"step": i, "criterion": 0.5, "gold_near_zero": v} for i, v in enumerate(near)]


def test_one_warning_line_when_the_gold_is_near_zero_on_most_train_docs(capsys):
    assert diagnose("t", _steps([0.4, 0.5]), "paper")["gold_near_zero"] == pytest.approx(0.45)
    assert capsys.readouterr() == ("", "")
    diagnose("t", _steps([0.6, 0.8]), "paper")
    out, err = capsys.readouterr()  # a warning: on stderr, through our logger
    assert (
        out == ""
        and err.count("\n") == 1
        and "t: greater" in err
        and "70% of train docs" in err
        and "try extractor=task" in err
    )
    diagnose("t", _steps([1.0]), "task")
    assert "extractor=task" not in capsys.readouterr().err


def _gold_near_zero(search: Search, prompt: list[int]) -> float:
    """The share written out: full forwards of the whole sequence, gold probability < 0.01."""
    model, reasoning, near = search.lm.model, search.scorer.reasoning(prompt), 0
    for ex, r in zip(search.examples, reasoning):
        seq = ex.prefix + search.fixed + prompt + ex.rest + r + ex.extractor + ex.answer
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float()
        start = len(seq) - len(ex.answer)
        log_probs = torch.log_softmax(logits[start - 1 : len(seq) - 1], -1)
        near += float(log_probs.gather(1, torch.tensor(ex.answer)[:, None]).sum().exp()) < 0.01
    return near / len(search.examples)


@needs_shared_data
def test_each_step_records_the_harness_train_score_and_the_gold_share(lm, tasks, capsys):  # noqa: F811
    config = GreaterConfig(steps=3, max_reasoning_tokens=5, batch_size=6, harness_train=True)
    problem = make_problem(lm, tasks[TASK])
    result = Greater(config).optimize(problem)
    steps = [s for s in result.details["steps"] if "step" in s]
    search, fresh = Search(config, make_problem(lm, tasks[TASK])), make_problem(lm, tasks[TASK])
    for s in steps:
        assert (s["chosen"], "train") in problem.objective.memo  # scored by the harness on optimize-train
        assert s["harness_train_score"] == fresh.score(s["chosen"], "train")  # lm-eval's own score, re-run
        ids = lm.tokenizer.encode(s["chosen"], add_special_tokens=False)[len(search.fixed) :]
        assert s["gold_near_zero"] == pytest.approx(_gold_near_zero(search, ids))
    diagnosis = result.details["diagnosis"]
    pairs = [(-s["criterion"], s["harness_train_score"]) for s in steps]
    assert diagnosis["spearman_criterion_harness"] == spearman(*map(list, zip(*pairs)))
    assert [d["harness_train_score"] for d in diagnosis["criterion_vs_harness_train"]] == [p[1] for p in pairs]
    # the random tiny model never reaches the gold after the paper's frame: the warning says so
    assert diagnosis["gold_near_zero"] == 1.0 and "try extractor=task" in capsys.readouterr().err

    plain = Greater(GreaterConfig(steps=1, max_reasoning_tokens=5, batch_size=6)).optimize(
        make_problem(lm, tasks[TASK])
    )
    assert all("harness_train_score" not in s for s in plain.details["steps"])
    assert json.dumps(plain.details["diagnosis"])  # plain JSON for the results section
