"""Tests of the offline test bed against the real lm-eval harness (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from conftest import SHARED_DATA, needs_shared_data, run_lm_eval
from support.testbed import build_tiny_model, main
from transformers import AutoTokenizer


SYSTEM = "You are a careful assistant."
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}]
LIMIT = 2


def lm_eval_args(tiny_model: Path, local_tasks: Path, out: Path) -> list[str]:
    """A plain (no --optimize) run over a BBH leaf task, the `mmlu` group and GSM8k, with chat template."""
    return [
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tiny_model}",
        "--device",
        "cpu",  # not `device=cpu` in --model_args: the CLI passes its own default device too
        "--include_path",
        str(local_tasks),
        "--tasks",
        "bbh_cot_zeroshot_boolean_expressions,mmlu,gsm8k_cot_zeroshot",
        "--limit",
        str(LIMIT),
        "--gen_kwargs",
        "max_gen_toks=16",
        "--apply_chat_template",
        "--system_instruction",
        SYSTEM,
        "--log_samples",
        "--output_path",
        str(out),
    ]


@pytest.fixture(scope="module")
def lm_eval_run(tiny_model: Path, local_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("lm_eval_out")
    run_lm_eval(lm_eval_args(tiny_model, local_tasks, out))
    (results_file,) = out.glob("*/results_*.json")
    samples = {
        path.name.removeprefix("samples_").rsplit("_", 1)[0]: [json.loads(line) for line in path.open()]
        for path in out.glob("*/samples_*.jsonl")
    }
    return {"results": json.loads(results_file.read_text()), "samples": samples}


def test_chat_template_renders_system_message(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n"
    ids = tokenizer.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|system|>")
    assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token and tokenizer.unk_token


def test_no_system_role_template_raises(tiny_model_no_system: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_no_system)
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        tokenizer.apply_chat_template(CHAT, tokenize=False)
    text = tokenizer.apply_chat_template(CHAT[1:], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")


def test_hflm_silently_drops_system_message_without_system_role(tiny_model_no_system: Path) -> None:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_model_no_system), device="cpu")
    assert SYSTEM not in lm.apply_chat_template(CHAT)


def test_build_is_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name


def test_cli_builds_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["model", str(tmp_path / "cli_model")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli_model")
    assert (tmp_path / "cli_model" / "model.safetensors").is_file()


@needs_shared_data
def test_overrides_keep_lm_eval_config_and_swap_dataset(local_tasks: Path) -> None:
    import yaml

    cfg = yaml.safe_load((local_tasks / "mmlu_abstract_algebra.yaml").read_text())
    assert Path(cfg["include"]).is_file() and "lm_eval" in cfg["include"]
    assert cfg["dataset_path"] == "json" and "dataset_name" not in cfg
    files = {split: Path(path).resolve() for split, path in cfg["dataset_kwargs"]["data_files"].items()}
    assert files == {  # (resolved: ../shared may be a symlink)
        "dev": (SHARED_DATA / "mmlu" / "abstract_algebra.dev.jsonl").resolve(),
        "validation": (SHARED_DATA / "mmlu" / "abstract_algebra.validation.jsonl").resolve(),
        "test": (SHARED_DATA / "mmlu" / "abstract_algebra.test.jsonl").resolve(),
    }
    names = {p.stem for p in local_tasks.glob("*.yaml")}
    assert {"gsm8k", "gsm8k_cot", "gsm8k_cot_zeroshot", "bbh_cot_fewshot_snarks"} <= names
    assert len([n for n in names if n.startswith("bbh_cot_zeroshot_")]) == 27


@needs_shared_data
def test_lm_eval_runs_bbh_leaf_task_with_chat_template(lm_eval_run: dict) -> None:
    results = lm_eval_run["results"]
    task = "bbh_cot_zeroshot_boolean_expressions"
    assert results["n-samples"][task]["effective"] == LIMIT
    assert "exact_match,flexible-extract" in results["results"][task]
    assert results["configs"][task]["dataset_path"] == "json"
    assert results["configs"][task]["dataset_name"] == "boolean_expressions"
    assert results["max_length"] == 8192
    prompt = lm_eval_run["samples"][task][0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith(f"<|system|>\n{SYSTEM}") and prompt.endswith("<|assistant|>\n")


@needs_shared_data
def test_lm_eval_group_picks_up_overridden_leaves(lm_eval_run: dict) -> None:
    results = lm_eval_run["results"]
    leaves = [t for t in results["configs"] if t.startswith("mmlu_")]
    assert len(leaves) == 57
    assert all(results["configs"][t]["dataset_path"] == "json" for t in leaves)
    assert all(results["n-samples"][t]["effective"] == LIMIT for t in leaves)
    assert "acc,none" in results["results"]["mmlu"]


@needs_shared_data
def test_lm_eval_runs_gsm8k_cot_zeroshot(lm_eval_run: dict) -> None:
    results = lm_eval_run["results"]
    assert results["n-samples"]["gsm8k_cot_zeroshot"] == {"original": 1319, "effective": LIMIT}
    assert "exact_match,flexible-extract" in results["results"]["gsm8k_cot_zeroshot"]
    assert "exact_match,strict-match" in results["results"]["gsm8k_cot_zeroshot"]


@needs_shared_data
def test_stock_results_identical_with_plugin_installed(
    lm_eval_run: dict, tiny_model: Path, local_tasks: Path, tmp_path: Path
) -> None:
    """Without --optimize, `lm_eval` with the plugin gives lm-eval's results exactly (hook taken off)."""
    run_lm_eval(lm_eval_args(tiny_model, local_tasks, tmp_path), entry="stock_cli")
    (stock_file,) = tmp_path.glob("*/results_*.json")
    stock = json.loads(stock_file.read_text())
    assert stock["results"] == lm_eval_run["results"]["results"]
    assert "prompt_optimization" not in lm_eval_run["results"]
