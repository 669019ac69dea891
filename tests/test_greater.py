"""GReaTer: gradient, proposal, selection, determinism, errors, and a run through `lm_eval`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from conftest import load_results, needs_shared_data, run_lm_eval
from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.objective import Objective, TaskSplits, primary_metric
from lm_eval_promptopt.optimizers.base import Problem
from lm_eval_promptopt.optimizers.greater import Greater, GreaterConfig, allowed_token_mask
from lm_eval_promptopt.options import RunOptions
from lm_eval_promptopt.pipeline import apply_task_overrides
from lm_eval_promptopt.prompting import Placement
from lm_eval_promptopt.splits import plan_splits

pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"


@pytest.fixture(scope="module")
def lm(tiny_model: Path) -> HFLM:
    return HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def tasks(local_tasks: Path) -> dict:
    loaded = TaskManager(include_path=str(local_tasks)).load([TASK, "mmlu_anatomy"])
    apply_task_overrides(loaded["tasks"], {"fewshot_random_seed": 1234, "gen_kwargs": {"max_gen_toks": 5}})
    return loaded["tasks"]


def make_problem(lm, task, name=TASK, train=4, dev=4, seed=0) -> Problem:
    splits = TaskSplits(task)
    plan = plan_splits(name, task.config, RunOptions(train_size=train, dev_size=dev, seed=seed), splits.size, lambda s: set())
    objective = Objective(
        task_name=name, splits=splits, plan=plan, lm=lm, placement=Placement(chat_template=False),
        metric=primary_metric(name, task, {}), fewshot_seed=1234,
        eval_kwargs={"apply_chat_template": False, "fewshot_as_multiturn": False, "confirm_run_unsafe_code": False},
        record=lambda entry: None,
    )
    return Problem(name, lm, plan, objective, Greater.default_instruction, seed)


def explicit_loss(model, opt: Greater, prompt, pos, reasoning, slot: torch.Tensor) -> torch.Tensor:
    """The spec's loss, written out independently: full logits, embedding `slot` at the position."""
    weight = model.get_input_embeddings().weight
    total = 0.0
    for i, ex in enumerate(opt.examples):
        seq = ex.prefix + opt.fixed + prompt + ex.rest + reasoning[i] + ex.extractor + ex.answer
        embeds = weight[torch.tensor(seq)].detach().clone()
        start = len(ex.prefix) + len(opt.fixed)
        embeds[start + pos] = slot
        logits = model(inputs_embeds=embeds[None]).logits[0].float()
        a0 = len(seq) - len(ex.answer)
        ce = torch.nn.functional.cross_entropy(logits[a0 - 1 : len(seq) - 1] / 0.2, torch.tensor(ex.answer))
        log_probs = torch.log_softmax(logits[start - 1 : start + len(prompt) - 1], dim=-1)
        nll = -log_probs.gather(1, torch.tensor(prompt)[:, None]).mean()
        total = total + ce + 0.2 * nll
    return total


def test_gradient_matches_explicit_and_finite_difference(lm, tasks):
    opt = Greater(GreaterConfig(max_reasoning_tokens=5, batch_size=3))
    prompt = opt.prepare(make_problem(lm, tasks[TASK]))
    pos = 2
    reasoning = opt.reasoning(prompt)
    candidates = opt.propose(prompt, pos, random.Random(0))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    ours = opt.gradient(prompt, pos, candidates, reasoning)
    weight = lm.model.get_input_embeddings().weight
    slot = weight[prompt[pos]].detach().clone().requires_grad_(True)
    explicit_loss(lm.model, opt, prompt, pos, reasoning, slot).backward()
    explicit = weight[candidates].detach() @ slot.grad
    assert torch.allclose(ours, explicit / explicit.norm(), atol=1e-4)

    with torch.no_grad():  # central differences along each one-hot direction
        base = torch.zeros(len(candidates))
        base[candidates.index(prompt[pos])] = 1.0
        h, fd = 1e-2, []
        for c in range(len(candidates)):
            step = torch.zeros(len(candidates))
            step[c] = h
            up = explicit_loss(lm.model, opt, prompt, pos, reasoning, (base + step) @ weight[candidates])
            down = explicit_loss(lm.model, opt, prompt, pos, reasoning, (base - step) @ weight[candidates])
            fd.append((up - down) / (2 * h))
        fd = torch.stack(fd)
    assert torch.nn.functional.cosine_similarity(ours, fd / fd.norm(), dim=0) > 0.999
    assert all(not p.requires_grad for p in lm.model.parameters())


