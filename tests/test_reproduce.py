"""scripts/reproduce.py --dry-run: the papers' tables as commands that the real `lm_eval` parser accepts."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


SCRIPT = REPO / "scripts" / "reproduce.py"


def dry_run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def commands(output: str) -> list[list[str]]:
    return [shlex.split(line) for line in output.splitlines() if line.startswith("lm_eval ")]


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch):
    """lm-eval's own CLI parser (with our argument group), then our --optimize_args validation."""
    from lm_eval._cli.harness import HarnessCLI

    from lm_eval_promptopt.optimizers import get_optimizer
    from lm_eval_promptopt.options import parse_optimize_args

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # gpt-3.5-turbo on the OpenAI API wants one
    assert argv[0] == "lm_eval"
    args = HarnessCLI()._parser.parse_args(["run", *argv[1:]])
    optimizer = get_optimizer(args.optimize)
    options, config = parse_optimize_args(args.optimize_args, optimizer.name, optimizer.config_class)
    return args, options, config


@pytest.fixture(scope="module")
def greater_output() -> str:
    return dry_run("greater", "--table", "1")


@pytest.fixture(scope="module")
def gpo_output() -> str:
    return dry_run(
        "gpo",
        "--table",
        "5",
        "--optimizer-model",
        "Qwen/Qwen2.5-7B-Instruct",
        "--optimizer-base-url",
        "http://localhost:8000/v1",
    )


def test_greater_table_1_commands(greater_output: str, monkeypatch: pytest.MonkeyPatch):
    argvs = commands(greater_output)
    assert len(argvs) == 12, "2 models x 3 datasets x (greater, zero-shot CoT baseline)"
    seen = set()
    for argv in argvs:
        args, options, config = parse(argv, monkeypatch)
        tasks = args.tasks
        seen.add((args.model_args["pretrained"], args.optimize, len(tasks)))
        assert args.model == "hf" and args.apply_chat_template and args.output_path
        if args.optimize == "greater":
            assert options.split == "paper" and not options.keep_initial and options.compare_baseline
            assert config.steps == 125 and (config.topk, config.topq) == (5, 3)
        else:
            assert args.optimize == "none" and options.split == "greater"
        assert tasks in (["gsm8k_cot_zeroshot"], ["folio_cot_zeroshot"]) or (
            len(tasks) == 21 and all(t.startswith("bbh_cot_zeroshot_") for t in tasks)
        )
    assert {m for m, _, _ in seen} == {"meta-llama/Meta-Llama-3-8B-Instruct", "google/gemma-2-9b-it"}
    assert (
        "bbh_cot_zeroshot_word_sorting" not in greater_output
        and "bbh_cot_zeroshot_dyck_languages" not in greater_output
    )
    # projected cost and expected wall time per command, and the paper's numbers
    assert (
        greater_output.count("expected wall time") == 12
        and "expected search wall time" in greater_output
        and "h per task" in greater_output
    )
    for number in ("68.70", "62.20", "76.60", "71.70", "82.60", "89.40", "62.60", "69.10"):
        assert f"| {number} |" in greater_output, number


def test_gpo_table_5_commands(gpo_output: str, monkeypatch: pytest.MonkeyPatch):
    argvs = commands(gpo_output)
    assert len(argvs) == 3
    tasks = []
    for argv in argvs:
        args, options, config = parse(argv, monkeypatch)
        assert (
            args.model_args == {"pretrained": "meta-llama/Llama-2-7b-chat-hf", "dtype": "bfloat16"}
            and args.optimize == "gpo"
        )
        assert options.split == "paper" and options.compare_baseline
        assert (
            config.optimizer_model == "Qwen/Qwen2.5-7B-Instruct"
            and config.optimizer_base_url == "http://localhost:8000/v1"
        )
        tasks += args.tasks
    assert tasks == ["bbh_cot_zeroshot", "gsm8k_cot_zeroshot", "mmlu"]
    for number in ("35.43", "29.91", "28.33", "24.00", "39.14", "36.36", "46.61"):
        assert f"| {number} |" in gpo_output, number
    default = commands(dry_run("gpo", "--table", "5"))
    assert all("optimizer_model=gpt-3.5-turbo" in " ".join(argv) for argv in default)


def test_other_tables_are_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "greater", "--table", "3", "--dry-run"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode != 0 and "Table 1" in proc.stderr


def test_compare_reads_results_under_out(tmp_path: Path):
    """--compare-only: paper vs ours from the results JSONs found under --out (here, two written by hand)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduce
    finally:
        sys.path.pop(0)
    out = tmp_path / "greater_table1" / "Meta-Llama-3-8B-Instruct" / "GSM8K" / "seed0"
    for kind, score, base in (("greater", 0.83, 0.79), ("zs_cot", 0.80, None)):
        section = None
        if kind == "greater":
            section = {"optimizer": "greater", "optimizer_config": {}, "options": {}, "seeds": {}, "tasks": {
                "gsm8k_cot_zeroshot": {"metric": "exact_match,flexible-extract", "plan": {}, "final_instruction": "Use x.", "source": "search"}},
                "baseline_vs_optimized": [{"name": "gsm8k_cot_zeroshot", "metric": "exact_match,flexible-extract", "baseline": base, "optimized": score, "delta": score - base}]}  # fmt: skip
        data = {
            "model_name": "meta-llama/Meta-Llama-3-8B-Instruct",
            "results": {"gsm8k_cot_zeroshot": {"exact_match,flexible-extract": score}},
        }
        if section:
            data["prompt_optimization"] = section
        (out / kind).mkdir(parents=True)
        (out / kind / "results_x.json").write_text(json.dumps(data))
    table = reproduce.compare(
        "greater", reproduce.jobs("greater", 1, reproduce.argparse.Namespace(out=str(tmp_path), seeds="0"))
    )
    row = next(line for line in table.splitlines() if "Meta-Llama-3-8B-Instruct | GSM8K" in line)
    assert row.rstrip(" |").split(" | ")[2:7] == ["82.60", "83.00", "79.60", "80.00", "+3.00"]
