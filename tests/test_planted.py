"""The planted-instruction benchmark: data, rendering, the trained model, and optimizer efficacy.

The model is trained once (a few minutes on 2 CPU cores) into the cache
(``$LM_EVAL_PROMPTOPT_CACHE`` or ``~/.cache/lm_eval_promptopt``); later runs reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, load_results, run_lm_eval
from lm_eval_promptopt import planted
from lm_eval_promptopt.planted import KEYWORDS, NEUTRAL_INSTRUCTIONS, OPS, TASK_DIR

NEUTRAL = NEUTRAL_INSTRUCTIONS[1]


@pytest.fixture(scope="session")
def planted_dir() -> Path:
    return planted.planted_model()


def test_docs_are_deterministic_and_splits_disjoint():
    for op in OPS:
        docs = {s: planted.make_docs(op, s, n, seed=0) for s, n in planted.SPLIT_SIZES.items()}
        assert docs["test"] == planted.make_docs(op, "test", 200, seed=0)
        assert docs["test"] != planted.make_docs(op, "test", 200, seed=1)
        inputs = {s: {d["input"] for d in ds} for s, ds in docs.items()}
        assert all(len(inputs[s]) == n for s, n in planted.SPLIT_SIZES.items())
        assert not (inputs["train"] & inputs["validation"] or inputs["test"] & (inputs["train"] | inputs["validation"]))
        for doc in docs["test"]:
            digits = [int(x) for x in doc["input"].split()]
            assert len(set(digits)) == len(digits) and doc["answer"] == str(planted.apply_op(op, digits))
            assert doc["target"].endswith(f"The answer is {doc['answer']}.") and f" {op} " in doc["target"]


def test_committed_task_data_matches_the_generator(tmp_path: Path):
    fresh = planted.write_task_data(tmp_path)
    committed = sorted(p.name for p in planted.DATA_DIR.glob("*.jsonl"))
    assert committed == sorted(p.name for p in fresh.glob("*.jsonl")) and len(committed) == 3 * len(OPS)
    for name in committed:
        assert (fresh / name).read_bytes() == (planted.DATA_DIR / name).read_bytes(), name


def test_instructions_and_hidden_op():
    assert planted.instruction_op("Please find the Biggest one.") == "largest"
    assert all(planted.instruction_op(i) is None for i in NEUTRAL_INSTRUCTIONS)
    assert not set(planted.FILLER) & {w for ws in KEYWORDS.values() for w in ws}
    assert {planted.hidden_op(d) for d in ([2, 1, 4], [2, 1, 3], [3, 1, 4], [3, 1, 5])} == set(OPS)


def test_training_text_is_what_lm_eval_renders(planted_dir: Path):
    """Contexts and their token ids: planted's renderer vs lm-eval's, through the plugin's placement."""
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from lm_eval_promptopt.prompting import Placement, render

    lm = get_model("hf").create_from_arg_string(f"pretrained={planted_dir},device=cpu", {"batch_size": 1})
    task = TaskManager(include_path=str(TASK_DIR)).load(["planted_largest"])["tasks"]["planted_largest"]
    doc = task.test_docs()[0]
    for chat in (False, True):
        for instruction in ("", NEUTRAL, planted.keyword_instruction("largest", 1)):
            ours = planted.render_context(instruction, planted.doc_to_text(doc), chat)
            theirs = render(task, doc, instruction, Placement(chat_template=chat), lm, fewshot_as_multiturn=chat).text
            assert ours == theirs
            assert lm.tok_batch_encode([theirs])[0][0].tolist() == lm.tokenizer(ours)["input_ids"]


def test_checker_requirements_hold_on_the_cached_model(planted_dir: Path):
    result = planted.check(planted_dir, chat_template=(False, True))
    assert result.passed, result.table()


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_candidates_optimizer_finds_the_planted_keyword(planted_dir: Path, tmp_path: Path, chat: bool):
    """Real `lm_eval --optimize candidates`: each task picks its keyword; held-out accuracy jumps."""
    right = {"planted_largest": "Please find the biggest one.", "planted_first": "Kindly return the initial digit."}
    candidates = [NEUTRAL, "Think carefully now and give the number.", *right.values(), "Please find the lowest one."]
    run_lm_eval(
        [
            "--model", "hf", "--model_args", f"pretrained={planted_dir}", "--device", "cpu", "--batch_size", "32",
            "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", ",".join(right),
            "--optimize", "candidates",
            "--optimize_args", f"candidates={'|'.join(candidates)},compare_baseline=true,instruction={NEUTRAL}",
            "--output_path", str(tmp_path), *(["--apply_chat_template"] if chat else []),
        ]
    )  # fmt: skip
    results = load_results(tmp_path)
    section = results["prompt_optimization"]
    assert {t["placement"] for t in section["tasks"].values()} == {"system_message" if chat else "text_prefix"}
    rows = {row["name"]: row for row in section["baseline_vs_optimized"]}
    for task, instruction in right.items():
        assert section["tasks"][task]["final_instruction"] == instruction
        assert rows[task]["baseline"] <= 0.45 and rows[task]["optimized"] >= 0.90, json.dumps(rows[task])
        assert results["results"][task][planted.METRIC] == rows[task]["optimized"]
