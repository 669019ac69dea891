"""The Python API, `lm_eval_promptopt.simple_evaluate`, in this process: lm-eval's results dict
with our section, the run folder it writes, and its errors before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.planted import TASK_DIR
from lm_eval_promptopt.errors import PromptOptError


TASK = "planted_largest"


def test_returns_lm_evals_results_with_the_prompt_optimization_section(tiny_model: Path, evaluate, tmp_path: Path):
    """A candidates search on the tiny model: lm-eval's results dict (its keys, the held-out
    docs evaluated), our section, and the run folder; no results JSON (lm-eval's function writes none)."""
    candidates = ["Answer now.", "Be quick."]
    results = evaluate(
        model="hf", model_args=f"pretrained={tiny_model}", tasks=[TASK], device="cpu", batch_size=8, limit=4,
        include_path=TASK_DIR, optimizer="candidates", optimizer_args={"candidates": candidates, "train_size": 0, "dev_size": 4},
    )  # fmt: skip
    assert {"results", "configs", "config", "n-samples", "prompt_optimization"} <= set(results)
    assert results["n-samples"][TASK]["effective"] == 4 and results["config"]["limit"] == 4
    outcome = results["prompt_optimization"]["tasks"][TASK]
    assert outcome["final_instruction"] in ["", *candidates] and outcome["source"] == "search"
    (run_dir,) = tmp_path.glob("*/prompt_optimization_*")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert json.loads((run_dir / "prompt_optimization.json").read_text())["tasks"][TASK] == outcome
    assert not list(tmp_path.rglob("results_*.json"))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"optimizer": "candidates", "optimizer_args": {"steps": 3}},
            "unknown key(s) steps for optimizer 'candidates'",
        ),
        ({"optimizer": "none", "bootstrap_iter": 10}, "unknown lm-eval argument(s) bootstrap_iter"),
        ({"optimizer": "none", "limit": 0}, "--limit 0: give a number of held-out docs per task above 0"),
    ],
)
def test_bad_settings_raise_one_line_errors_before_anything_loads(evaluate, tmp_path: Path, kwargs: dict, needle: str):
    with pytest.raises(PromptOptError) as caught:
        evaluate(model="hf", model_args="pretrained=./no_such_model", tasks=[TASK], **kwargs)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "no_such_model").exists()
