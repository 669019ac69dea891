"""GReaTer beyond the byte-level BPE test model: WordLevel and SentencePiece-style tokenizers,
chat templates with and without a system role, bfloat16, and lm-eval's own stop handling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from support.testbed import build_tiny_model
from test_greater import make_problem

from lm_eval_promptopt.harness.setup import apply_task_overrides
from lm_eval_promptopt.optimizers.greater import GreaterConfig, Search


pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"


@pytest.fixture(scope="session")
def wordlevel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lowercasing, whitespace-split WordLevel vocabulary with <unk>: lossy on most instructions."""
    return build_tiny_model(tmp_path_factory.mktemp("wordlevel"), tokenizer="wordlevel", data_dir=SHARED_DATA)


@pytest.fixture(scope="session")
def metaspace_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SentencePiece-style (metaspace, byte fallback), with a template that rejects the system role."""
    return build_tiny_model(
        tmp_path_factory.mktemp("metaspace"), tokenizer="metaspace", system_role=False, data_dir=SHARED_DATA
    )


@pytest.fixture(scope="module")
def task(local_tasks: Path):
    loaded = TaskManager(include_path=str(local_tasks)).load([TASK])["tasks"]
    apply_task_overrides(loaded, gen_kwargs={"max_gen_toks": 8}, fewshot_seed=1234)
    return loaded[TASK]


def test_lossy_tokenizer_starts_from_what_the_harness_sees(wordlevel_model: Path, task, capsys):
    lm = HFLM(pretrained=str(wordlevel_model), device="cpu", batch_size=1)
    opt = Search(GreaterConfig(max_reasoning_tokens=8), make_problem(lm, task))
    prompt = opt.initial
    seen = opt.text(prompt)
    assert "<unk>" not in seen and lm.tokenizer.unk_token_id not in prompt  # no special-token text, ever
    assert seen.startswith("use ") and opt.initial_as_seen == seen
    assert capsys.readouterr().out.count("does not round-trip the initial instruction") == 1
    reasoning = opt.scorer.reasoning(prompt)  # lm-eval's stop criteria: no crash on a WordLevel tokenizer
    assert all(len(r) <= 8 for r in reasoning)


def test_reasoning_is_what_lm_evals_generate_until_returns(tiny_model: Path, task):
    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)
    opt = Search(GreaterConfig(max_reasoning_tokens=8), make_problem(lm, task))
    ids = opt.scorer.contexts(opt.initial)[0]
    free = opt.engine.generate([ids])[0]
    stop = lm.tok_decode(free[3:5])  # a stop sequence the model writes early: generation must end before it
    opt.engine.until = [stop, *opt.engine.until]
    ours = lm.tok_decode(opt.engine.generate([ids])[0])
    request = Instance(
        "generate_until",
        {},
        (lm.tok_decode(ids, skip_special_tokens=False), {"until": [stop], "max_gen_toks": 8, "do_sample": False}),
        0,
    )
    (harness,) = lm.generate_until([request])
    # lm-eval cuts the text where the stop begins; the ids can only be cut before the token that
    # completes it, so ours may end in the stop's first part, never in the whole
    assert (
        stop not in ours
        and ours.startswith(harness)
        and stop.startswith(ours[len(harness) :])
        and len(ours) - len(harness) < len(stop)
    )


def test_candidates_are_checked_for_re_encoding_inside_the_rendered_prompt(tiny_model: Path, task):
    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)
    opt = Search(GreaterConfig(), make_problem(lm, task))
    prompt = opt.initial
    assert opt.in_context and opt.reencodes(prompt)
    space = lm.tokenizer.encode(" ", add_special_tokens=False)
    trailing = [*prompt[:-1], *space]  # "... answer " : no delimiter then, and " " merges with "Q"
    assert not opt.reencodes(trailing)
    opt.in_context = False
    assert opt.reencodes(trailing)  # on its own the text re-encodes: only the rendered prompt shows it


def test_bfloat16_gradient_ranks_candidates_as_float32_does(tiny_model: Path, task):
    grads = {}
    for dtype in ("float32", "bfloat16"):
        lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1, dtype=dtype)
        opt = Search(GreaterConfig(max_reasoning_tokens=5), make_problem(lm, task))
        prompt = opt.initial
        if dtype == "float32":
            reasoning = opt.scorer.reasoning(prompt)
            candidates = opt.scorer.propose(prompt, 3, random.Random(0))
        for p in lm.model.parameters():
            p.requires_grad_(False)
        grads[dtype] = opt.scorer.gradient(prompt, 3, candidates, reasoning)
    assert grads["bfloat16"].dtype == torch.float32
    assert torch.argsort(grads["bfloat16"])[:3].tolist() == torch.argsort(grads["float32"])[:3].tolist()  # the 3 scored
    assert torch.nn.functional.cosine_similarity(grads["bfloat16"], grads["float32"], dim=0) > 0.99


@pytest.mark.parametrize(
    "model, extra",
    [
        ("wordlevel_model", []),  # text prefix
        ("metaspace_model", ["--apply_chat_template"]),  # no system role: the first user turn
        ("tiny_model", ["--apply_chat_template", "--model_args_dtype"]),  # byte-level BPE, bfloat16, system message
    ],
)
def test_lm_eval_optimize_greater_on_each_tokenizer(model: str, extra: list[str], local_tasks: Path, evaluate, request,
                                                    capsys: pytest.CaptureFixture[str]):  # fmt: skip
    path = request.getfixturevalue(model)
    model_args = f"pretrained={path}" + (",dtype=bfloat16" if "--model_args_dtype" in extra else "")
    results = evaluate(
        model="hf", model_args=model_args, device="cpu", include_path=local_tasks, tasks=[TASK, "gsm8k_cot_zeroshot"],
        apply_chat_template="--apply_chat_template" in extra, optimizer="greater",
        optimizer_args="steps=2,train_size=3,dev_size=3,compare_baseline=true", gen_kwargs="max_gen_toks=6", limit=2,
    )  # fmt: skip
    section = results["prompt_optimization"]
    for outcome in section["tasks"].values():
        steps = [s for s in outcome["details"]["steps"] if "step" in s]
        assert len(steps) == 2 and outcome["details"]["extractor"].startswith("Therefore, the final answer")
        assert "<unk>" not in outcome["final_instruction"] and "<|" not in outcome["final_instruction"]
        assert outcome["details"]["reencoding_check"] in ("in_context", "standalone")
    if model == "wordlevel_model":
        assert all(o["details"]["initial_as_seen"] for o in section["tasks"].values())
        assert "does not round-trip the initial instruction" in capsys.readouterr().out
