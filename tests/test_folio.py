"""Tests for the FOLIO task configs in ``task_configs/folio``.

Real behaviour only: real local data, real ``datasets`` loads, and the real
``lm_eval`` console script run on a tiny random Llama model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLIO_TASK_DIR = REPO / "task_configs" / "folio"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLIO_DATA = SHARED_DATA / "folio"

needs_shared_data = pytest.mark.skipif(
    not (FOLIO_DATA / "train.jsonl").is_file(),
    reason=f"shared benchmark data not found at {FOLIO_DATA} "
    "(tests reading ../shared/data are skipped outside the build machines)",
)


def _load_utils():
    spec = importlib.util.spec_from_file_location(
        "folio_task_utils", FOLIO_TASK_DIR / "utils.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


folio_utils = _load_utils()

V2_ROWS = [
    {
        "story_id": 1,
        "premises": "All cats are mammals.\nTom is a cat.",
        "premises-FOL": "∀x (Cat(x) → Mammal(x))\nCat(tom)",
        "conclusion": "Tom is a mammal.",
        "conclusion-FOL": "Mammal(tom)",
        "label": "True",
        "example_id": 10,
    },
    {
        "story_id": 1,
        "premises": "All cats are mammals.\nTom is a cat.",
        "premises-FOL": "∀x (Cat(x) → Mammal(x))\nCat(tom)",
        "conclusion": "Tom is not a mammal.",
        "conclusion-FOL": "¬Mammal(tom)",
        "label": "False",
        "example_id": 11,
    },
    {
        "story_id": 1,
        "premises": "All cats are mammals.\nTom is a cat.",
        "premises-FOL": "∀x (Cat(x) → Mammal(x))\nCat(tom)",
        "conclusion": "Tom likes fish.",
        "conclusion-FOL": "LikesFish(tom)",
        "label": "Unknown",
        "example_id": 12,
    },
]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@pytest.fixture()
def v2_dir(tmp_path: Path) -> Path:
    d = tmp_path / "folio_v2"
    d.mkdir()
    _write_jsonl(d / "folio_v2_train.jsonl", V2_ROWS)
    _write_jsonl(d / "folio_v2_validation.jsonl", V2_ROWS)
    return d


# --------------------------------------------------------------------------- #
# (a) loader + process_docs on both shapes
# --------------------------------------------------------------------------- #
def _check_normalized(ds) -> None:
    assert tuple(ds.column_names) == folio_utils.NORMALIZED_COLUMNS
    for row in ds:
        assert isinstance(row["premises"], str) and row["premises"]
        assert isinstance(row["conclusion"], str) and row["conclusion"]
        assert row["label"] in ("True", "False", "Uncertain")
        assert folio_utils.LABELS[row["label_index"]] == row["label"]


@needs_shared_data
def test_v1_local_data_normalizes():
    raw = folio_utils.load_folio(
        folio_data_dir=str(FOLIO_DATA), pretrained="ignored", version=1.0
    )
    assert set(raw.keys()) == {"train", "validation"}
    assert len(raw["train"]) == 1004 and len(raw["validation"]) == 204
    assert isinstance(raw["validation"][0]["premises"], list)

    for split in ("train", "validation"):
        _check_normalized(folio_utils.process_docs(raw[split]))

    val = folio_utils.process_docs(raw["validation"])
    first = raw["validation"][0]
    assert val[0]["premises"] == "\n".join(p.strip() for p in first["premises"])
    assert val[0]["conclusion"] == first["conclusion"].strip()
    assert set(val["label"]) == {"True", "False", "Uncertain"}


@needs_shared_data
def test_v1_and_v2_shapes_give_same_fields(v2_dir: Path):
    v1 = folio_utils.process_docs(
        folio_utils.load_folio(folio_data_dir=str(FOLIO_DATA))["validation"]
    )
    v2_raw = folio_utils.load_folio(folio_data_dir=str(v2_dir))
    assert isinstance(v2_raw["validation"][0]["premises"], str)
    v2 = folio_utils.process_docs(v2_raw["validation"])

    _check_normalized(v2)
    assert v1.column_names == v2.column_names
    assert v1.features == v2.features
    assert v2["label"] == ["True", "False", "Uncertain"]  # Unknown -> Uncertain
    assert v2["label_index"] == [0, 1, 2]
    assert v2[0]["premises"] == "All cats are mammals.\nTom is a cat."


def test_env_var_selects_local_dir(v2_dir: Path, monkeypatch):
    monkeypatch.setenv("FOLIO_DATA_DIR", str(v2_dir))
    ds = folio_utils.load_folio(pretrained="x", device="cpu")
    assert len(ds["validation"]) == 3
    # the --metadata key wins over the environment variable
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folio_utils.load_folio(folio_data_dir=str(v2_dir / "missing"))


def test_local_dir_without_expected_files(tmp_path: Path):
    (tmp_path / "other.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError) as err:
        folio_utils.load_folio(folio_data_dir=str(tmp_path))
    msg = str(err.value)
    assert "train.jsonl" in msg and "folio_v2_validation.jsonl" in msg


def test_bad_label_rejected():
    with pytest.raises(ValueError, match="Unexpected FOLIO label"):
        folio_utils.normalize_label("Maybe")


# --------------------------------------------------------------------------- #
# (b) hub unreachable, no local dir -> helpful error
# --------------------------------------------------------------------------- #
def test_hub_failure_message_names_token_and_local_option(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("FOLIO_DATA_DIR", "HF_TOKEN")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),  # empty cache: nothing to fall back on
    )
    code = textwrap.dedent(
        f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("u", {str(FOLIO_TASK_DIR / "utils.py")!r})
        u = importlib.util.module_from_spec(spec); spec.loader.exec_module(u)
        try:
            u.load_folio(pretrained="x", device="cpu")
        except RuntimeError as e:
            print("ERR:" + str(e))
        else:
            print("LOADED")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ERR:" in out, out
    assert "HF_TOKEN" in out
    assert "FOLIO_DATA_DIR" in out
    assert "folio_data_dir" in out
    assert "yale-nlp/FOLIO" in out


# --------------------------------------------------------------------------- #
# (c) end to end with the real lm_eval CLI and a tiny random model
# --------------------------------------------------------------------------- #
_CORPUS = [
    "All people who regularly drink coffee are dependent on caffeine.",
    "If a person is a student, then that person attends the school.",
    "Premises: Every cat is a mammal. Tom is a cat.",
    "Conclusion: Tom is a mammal. Is the conclusion True, False, or Uncertain?",
    "Let's think step by step. The answer is True. The answer is False.",
    "The answer is Uncertain. Answer: True False Uncertain Unknown",
    "No one who jokes about being addicted to caffeine is unaware of it.",
    "Bonnie either attends school events or she does not perform in shows.",
    "Question: Assuming only the premises above, is the conclusion correct?",
]


def _build_tiny_model_here(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=2048,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folio_tiny_model")
    try:  # shared helper, when the package provides it
        from lm_eval_promptopt.testbed import build_tiny_model
    except Exception:
        build_tiny_model = None
    if build_tiny_model is not None:
        try:
            result = build_tiny_model(out, seed=0)
            path = Path(result) if isinstance(result, (str, os.PathLike)) else out
            if (path / "config.json").is_file():
                return path
        except Exception:
            pass
    return _build_tiny_model_here(out / "own", seed=0)


def _lm_eval_script() -> str:
    script = Path(sys.executable).parent / "lm_eval"
    if not script.exists():
        pytest.skip(f"lm_eval console script not found next to {sys.executable}")
    return str(script)


@needs_shared_data
def test_lm_eval_cli_end_to_end(tiny_model_dir: Path, tmp_path: Path):
    out_dir = tmp_path / "out"
    env = dict(os.environ)
    env.update(
        FOLIO_DATA_DIR=str(FOLIO_DATA),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        _lm_eval_script(),
        "--model", "hf",
        # lm-eval 0.4.13: `device=cpu` inside --model_args clashes with the
        # --device default ("got multiple values for keyword argument 'device'")
        "--model_args", f"pretrained={tiny_model_dir}",
        "--device", "cpu",
        "--include_path", str(FOLIO_TASK_DIR),
        "--tasks", "folio",
        "--limit", "3",
        "--output_path", str(out_dir),
        "--gen_kwargs", "max_gen_toks=16",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    log = (proc.stdout + proc.stderr)[-5000:]
    assert proc.returncode == 0, log

    results_files = sorted(out_dir.rglob("results_*.json"))
    assert results_files, f"no results JSON under {out_dir}\n{log}"
    data = json.loads(results_files[-1].read_text())

    results = data["results"]
    assert "folio_cot_zeroshot" in results and "folio_mc" in results, results.keys()
    cot, mc = results["folio_cot_zeroshot"], results["folio_mc"]
    assert "exact_match,flexible-extract" in cot
    assert "exact_match,strict-match" in cot
    assert "acc,none" in mc and "acc_norm,none" in mc
    for value in (cot["exact_match,flexible-extract"], mc["acc,none"]):
        assert 0.0 <= value <= 1.0
    assert set(data["group_subtasks"]["folio"]) == {"folio_cot_zeroshot", "folio_mc"}
    assert data["n-samples"]["folio_mc"]["effective"] == 3
    assert data["configs"]["folio_cot_zeroshot"]["validation_split"] == "validation"
