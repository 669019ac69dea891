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
from conftest import REPO, SHARED_DATA, hf_on_cpu, needs_shared_data, run_lm_eval


FOLIO_TASK_DIR = REPO / "task_configs" / "folio"
FOLIO_DATA = SHARED_DATA / "folio"


def _load_utils():
    spec = importlib.util.spec_from_file_location("folio_task_utils", FOLIO_TASK_DIR / "utils.py")
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
    raw = folio_utils.load_folio(folio_data_dir=str(FOLIO_DATA), pretrained="ignored", version=1.0)
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
    v1 = folio_utils.process_docs(folio_utils.load_folio(folio_data_dir=str(FOLIO_DATA))["validation"])
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
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
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
@needs_shared_data
def test_lm_eval_cli_end_to_end(tiny_model: Path, tmp_path: Path):
    """Plain lm_eval (no --optimize) with --include_path task_configs/folio."""
    out_dir = tmp_path / "out"
    run_lm_eval(
        [
            *hf_on_cpu(tiny_model),
            "--include_path",
            str(FOLIO_TASK_DIR),
            "--tasks",
            "folio",
            "--limit",
            "3",
            "--output_path",
            str(out_dir),
            "--gen_kwargs",
            "max_gen_toks=16",
        ],
        FOLIO_DATA_DIR=str(FOLIO_DATA),
    )
    results_files = sorted(out_dir.rglob("results_*.json"))
    assert results_files, f"no results JSON under {out_dir}"
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
