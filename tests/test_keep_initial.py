"""Every optimizer's final choice includes the initial instruction: never worse on optimize-dev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_shared_data


pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"


@pytest.mark.parametrize("keep", [True, False])
def test_the_initial_instruction_is_kept_where_it_beats_the_search(
    keep: bool, local_tasks: Path, evaluate, capsys: pytest.CaptureFixture[str]
):
    """The oracle answers right only for "Focus on boolean_expressions.": every candidate is worse."""
    results = evaluate(
        model="oracle", include_path=local_tasks, tasks=[TASK], limit=10, optimizer="candidates",
        optimizer_args={"instruction": "Focus on boolean_expressions.", "candidates": ["Be quick.", "Answer now."], "keep_initial": keep},
    )  # fmt: skip
    outcome = results["prompt_optimization"]["tasks"][TASK]
    assert outcome["initial_dev_score"] == 1.0 and outcome["details"]["dev_scores"] == {
        "Be quick.": 0.0,
        "Answer now.": 0.0,
    }
    if keep:
        assert outcome["final_instruction"] == "Focus on boolean_expressions." and outcome["final_dev_score"] == 1.0
        assert outcome["initial_kept"] and outcome["search_choice"] == "Be quick."
        assert results["results"][TASK]["exact_match,flexible-extract"] == 1.0
        assert "keeping the initial instruction" in capsys.readouterr().out
        kinds = [json.loads(line).get("kind") for line in Path(outcome["trajectory_file"]).read_text().splitlines()]
        assert "initial_kept" in kinds
    else:  # the search's own choice, as the papers pick it
        assert outcome["final_instruction"] == "Be quick." and outcome["final_dev_score"] == 0.0
        assert not outcome["initial_kept"] and outcome["search_choice"] is None
