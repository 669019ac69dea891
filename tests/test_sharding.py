"""Scale-out: under `accelerate launch --num_processes 2` the searches are split between processes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import OFFLINE, load_results, needs_shared_data, run_lm_eval


pytestmark = [
    needs_shared_data,
    pytest.mark.skipif(
        shutil.which("accelerate") is None, reason="needs the `accelerate` launcher (pip install accelerate)"
    ),
]
TASKS = ["bbh_cot_zeroshot_boolean_expressions", "bbh_cot_zeroshot_navigate", "bbh_cot_zeroshot_snarks"]


def test_two_processes_split_the_searches_and_match_one_process(tiny_model: Path, local_tasks: Path, tmp_path: Path):
    args = [
        "--model", "hf", "--model_args", f"pretrained={tiny_model}", "--device", "cpu",
        "--include_path", str(local_tasks), "--tasks", ",".join(TASKS), "--optimize", "greater",
        "--optimize_args", "steps=2,train_size=3,dev_size=3", "--gen_kwargs", "max_gen_toks=4", "--limit", "3",
    ]  # fmt: skip
    run_lm_eval([*args, "--output_path", str(tmp_path / "one")])
    launch = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lm_eval"]  # fmt: skip
    env = {**os.environ, **OFFLINE, "LM_EVAL_PROMPTOPT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*launch, *args, "--output_path", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    one, two = load_results(tmp_path / "one"), load_results(tmp_path / "two")  # one results file: the main process's
    searched = two["prompt_optimization"]["tasks"]
    assert list(searched) == TASKS and {t["process"] for t in searched.values()} == {0, 1}
    assert [t["process"] for t in searched.values()] == [0, 1, 0]  # round robin in task order
    for name in TASKS:
        assert searched[name]["final_instruction"] == one["prompt_optimization"]["tasks"][name]["final_instruction"]
        assert two["results"][name] == one["results"][name]
        assert two["n-samples"][name]["effective"] == 3
    assert proc.stdout.count("prompt optimization outputs:") == 1