def test_proposal_masks_and_growth(lm, tasks):
    opt = Greater(GreaterConfig(topk=1, topq=2))
    prompt = opt.prepare(make_problem(lm, tasks[TASK]))
    tok = lm.tokenizer
    mask = allowed_token_mask(tok, lm.model.get_input_embeddings().weight.shape[0])
    for token in torch.nonzero(mask).flatten().tolist():
        text = tok.decode([token])
        assert text in (".", ",", " ") or all(c.isalpha() or c == " " for c in text)
    assert not mask[tok.encode("7", add_special_tokens=False)[0]]
    assert not any(mask[i] for i in tok.all_special_ids)
    for pos in range(len(prompt)):
        candidates = opt.propose(prompt, pos, random.Random(pos))
        assert len(candidates) >= 6  # k grew from 1 by 2 until the union had 6 tokens
        assert prompt[pos] in candidates
        others = [c for c in candidates if c != prompt[pos]]
        assert all(mask[c] for c in others)
        assert prompt[pos - 1] not in others  # no immediate repeat (pos 0: the last token)


def run_greater(lm, task, name=TASK, seed=0, steps=3):
    problem = make_problem(lm, task, name=name, seed=seed)
    return Greater(GreaterConfig(steps=steps, max_reasoning_tokens=5, batch_size=6)).optimize(problem)


def test_steps_choose_the_best_scored_and_final_choice_is_best_on_dev(lm, tasks):
    result = run_greater(lm, tasks[TASK], steps=4)
    steps = [s for s in result.details["steps"] if "step" in s]
    assert len(steps) == 4
    for step in steps:
        assert step["chosen"] in step["scored"]
        period = "." in step["chosen"] and step["scored"][step["chosen"]] != min(step["scored"].values())
        assert period or step["criterion"] == pytest.approx(min(step["scored"].values()), abs=1e-6)
        assert step["counters"]["generations"] <= 3 * 4 + 4  # 3 candidates x 4 examples (+ a refresh)
        assert step["counters"]["backward_passes"] == 1  # one batched backward over all examples
    top = result.details["top_prompts"]
    assert 1 <= len(top) <= 10
    assert result.instruction == top[0]["instruction"]
    assert top[0]["dev_score"] == max(t["dev_score"] for t in top)


def test_same_seed_same_result_and_tasks_are_independent(lm, tasks):
    a, b = run_greater(lm, tasks[TASK], seed=5), run_greater(lm, tasks[TASK], seed=5)
    assert a.instruction == b.instruction
    assert [s.get("chosen") for s in a.details["steps"]] == [s.get("chosen") for s in b.details["steps"]]
    mc = run_greater(lm, tasks["mmlu_anatomy"], name="mmlu_anatomy", steps=2)  # multiple choice: no reasoning
    assert mc.details["extractor"] is None and mc.details["counters"].get("generations", 0) == 0
    assert mc.instruction.startswith("Use ")


def test_needs_a_hugging_face_model(tasks):
    from lm_eval.api.model import LM

    class Other(LM):
        def loglikelihood(self, requests): ...
        def loglikelihood_rolling(self, requests): ...
        def generate_until(self, requests): ...

    problem = make_problem(Other(), tasks[TASK])
    with pytest.raises(PromptOptError, match="--model hf.*--optimize gpo"):
        Greater(GreaterConfig()).optimize(problem)


def test_lm_eval_optimize_greater_end_to_end(tiny_model: Path, local_tasks: Path, tmp_path: Path):
    tasks = ["bbh_cot_zeroshot_boolean_expressions", "mmlu_anatomy", "gsm8k_cot_zeroshot"]
    run_lm_eval(
        [
            "--model", "hf", "--model_args", f"pretrained={tiny_model}", "--device", "cpu",
            "--include_path", str(local_tasks), "--tasks", ",".join(tasks),
            "--optimize", "greater", "--optimize_args", "steps=2,train_size=3,dev_size=3",
            "--gen_kwargs", "max_gen_toks=6", "--limit", "2", "--output_path", str(tmp_path),
        ]
    )
    results = load_results(tmp_path)
    section = results["prompt_optimization"]
    assert section["optimizer"] == "greater" and section["optimizer_config"]["steps"] == 2
    for name in tasks:
        task = section["tasks"][name]
        assert task["initial_instruction"].startswith("Use proper logical reasoning")
        lines = Path(task["trajectory_file"]).read_text().splitlines()
        assert sum('"greater_step"' in line for line in lines) == 2
        assert any('"split": "dev"' in line for line in lines)  # top prompts scored by the harness on dev
        assert results["n-samples"][name]["effective"] == 2
