"""Reuse: the instruction cache (hit, miss, refresh, corruption) and --optimized_prompts (transfer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import evaluate_in_process, hf_on_cpu, load_results, needs_shared_data, run_lm_eval

from lm_eval_promptopt.errors import PromptOptError


pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"


def run(local_tasks: Path, out: Path, cache: Path, extra: str = "") -> dict:
    """A candidates search through the Python API (the `--optimize_args` text as `optimizer_args`)."""
    results = evaluate_in_process(
        model="oracle", include_path=local_tasks, tasks=[TASK], optimizer="candidates",
        optimizer_args=f"candidates=Be quick.|Focus on boolean_expressions.{extra}", optimize_cache=cache, output_path=out,
    )  # fmt: skip
    return results["prompt_optimization"]["tasks"][TASK]


@pytest.fixture(scope="module")
def searched(local_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One search into a fresh instruction cache: the cache tests go on from it, the transfer test takes its prompts."""
    cache = tmp_path_factory.mktemp("reuse") / "cache"
    return run(local_tasks, cache.parent / "1", cache), cache


def test_cache_hit_miss_refresh_and_corruption(searched: tuple[dict, Path], local_tasks: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):  # fmt: skip
    first, cache = searched
    assert first["source"] == "search" and first["evaluations"] == 3
    entry = Path(first["cache_entry"])
    assert entry.parent == cache and json.loads(entry.read_text())["key"]["task"] == TASK

    hit = run(local_tasks, tmp_path / "2", cache)
    assert hit["source"] == "cache" and hit["cache_entry"] == str(entry)
    assert hit["final_instruction"] == first["final_instruction"] == "Focus on boolean_expressions."
    assert f"{TASK}: reusing the cached search" in capsys.readouterr().out
    assert '"kind": "cache_hit"' in Path(hit["trajectory_file"]).read_text()

    refreshed = run(local_tasks, tmp_path / "3", cache, ",refresh=true")
    assert refreshed["source"] == "search"

    other_seed = run(local_tasks, tmp_path / "4", cache, ",seed=7")
    assert other_seed["source"] == "search" and other_seed["cache_entry"] != str(entry)

    entry.write_text(entry.read_text()[:-40])  # a partial write
    again = run(local_tasks, tmp_path / "5", cache)
    assert again["source"] == "search" and "ignoring corrupt cache entry" in caplog.text
    assert run(local_tasks, tmp_path / "6", cache)["source"] == "cache"  # rewritten whole


def test_optimized_prompts_transfer_to_another_model(
    searched: tuple[dict, Path], local_tasks: Path, tiny_model: Path, tmp_path: Path
):
    """Prompts from one run (oracle) evaluated, with no search, by another model (a real HF model)."""
    first, _ = searched
    written = Path(first["trajectory_file"]).parents[1] / "optimized_prompts.json"
    assert json.loads(written.read_text()) == {TASK: "Focus on boolean_expressions."}
    prompts = tmp_path / "shared_prompts.json"  # a plain {task: instruction} file, away from its run
    prompts.write_text(written.read_text())
    out = tmp_path / "transfer"
    proc = run_lm_eval(
        [
            *hf_on_cpu(tiny_model),
            "--include_path",
            str(local_tasks),
            "--tasks",
            TASK,
            "--optimized_prompts",
            str(prompts),
            "--limit",
            "2",
            "--gen_kwargs",
            "max_gen_toks=4",
            "--log_samples",
            "--output_path",
            str(out),
        ]
    )
    results = load_results(out)
    task = results["prompt_optimization"]["tasks"][TASK]
    assert task["source"] == "given" and task["final_instruction"] == "Focus on boolean_expressions."
    assert task["details"]["transfer_check"]["check"] == "unchecked"
    assert (
        f"{prompts} records no split plan, so whether it was optimized on this run's held-out docs cannot be checked"
        in proc.stdout
    )
    assert task["evaluations"] == 0 and results["n-samples"][TASK]["effective"] == 2
    (samples,) = out.glob("*/samples_*.jsonl")
    assert json.loads(samples.read_text().splitlines()[0])["arguments"]["gen_args_0"]["arg_0"].startswith(
        "Focus on boolean_expressions.\n\n"
    )


