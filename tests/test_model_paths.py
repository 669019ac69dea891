"""A local-looking model path is checked before anything loads; a repo id is left to Hugging Face."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.harness.setup import check_model_paths, looks_local


@pytest.mark.parametrize("value", ["/abs/model", "./model", "../model", "~/model", "models/org/name", "."])
def test_paths_look_local(value):
    assert looks_local(value)


@pytest.mark.parametrize("value", ["gpt2", "meta-llama/Meta-Llama-3-8B-Instruct"])
def test_repo_ids_do_not(value):
    assert not looks_local(value)


def test_a_missing_local_path_is_named(tmp_path: Path):
    missing = tmp_path / "nothing_here"
    with pytest.raises(PromptOptError, match=f"--model_args peft={missing}: no such file or folder"):
        check_model_paths({"pretrained": str(tmp_path), "peft": str(missing)})
    check_model_paths(f"pretrained={tmp_path},dtype=float32")  # exists
    check_model_paths("pretrained=org/not-downloaded-yet")  # a repo id: Hugging Face decides
    check_model_paths(None)
