"""End to end through the real `lm_eval` entry point, lm-eval's own task definitions and real data.

Most runs use the deterministic stand-in model `oracle` (tests/oracle_model.py): it answers right
only when the instruction says "Focus on <task key>", so every expected number follows from the data.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, hf_on_cpu, load_results, needs_shared_data, run_lm_eval, squeezed


pytestmark = needs_shared_data


def samples_of(output: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(output / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def bbh_run(local_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """Two BBH subtasks, three candidates each, with the baseline comparison and logged samples."""
    out = tmp_path_factory.mktemp("bbh_run")
    proc = run_lm_eval(
        [
            "--model",
            "oracle",
            "--include_path",
            str(local_tasks),
            "--tasks",
            "bbh_cot_zeroshot_boolean_expressions,bbh_cot_zeroshot_snarks",
            "--optimize",
            "candidates",
            "--optimize_args",
            "candidates=Be quick.|Focus on boolean_expressions.|Focus on snarks.,compare_baseline=true",
            "--log_samples",
            "--output_path",
            str(out),
        ],
        entry="oracle_cli",
    )
    return load_results(out), proc.stdout, out


def test_each_task_gets_its_own_best_instruction(bbh_run):
    results, _, _ = bbh_run
    section = results["prompt_optimization"]
    assert section["schema_version"] == 1 and section["optimizer"] == "candidates"
    assert section["seeds"] == {"split_and_search": 0, "random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
    tasks = section["tasks"]
    assert tasks["bbh_cot_zeroshot_boolean_expressions"]["final_instruction"] == "Focus on boolean_expressions."
    assert tasks["bbh_cot_zeroshot_snarks"]["final_instruction"] == "Focus on snarks."
    for name, task in tasks.items():
        assert task["initial_instruction"] == "" and task["initial_dev_score"] == 0.0
        assert task["final_dev_score"] == 1.0
        assert results["results"][name]["exact_match,flexible-extract"] == 1.0


def test_trajectory_lists_every_candidate_with_its_dev_score(bbh_run):
    results, _, _ = bbh_run
    task = results["prompt_optimization"]["tasks"]["bbh_cot_zeroshot_snarks"]
    lines = Path(task["trajectory_file"]).read_text(encoding="utf-8").splitlines()
    scored = {json.loads(line)["instruction"]: json.loads(line)["score"] for line in lines}
    assert scored == {"": 0.0, "Be quick.": 0.0, "Focus on boolean_expressions.": 0.0, "Focus on snarks.": 1.0}
    assert task["evaluations"] == 4


def test_splits_are_recorded_disjoint_and_only_held_out_is_evaluated(bbh_run):
    results, _, out = bbh_run
    for name, n, train, dev in [
        ("bbh_cot_zeroshot_boolean_expressions", 250, 50, 100),
        ("bbh_cot_zeroshot_snarks", 178, 39, 79),
    ]:
        plan = results["prompt_optimization"]["tasks"][name]["plan"]
        tr, dv, ho = (set(plan[k]["indices"]) for k in ("train", "dev", "heldout"))
        assert (len(tr), len(dv), len(ho)) == (train, dev, n - train - dev)
        assert not (tr & dv or tr & ho or dv & ho) and tr | dv | ho == set(range(n))
        assert results["n-samples"][name]["effective"] == len(ho)
        logged = samples_of(out, name)
        assert {s["doc_id"] for s in logged} == ho
        instruction = results["prompt_optimization"]["tasks"][name]["final_instruction"]
        assert all(s["arguments"]["gen_args_0"]["arg_0"].startswith(instruction + "\n\n") for s in logged)


def test_baseline_comparison_is_printed_and_saved(bbh_run):
    results, stdout, _ = bbh_run
    rows = {r["name"]: r for r in results["prompt_optimization"]["baseline_vs_optimized"]}
    assert rows["bbh_cot_zeroshot_snarks"] == {
        "name": "bbh_cot_zeroshot_snarks",
        "metric": "exact_match,flexible-extract",
        "baseline": 0.0,
        "optimized": 1.0,
        "delta": 1.0,
    }
    assert "| bbh_cot_zeroshot_snarks | exact_match,flexible-extract | 0.0000 | 1.0000 | +1.0000 |" in squeezed(stdout)
    run_dir = Path(results["prompt_optimization"]["run_dir"])
    assert "+1.0000" in (run_dir / "baseline_vs_optimized.md").read_text(encoding="utf-8")
    assert json.loads((run_dir / "optimized_prompts.json").read_text(encoding="utf-8")) == {
        "bbh_cot_zeroshot_boolean_expressions": "Focus on boolean_expressions.",
        "bbh_cot_zeroshot_snarks": "Focus on snarks.",
    }


def test_show_prints_the_run_and_writes_the_plot(bbh_run):
    results, _, _ = bbh_run
    run_dir = Path(results["prompt_optimization"]["run_dir"])
    (run_dir / "dev_scores.png").unlink()
    proc = run_lm_eval(["show", str(run_dir)], entry="lm-eval-promptopt")
    assert "instruction: 'Focus on snarks.'" in proc.stdout
    assert "dev score: 0.0000 -> 1.0000  (exact_match,flexible-extract)  stop: completed" in proc.stdout
    assert "4 harness evaluations" in proc.stdout
    assert (run_dir / "dev_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = run_lm_eval(["show", str(run_dir.parent)], entry="lm-eval-promptopt", check=False)
    assert missing.returncode != 0 and "has no prompt_optimization.json" in missing.stderr


def test_mmlu_group_and_gsm8k_splits_and_scores(local_tasks: Path, evaluate):
    """MMLU optimizes on validation and aggregates its group; GSM8k avoids its few-shot exemplars
    (through the Python API, in process)."""
    subjects = ["anatomy", "astronomy", "virology"]
    candidates = [f"Focus on {s}." for s in [*subjects, "arithmetic"]]
    results = evaluate(
        model="oracle", include_path=local_tasks, tasks=[*(f"mmlu_{s}" for s in subjects), "gsm8k"],
        optimizer="candidates", optimizer_args={"candidates": candidates, "compare_baseline": True},
    )  # fmt: skip
    tasks = results["prompt_optimization"]["tasks"]
    for subject in subjects:
        task = tasks[f"mmlu_{subject}"]
        assert task["final_instruction"] == f"Focus on {subject}."
        assert task["plan"]["train"]["split"] == task["plan"]["dev"]["split"] == "validation"
        assert task["plan"]["heldout"]["split"] == "test" and task["metric"] == "acc,none"
        assert results["results"][f"mmlu_{subject}"]["acc,none"] == 1.0
    gsm = tasks["gsm8k"]
    assert gsm["final_instruction"] == "Focus on arithmetic."
    assert gsm["plan"]["train"]["split"] == "train" and len(gsm["plan"]["heldout"]["indices"]) == 1319
    assert "few-shot exemplars of 'train' excluded" in gsm["plan"]["rule"]
    assert results["results"]["gsm8k"]["exact_match,strict-match"] == 1.0
    rows = {r["name"]: r for r in results["prompt_optimization"]["baseline_vs_optimized"]}
    assert rows["gsm8k"]["baseline"] == 0.0 and rows["gsm8k"]["delta"] == 1.0


def test_group_aggregation_is_lm_evals(local_tasks: Path, evaluate):
    """The `bbh_cot_zeroshot` group score is lm-eval's size-weighted mean of held-out subtask scores
    (through the Python API, in process)."""
    results = evaluate(
        model="oracle", include_path=local_tasks, tasks=["bbh_cot_zeroshot"], optimizer="none",
        optimizer_args="instruction=Focus on navigate.,train_size=1,dev_size=2,compare_baseline=true",
    )  # fmt: skip
    leaves = results["group_subtasks"]["bbh_cot_zeroshot"]
    assert len(leaves) == 27 and set(results["prompt_optimization"]["tasks"]) == set(leaves)
    sizes = {t: results["n-samples"][t]["effective"] for t in leaves}
    assert all(sizes[t] == results["n-samples"][t]["original"] - 3 for t in leaves)
    scores = {t: results["results"][t]["exact_match,flexible-extract"] for t in leaves}
    assert scores["bbh_cot_zeroshot_navigate"] == 1.0
    expected = sum(scores[t] * sizes[t] for t in leaves) / sum(sizes.values())
    group = results["groups"]["bbh_cot_zeroshot"]["exact_match,flexible-extract"]
    assert group == pytest.approx(expected)
    rows = {r["name"]: r for r in results["prompt_optimization"]["baseline_vs_optimized"]}
    assert rows["bbh_cot_zeroshot"]["optimized"] == pytest.approx(expected)
    assert rows["bbh_cot_zeroshot"]["delta"] == 0.0  # `none`: the baseline is the same instruction


def test_folio_found_automatically_via_companion_command(tiny_model: Path, tmp_path: Path):
    """`lm-eval-promptopt run` with a real HF model, a chat template and our FOLIO configs (no --include_path)."""
    run_lm_eval(
        [
            "run",
            *hf_on_cpu(tiny_model),
            "--tasks",
            "folio",
            "--apply_chat_template",
            "--optimize",
            "none",
            "--optimize_args",
            "instruction=Be logical.,train_size=2,dev_size=3",
            "--limit",
            "2",
            "--gen_kwargs",
            "max_gen_toks=4",
            "--log_samples",
            "--output_path",
            str(tmp_path),
        ],
        entry="lm-eval-promptopt",
        FOLIO_DATA_DIR=str(SHARED_DATA / "folio"),
    )
    results = load_results(tmp_path)
    tasks = results["prompt_optimization"]["tasks"]
    assert set(tasks) == {"folio_cot_zeroshot", "folio_mc"}
    for name, task in tasks.items():
        assert task["placement"] == "system_message" and task["final_instruction"] == "Be logical."
        assert task["plan"]["train"]["split"] == "train" and task["plan"]["heldout"]["split"] == "validation"
        assert (
            task["plan"]["heldout"]["planned_size"] == 204 and len(task["plan"]["heldout"]["indices"]) == 2
        )  # --limit 2
        assert results["n-samples"][name]["effective"] == 2
        prompt = samples_of(tmp_path, name)[0]["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.startswith("<|system|>\nBe logical.<|end|>\n<|user|>\nPremises:")


def test_real_model_through_the_lm_eval_console_script(tiny_model: Path, local_tasks: Path, tmp_path: Path):
    """The stock `lm_eval` script, a real HF model, lm-eval's BBH, MMLU and GSM8k task definitions."""
    tasks = ["bbh_cot_zeroshot_boolean_expressions", "mmlu_anatomy", "gsm8k_cot_zeroshot"]
    proc = run_lm_eval(
        [
            *hf_on_cpu(tiny_model),
            "--include_path",
            str(local_tasks),
            "--tasks",
            ",".join(tasks),
            "--optimize",
            "candidates",
            "--optimize_args",
            "candidates=Be brief.|Be careful.,train_size=2,dev_size=3",
            "--limit",
            "3",
            "--gen_kwargs",
            "max_gen_toks=8",
            "--output_path",
            str(tmp_path),
        ]
    )
    results = load_results(tmp_path)
    section = results["prompt_optimization"]["tasks"]
    assert set(section) == set(tasks)
    for name in tasks:
        assert section[name]["final_instruction"] in ("Be brief.", "Be careful.")
        assert section[name]["placement"] == "text_prefix"
        assert results["n-samples"][name]["effective"] == 3
        assert len(Path(section[name]["trajectory_file"]).read_text().splitlines()) == 3
    assert "prompt optimization outputs:" in proc.stdout
