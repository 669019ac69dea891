"""GReaTer: gradient, proposal, selection, determinism, errors, and a run through `lm_eval`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from support.testbed import build_tiny_model

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.harness.objective import Objective, TaskSplits, primary_metric
from lm_eval_promptopt.harness.prompting import Placement
from lm_eval_promptopt.harness.setup import apply_task_overrides
from lm_eval_promptopt.harness.splits import plan_splits
from lm_eval_promptopt.optimizers.base import Problem
from lm_eval_promptopt.optimizers.greater import Greater, GreaterConfig, Search
from lm_eval_promptopt.optimizers.greater.batching import CPU_BATCH_TOKENS, memory_budget, rows_that_fit
from lm_eval_promptopt.optimizers.greater.examples import allowed_token_mask
from lm_eval_promptopt.optimizers.greater.search import advance, select
from lm_eval_promptopt.options import RunOptions


pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"


@pytest.fixture(scope="module")
def lm(tiny_model: Path) -> HFLM:
    return HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def llama3_lm(tmp_path_factory: pytest.TempPathFactory) -> HFLM:
    """The bench's Llama-3-shaped random model: unlike the tiny one, its greedy reasoning differs between docs."""
    shape = {"hidden_size": 256, "intermediate_size": 512, "layers": 4, "heads": 4}
    path = build_tiny_model(tmp_path_factory.mktemp("llama3"), tokenizer="llama3", data_dir=SHARED_DATA, **shape)
    return HFLM(pretrained=str(path), device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def tasks(local_tasks: Path) -> dict:
    loaded = TaskManager(include_path=str(local_tasks)).load([TASK, "mmlu_anatomy"])
    apply_task_overrides(loaded["tasks"], gen_kwargs={"max_gen_toks": 5}, fewshot_seed=1234)
    return loaded["tasks"]


def make_problem(lm, task, name=TASK, train=4, dev=4, seed=0) -> Problem:
    splits = TaskSplits(task)
    plan = plan_splits(
        name, task.config, RunOptions(train_size=train, dev_size=dev, seed=seed), splits.size, lambda s: set()
    )
    objective = Objective(
        task_name=name,
        splits=splits,
        plan=plan,
        lm=lm,
        placement=Placement(chat_template=False),
        metric=primary_metric(name, task, {}),
        fewshot_seed=1234,
        eval_kwargs={"apply_chat_template": False, "fewshot_as_multiturn": False, "confirm_run_unsafe_code": False},
        record=lambda entry: None,
    )
    return Problem(name, lm, plan, objective, Greater.default_instruction, seed)


def explicit_loss(model, opt: Search, prompt, pos, reasoning, slot: torch.Tensor) -> torch.Tensor:
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
    opt = Search(GreaterConfig(max_reasoning_tokens=5, batch_size=3), make_problem(lm, tasks[TASK]))
    prompt = opt.initial
    pos = 2
    reasoning = opt.scorer.reasoning(prompt)
    candidates = opt.scorer.propose(prompt, pos, random.Random(0))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    ours = opt.scorer.gradient(prompt, pos, candidates, reasoning)
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
    opt = Search(GreaterConfig(topk=1, topq=2), make_problem(lm, tasks[TASK]))
    prompt = opt.initial
    tok = lm.tokenizer
    mask = allowed_token_mask(tok, lm.model.get_input_embeddings().weight.shape[0])
    for token in torch.nonzero(mask).flatten().tolist():
        text = tok.decode([token])
        assert text in (".", ",", " ") or all(c.isalpha() or c == " " for c in text)
    assert not mask[tok.encode("7", add_special_tokens=False)[0]]
    assert not any(mask[i] for i in tok.all_special_ids)
    for pos in range(len(prompt)):
        candidates = opt.scorer.propose(prompt, pos, random.Random(pos))
        assert len(candidates) >= 6  # k grew from 1 until the union had 6 tokens (by 2: test_greater_search.py)
        assert prompt[pos] in candidates
        others = [c for c in candidates if c != prompt[pos]]
        assert all(mask[c] for c in others)
        assert prompt[pos - 1] not in others  # no immediate repeat (pos 0: the last token)


def test_proposal_is_the_union_of_intersections_of_per_example_top_k(lm, tasks):
    """Written out independently: per-example top-k of the masked next-token log-probs after
    "{question}. Use {prefix}", intersected over `topq` seeded subsets of 5, unioned, k += 2."""
    opt = Search(GreaterConfig(topk=5, topq=3), make_problem(lm, tasks[TASK], train=12))
    prompt = opt.initial
    docs = opt.problem.docs("train")
    assert lm.tokenizer.decode(opt.examples[0].question) == f"{docs[0]['input'].strip()}. Use"  # the paper's layout
    for pos in (1, 4):
        with torch.no_grad():
            logits = [lm.model(torch.tensor([ex.question + prompt[:pos]])).logits[0, -1].float() for ex in opt.examples]
        mask = opt.scorer.allowed.clone()
        mask[prompt[pos - 1]] = False
        log_probs = [torch.log_softmax(row, -1).masked_fill(~mask, float("-inf")) for row in logits]
        draws_rng = random.Random(7)
        draws = [draws_rng.sample(range(len(docs)), 5) for _ in range(3)]
        k = 5
        while True:
            tops = [set(torch.topk(row, k).indices.tolist()) for row in log_probs]
            expected = set().union(*(set.intersection(*(tops[i] for i in d)) for d in draws))
            if len(expected) >= 6:
                break
            k += 2
        union_of_all = set().union(*tops)
        assert expected != union_of_all  # the intersections matter on these inputs
        assert set(opt.scorer.propose(prompt, pos, random.Random(7))) == expected | {prompt[pos]}


def test_selection_rule_lowest_criterion_ties_to_later_period_at_once():
    a, b, c = [1, 2, 9], [1, 2, 8], [1, 2, 7]
    assert select([(a, 0.5, " x"), (b, 0.2, " y"), (c, 0.3, " z")], 2, 4) == b  # lowest criterion
    assert select([(a, 0.5, " x"), (b, 0.2, " y"), (c, 0.2, " z")], 2, 4) == c  # `<=`: ties to the later
    # a sentence end at pos >= half the initial length is taken at once, whatever the others score
    assert select([(a, 0.1, " x"), (b, 0.9, "."), (c, 0.0, " z")], 2, 4) == b
    assert select([(a, 0.1, " x"), (b, 0.9, "."), (c, 0.0, " z")], 1, 4) == c  # below half: no rule
    assert select([], 0, 4) is None


def test_advance_sweeps_wraps_grows_and_restarts():
    placeholder = 99
    assert advance([1, 2, 3], 0, 0.5, placeholder, False) == ([1, 2, 3], 1)
    assert advance([1, 2, 3], 2, 0.5, placeholder, True) == ([1, 2, 3], 0)  # a sentence end: wrap to 0
    assert advance([1, 2, 3], 2, 0.5, placeholder, False) == ([1, 2, 3, 99], 3)  # else grow, optimize it next
    assert advance([1, 2, 3], 1, 0.119, placeholder, False) == ([1, 2, 3], 0)  # below 0.12: restart at 0
    assert advance([1, 2, 3], 1, 0.12, placeholder, False) == ([1, 2, 3], 2)


def run_greater(lm, task, name=TASK, seed=0, steps=3, **config):
    problem = make_problem(lm, task, name=name, seed=seed)
    settings = {"steps": steps, "max_reasoning_tokens": 5, "batch_size": 6, **config}
    return Greater(GreaterConfig(**settings)).optimize(problem)


def test_one_batched_backward_per_step(lm, tasks):
    """The gradient over all train examples in one backward where the batch cap allows it (the
    search's rules, step by step: test_greater_search.py)."""
    result = run_greater(lm, tasks[TASK], steps=2)
    steps = [s for s in result.details["steps"] if "step" in s]
    assert [s["counters"]["backward_passes"] for s in steps] == [1, 1]
    assert result.details["decoder"] == "greedy, decode steps eager"


def test_same_seed_same_result_and_tasks_are_independent(lm, tasks):
    a, b = run_greater(lm, tasks[TASK], seed=5), run_greater(lm, tasks[TASK], seed=5)
    assert a.instruction == b.instruction
    assert [s.get("chosen") for s in a.details["steps"]] == [s.get("chosen") for s in b.details["steps"]]
    opt = Greater(GreaterConfig(steps=3, max_reasoning_tokens=5, batch_size=6))  # one optimizer, two tasks
    opt.optimize(make_problem(lm, tasks["mmlu_anatomy"], name="mmlu_anatomy", seed=5))
    c = opt.optimize(make_problem(lm, tasks[TASK], seed=5))
    assert vars(opt) == {"config": opt.config}  # a task's state lives on its own Search, not on the optimizer
    assert c.instruction == a.instruction and c.details["steps"][0]["chosen"] == a.details["steps"][0]["chosen"]


def test_batch_sizes_follow_the_machine_not_the_memory_free_now(llama3_lm):
    """The rows of a batch change its float rounding, so a repeated or resumed run must batch alike:
    the budget is a share of the machine's memory less the weights, not of what is free now."""
    model = llama3_lm.model
    budget = memory_budget(model)
    hog = torch.ones(2**28)  # 1 GiB in use, touched
    assert memory_budget(model) == budget and float(hog[-1]) == 1.0
    del hog
    assert rows_that_fit(model, budget, 64, 10_000, None) == CPU_BATCH_TOKENS // 64  # on CPU the token bound binds
    assert 1 < rows_that_fit(model, 10 * 2**20, 64, 10_000, None) < CPU_BATCH_TOKENS // 64  # a smaller budget binds
    assert rows_that_fit(model, 0, 64, 10_000, None) == 1 and rows_that_fit(model, budget, 64, 10_000, 5) == 5


def test_batched_generation_and_cached_scoring_match_one_sequence_at_a_time(llama3_lm, tasks):
    lm = llama3_lm
    batched = Search(GreaterConfig(max_reasoning_tokens=5), make_problem(lm, tasks[TASK], train=6))
    single = Search(GreaterConfig(max_reasoning_tokens=5, batch_size=1), make_problem(lm, tasks[TASK], train=6))
    prompt = batched.initial
    contexts = batched.scorer.contexts(prompt[:-1]) + batched.scorer.contexts(prompt)  # the shorter first
    assert len({len(c) for c in contexts}) > 1  # rows of different lengths: sorted, then put back
    free = batched.engine.generate(contexts)
    assert len({tuple(r) for r in free}) > 1
    assert free == [single.engine.generate([c])[0] for c in contexts]  # one call per context: nothing to reorder
    assert single.engine.generate(contexts) == free  # a batch_size cap of 1: one row per call
    assert batched.engine.rows["generate"] == len(contexts) and single.engine.rows["generate"] == 1
    # a stop sequence that ends some rows early: the cache past each row's reasoning must not be read
    batched.engine.until = [lm.tok_decode(free[0][2:4]), *batched.engine.until]
    tails = [ex.extractor + ex.answer for ex in batched.examples] * 2
    reasoning, hidden = batched.engine.generate_and_read(contexts, tails)
    assert len({len(r) for r in reasoning}) > 1
    for ctx, r, tail, h in zip(contexts, reasoning, tails, hidden):
        seq = ctx + r + tail
        with torch.no_grad():
            full = lm.model(input_ids=torch.tensor([seq])).logits[0, len(ctx) + len(r) - 1 : len(seq) - 1].float()
        assert torch.allclose(batched.engine.logits(h[: len(tail)]), full, atol=1e-4)


def test_memory_sized_batches_choose_what_one_at_a_time_chooses(llama3_lm, tasks):
    lm = llama3_lm
    wide, narrow = run_greater(lm, tasks[TASK], batch_size=None), run_greater(lm, tasks[TASK], batch_size=1)
    wide_steps, narrow_steps = ([s for s in r.details["steps"] if "step" in s] for r in (wide, narrow))
    assert [s["chosen"] for s in wide_steps] == [s["chosen"] for s in narrow_steps]
    for a, b in zip(wide_steps, narrow_steps):
        assert [r["instruction"] for r in a["ranked"]] == [r["instruction"] for r in b["ranked"]]
        assert a["criterion"] == pytest.approx(b["criterion"], abs=1e-5)
        assert set(a["phase_seconds"]) >= {"generation", "forwards", "backwards", "proposal"}
        assert a["regeneration_shapes"]["context_lengths"] and a["regeneration_shapes"]["new_tokens"] <= 5
        assert (
            set(b["batch_rows"].values()) == {1} and a["counters"]["generate_calls"] < b["counters"]["generate_calls"]
        )
        assert a["counters"]["generate_calls"] <= 2  # a reasoning refresh, then every candidate's regeneration at once
    assert wide.instruction == narrow.instruction


def test_multiple_choice_error_is_the_harness_accuracy_on_train(lm, tasks):
    """No reasoning for loglikelihood tasks: the error of a prompt is 1 - lm-eval's own `acc`."""
    problem = make_problem(lm, tasks["mmlu_anatomy"], name="mmlu_anatomy", train=6)
    opt = Search(GreaterConfig(batch_size=4), problem)
    prompt = opt.initial
    (scored,) = opt.scorer.score([prompt])
    assert scored.error == pytest.approx(1 - problem.score(opt.text(prompt), "train"))
    result = run_greater(lm, tasks["mmlu_anatomy"], name="mmlu_anatomy", steps=2)
    assert result.details["extractor"] is None and result.details["counters"].get("generations", 0) == 0


def test_answer_target_is_the_bare_gold_after_the_papers_frame(lm, local_tasks):
    names = ["bbh_cot_zeroshot_date_understanding", "bbh_cot_zeroshot_boolean_expressions", "gsm8k_cot_zeroshot"]
    loaded = TaskManager(include_path=str(local_tasks)).load(names)["tasks"]
    apply_task_overrides(loaded, fewshot_seed=1234)
    tok = lm.tokenizer
    for name, answers, options in (
        (names[0], set("ABCDEF"), "'$A' or '$B' or '$C' or '$D' or '$E' or '$F'"),
        (names[1], {" True", " False"}, "'$ True' or '$ False'"),
        (names[2], None, "$NUMBER$, where NUMBER is a positive or negative integer"),
    ):
        opt = Search(GreaterConfig(), make_problem(lm, loaded[name], name=name, train=8))
        assert opt.extractor.startswith("Therefore, the final answer (use exact") and options in opt.extractor
        for ex in opt.examples:
            assert tok.decode(ex.extractor) == f" {opt.extractor}"
            text = tok.decode(ex.answer)
            assert "(" not in text and (
                answers is None and text.strip().lstrip("-").isdigit() or text in (answers or ())
            )
        task_opt = Search(
            GreaterConfig(extractor="task"), make_problem(lm, loaded[name], name=name, train=8)
        )  # the task's own phrase, still the bare answer scored
        if name == names[0]:
            ex = task_opt.examples[0]
            assert tok.decode(ex.extractor) == " So the answer is (" and tok.decode(ex.answer) in answers


def test_needs_a_hugging_face_model(tasks):
    from lm_eval.api.model import LM

    class Other(LM):
        def loglikelihood(self, requests): ...
        def loglikelihood_rolling(self, requests): ...
        def generate_until(self, requests): ...

    problem = make_problem(Other(), tasks[TASK])
    with pytest.raises(PromptOptError, match="--model hf.*--optimize gpo"):
        Greater(GreaterConfig()).optimize(problem)


def test_lm_eval_optimize_greater_end_to_end(tiny_model: Path, local_tasks: Path, evaluate):
    tasks = ["bbh_cot_zeroshot_boolean_expressions", "mmlu_anatomy", "gsm8k_cot_zeroshot"]
    results = evaluate(
        model="hf", model_args=f"pretrained={tiny_model}", device="cpu", include_path=local_tasks, tasks=tasks,
        optimizer="greater", optimizer_args="steps=2,train_size=3,dev_size=3", gen_kwargs="max_gen_toks=6", limit=2,
    )  # fmt: skip
    section = results["prompt_optimization"]
    assert section["optimizer"] == "greater" and section["optimizer_config"]["steps"] == 2
    for name in tasks:
        task = section["tasks"][name]
        assert task["initial_instruction"].startswith("Use proper logical reasoning")
        lines = Path(task["trajectory_file"]).read_text().splitlines()
        assert sum('"greater_step"' in line for line in lines) == 2
        assert any('"split": "dev"' in line for line in lines)  # top prompts scored by the harness on dev
        assert results["n-samples"][name]["effective"] == 2