def test_optimized_prompts_errors(local_tasks: Path, tmp_path: Path, evaluate):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"task": "other_task", "instruction": "x"}) + "\n")
    with pytest.raises(PromptOptError, match=f"--optimized_prompts has no instruction for: {TASK}") as missing:
        evaluate(model="oracle", include_path=local_tasks, tasks=[TASK], optimized_prompts=jsonl)
    bad = tmp_path / "bad.txt"
    bad.write_text("not json")
    with pytest.raises(PromptOptError, match="neither JSON") as unreadable:
        evaluate(model="oracle", tasks=[TASK], optimized_prompts=bad)
    assert missing.value.exit_code == unreadable.value.exit_code == 2


def test_a_failed_search_keeps_the_others(local_tasks: Path, tmp_path: Path, evaluate, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """Exit code 5, one line; the finished search is written and cached; a rerun resumes the run and
    reuses it, and another run finds it in the cache."""
    cache = tmp_path / "cache"
    args = dict(model="oracle", include_path=local_tasks, tasks=[TASK, "bbh_cot_zeroshot_navigate"], optimizer="flaky",
                optimize_cache=cache, output_path=tmp_path / "out")  # fmt: skip
    monkeypatch.setenv("FLAKY_FAIL_ON", "bbh_cot_zeroshot_navigate")
    with pytest.raises(PromptOptError) as failed:
        evaluate(**args)
    monkeypatch.delenv("FLAKY_FAIL_ON")
    assert failed.value.exit_code == 5 and "\n" not in str(failed.value)
    assert "optimizer failed: search failed for bbh_cot_zeroshot_navigate (RuntimeError: search crashed" in str(
        failed.value
    )
    (run_dir,) = (tmp_path / "out").glob("*/prompt_optimization_*")
    assert list(json.loads((run_dir / "prompt_optimization.json").read_text())["tasks"]) == [TASK]
    assert "search crashed on bbh_cot_zeroshot_navigate" in (run_dir / "error.log").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert len(list(cache.glob("*.json"))) == 1
    capsys.readouterr()
    evaluate(**args)  # the same command: resumes that run, reuses the finished search
    rerun = capsys.readouterr().out
    assert f"resuming the interrupted run in {run_dir}" in rerun
    assert f"{TASK}: search finished in the interrupted run; reusing it" in rerun
    assert len(list((tmp_path / "out").glob("*/prompt_optimization_*"))) == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    evaluate(**{**args, "output_path": tmp_path / "out2"})
    assert f"{TASK}: reusing the cached search" in capsys.readouterr().out


def test_budgets_and_keep_initial_are_in_the_key(
    searched: tuple[dict, Path], local_tasks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A search cut short by max_evals is not reused by a run without the limit; keep_initial=false
    does not reuse the keep_initial=true search; a search stopped by its time limit is not cached."""
    cut = run(local_tasks, tmp_path / "1", tmp_path / "cache", ",max_evals=2")
    assert cut["source"] == "search" and cut["stop_reason"] == "max_evals" and cut["final_instruction"] == "Be quick."
    full = run(local_tasks, tmp_path / "2", tmp_path / "cache")
    assert full["source"] == "search" and full["stop_reason"] == "completed"
    assert full["final_instruction"] == "Focus on boolean_expressions."

    first, cache = searched
    papers = run(local_tasks, tmp_path / "3", cache, ",keep_initial=false")
    assert papers["source"] == "search" and papers["cache_entry"] != first["cache_entry"]

    timed = run(local_tasks, tmp_path / "4", cache, ",time_limit=0.000001")
    assert timed["source"] == "search" and timed["stop_reason"] == "time_limit" and timed["cache_entry"] is None
    assert f"{TASK}: the time limit stopped this search, so it is not cached" in capsys.readouterr().out
