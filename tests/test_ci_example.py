"""examples/ci/: the local script the workflow runs, twice; the second run is all cache hits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import CI_SCRIPT, CI_TASK, run_ci_script, squeezed

from lm_eval_promptopt import __version__
from lm_eval_promptopt.report.leaderboard import scores_table


pytestmark = pytest.mark.xdist_group("ci_run")  # one worker builds the shared CI run


def sources(out: Path) -> list[str]:
    files = sorted((out / "results").rglob("results_*.json"))
    return [t["source"] for f in files for t in json.loads(f.read_text())["prompt_optimization"]["tasks"].values()]


def test_a_warm_cache_does_no_search_and_gives_the_same_table(ci_run: dict):
    first = ci_run["out"]
    assert sources(first) == ["search"] * 8, "2 models x 4 tasks"
    instructions = ci_run["cache"] / f"instructions-{__version__}"
    assert len(list(instructions.glob("*.json"))) == 8, "one cache entry per model and task"
    assert "0 entries restored" in ci_run["proc"].stdout and "8 entries to save" in ci_run["proc"].stdout
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.json"):
        assert (first / name).is_file(), name

    second = ci_run["root"] / "out2"
    proc = run_ci_script(ci_run["models"], second, ci_run["cache"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sources(second) == ["cache"] * 8, "a warm cache must do no search"
    assert "8 entries restored" in proc.stdout and "reusing the cached search" in proc.stderr + proc.stdout
    table_1, table_2 = (squeezed((out / "leaderboard.md").read_text()) for out in (first, second))
    assert scores_table(table_1) == scores_table(table_2)
    assert f"| {CI_TASK} |" in scores_table(table_2) and "| planted (group) |" in scores_table(table_2)
    provenance = table_2.split("| source | results |", 1)[1]
    assert provenance.count("| cache |") == 2 and "search" not in provenance
    cells_1, cells_2 = (json.loads((out / "leaderboard.json").read_text())["rows"] for out in (first, second))
    assert [r["cells"] for r in cells_1] == [r["cells"] for r in cells_2]


def test_the_script_checks_its_arguments_and_the_workflow_runs_it():
    proc = subprocess.run(["bash", str(CI_SCRIPT), "--tasks", CI_TASK], capture_output=True, text=True)
    assert proc.returncode == 2 and "no models" in proc.stderr
    assert subprocess.run(["bash", "-n", str(CI_SCRIPT)]).returncode == 0
    workflow = yaml.safe_load((CI_SCRIPT.parent / "leaderboard.yml").read_text())
    steps = workflow["jobs"]["leaderboard"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/cache/restore") for u in uses) and any(
        u.startswith("actions/cache/save") for u in uses
    )
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    restore = next(s for s in steps if s.get("uses", "").startswith("actions/cache/restore"))
    assert "PLUGIN_VERSION" in restore["with"]["key"], "the cache is keyed by the plugin version"
    assert any("examples/ci/leaderboard.sh" in s.get("run", "") for s in steps)
