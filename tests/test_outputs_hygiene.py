"""What a run writes, and where: file modes under the umask, the results JSON beside the run folder,
lm-eval's own `system_instruction`, given prompts for other tasks, and no plot without dev scores.
Real `lm_eval` runs (oracle task model), started together to overlap start-up."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import load_results, needs_shared_data
from test_gpo import Background

from lm_eval_promptopt.report.run_report import PER_TASK_INSTRUCTIONS


pytestmark = needs_shared_data
BBH, NAVIGATE = "bbh_cot_zeroshot_boolean_expressions", "bbh_cot_zeroshot_navigate"
FOCUS = "Focus on boolean_expressions."


@pytest.fixture(scope="module")
def runs(local_tasks: Path, tmp_path_factory: pytest.TempPathFactory):
    """`searched`: two tasks, each choosing its own candidate, under umask 002 (a shared cache).
    `given`: --optimized_prompts with one instruction for this run's task and one for another;
    `warnings_only`: the same at lm-eval's log level WARNING."""
    common = ["--model", "oracle", "--include_path", str(local_tasks), "--limit", "2"]
    cache = tmp_path_factory.mktemp("hygiene_cache")
    prompts = tmp_path_factory.mktemp("hygiene_prompts") / "prompts.json"
    prompts.write_text(json.dumps({BBH: FOCUS, "bbh_cot_zeroshot_not_in_this_run": "Be quick."}))
    old = os.umask(0o002)
    try:
        started = {
            "searched": Background(
                [
                    *common,
                    "--tasks",
                    f"{BBH},{NAVIGATE}",
                    "--optimize",
                    "candidates",
                    "--optimize_cache",
                    str(cache),
                    "--optimize_args",
                    f"candidates={FOCUS}|Focus on navigate.,train_size=0,dev_size=4",
                ],
                tmp_path_factory.mktemp("hygiene_searched"),
                entry="oracle_cli",
            ),
            "given": Background(
                [*common, "--tasks", BBH, "--optimized_prompts", str(prompts)],
                tmp_path_factory.mktemp("hygiene_given"),
                entry="oracle_cli",
            ),
            "warnings_only": Background(
                [*common, "--tasks", BBH, "--optimized_prompts", str(prompts)],
                tmp_path_factory.mktemp("hygiene_quiet"),
                entry="oracle_cli",
                LMEVAL_LOG_LEVEL="WARNING",
            ),
        }
    finally:
        os.umask(old)
    try:
        yield {**started, "cache": cache}
    finally:
        for run in started.values():
            run.stop()


def run_dir_of(out: Path) -> Path:
    (run_dir,) = out.glob("**/prompt_optimization_*")
    return run_dir


def test_files_follow_the_umask_and_results_land_beside_the_run_folder(runs):
    """Every file, ours (written atomically) and lm-eval's, gets the umask's mode; lm-eval's
    `system_instruction` points to the per-task instructions; with no model_args the results JSON
    is in the run folder's model folder (lm-eval alone would pick a random one)."""
    runs["searched"].result()
    out = runs["searched"].out
    files = [p for root in (out, runs["cache"]) for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 8 and any(p.name.startswith("results_") for p in files) and list(runs["cache"].glob("*.json"))
    modes = {str(p.relative_to(p.parents[2])): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o664"}, modes
    (results_file,) = out.glob("**/results_*.json")
    assert results_file.parent == run_dir_of(out).parent == out / "oracle"
    results = load_results(out)
    section = results["prompt_optimization"]
    assert {t: o["final_instruction"] for t, o in section["tasks"].items()} == {
        BBH: FOCUS,
        NAVIGATE: "Focus on navigate.",
    }
    assert results["system_instruction"] == PER_TASK_INSTRUCTIONS and results["system_instruction_sha"] is None
    assert results["model_name"] == "oracle"


def test_tests_run_in_their_tmp_path(tmp_path: Path):
    """A run without --output_path writes ./lm_eval_promptopt_runs: in a test, that is its tmp_path,
    never the checkout (conftest's autouse fixture; `lm_eval` subprocesses inherit the directory)."""
    assert Path.cwd() == tmp_path


def test_given_prompts_for_other_tasks_are_named_and_no_empty_plot(runs):
    proc = runs["given"].result()
    line = "lm_eval_promptopt: --optimized_prompts: ignoring the instructions for tasks not in this run: bbh_cot_zeroshot_not_in_this_run"
    assert proc.stdout.count(line) == 1
    run_dir = run_dir_of(runs["given"].out)
    assert (run_dir / "optimized_prompts.json").is_file() and not (run_dir / "dev_scores.png").exists()
    assert "dev_scores.png" not in proc.stdout
    quiet = runs["warnings_only"].result()  # our notes follow lm-eval's log level; the summary still prints
    assert (
        "ignoring the instructions" not in quiet.stdout + quiet.stderr
        and "prompt optimization outputs:" in quiet.stdout
    )
    results = load_results(runs["given"].out)
    assert results["system_instruction"] == FOCUS and results["system_instruction_sha"]  # the one instruction used
    assert results["results"][BBH]["exact_match,flexible-extract"] == 1.0
