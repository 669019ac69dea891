"""GReaTer's search as a whole, step by step against an independent reference (support/greater_reference.py).

The planted model (benchmarks/planted) answers by the op its instruction names, so its training
error moves with the instruction and with the reasoning the answer is read after: a wrong
candidate, a wrong reasoning or a wrong error definition changes what the search records and
chooses. Each test checks one rule of shared/reference/greater.md on the same runs, and first
shows that, on these runs, breaking the rule would change the outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from support.greater_reference import Reference, Step, chain

from benchmarks import planted
from lm_eval_promptopt.harness.objective import Objective, TaskSplits, primary_metric
from lm_eval_promptopt.harness.prompting import Placement
from lm_eval_promptopt.harness.setup import apply_task_overrides
from lm_eval_promptopt.harness.splits import plan_splits
from lm_eval_promptopt.optimizers.base import OptimizationResult, Problem
from lm_eval_promptopt.optimizers.greater import Greater, GreaterConfig, Search
from lm_eval_promptopt.optimizers.greater import search as greater_search
from lm_eval_promptopt.optimizers.greater.config import TOP_KEPT
from lm_eval_promptopt.options import RunOptions


START = "Use please answer the question."
STEPS = 11
KEPT = 2
"""The top list's length in the task_phrase run (the paper's 10, `TOP_KEPT`, is checked as a
value): the planted model is trained on each machine, and its float arithmetic decides how many
distinct prompts a run chooses; a short list is dropped from on any machine."""
"""Steps of each run: 11 chosen prompts, one more than the top-10 list keeps."""
#: The task's own stop string cuts the reasoning after " We"; the extractor " take" and the answer
#: " the largest item. The answer is 8." continue it as the model was trained to (a multi-token
#: answer whose first token is always right).
STOP_TASK = """include: {planted}/planted_largest.yaml
task: planted_largest_stop
doc_to_target: "the {{{{op}}}} item. The answer is {{{{answer}}}}."
generation_kwargs:
  until: [" take"]
  do_sample: false
  max_gen_toks: 24
"""


@dataclass
class Run:
    """One search (its result and step records) and the reference's steps from the same start."""

    search: Search
    result: OptimizationResult
    steps: list[dict[str, Any]]
    ref: Reference
    chain: list[Step]

    def text(self, ids: list[int]) -> str:
        return self.search.text(ids)


@pytest.fixture(scope="module")
def planted_lm() -> HFLM:
    torch.set_num_threads(1)  # the model is tiny: one thread is fastest
    lm = HFLM(pretrained=str(planted.planted_model()), device="cpu", batch_size=1)
    lm.model.requires_grad_(False)  # the reference's gradient reaches the one-hot only
    return lm


def problem_for(lm: HFLM, task: Any, name: str, start: str = START) -> Problem:
    splits = TaskSplits(task)
    plan = plan_splits(name, task.config, RunOptions(train_size=6, dev_size=6, seed=0), splits.size, lambda s: set())
    objective = Objective(
        task_name=name, splits=splits, plan=plan, lm=lm, placement=Placement(chat_template=False),
        metric=primary_metric(name, task, {}), fewshot_seed=1234,
        eval_kwargs={"apply_chat_template": False, "fewshot_as_multiturn": False, "confirm_run_unsafe_code": False},
        record=lambda entry: None,
    )  # fmt: skip
    return Problem(name, lm, plan, objective, start, 0)


def search_and_reference(
    lm: HFLM, task: Any, name: str, stops: list[str], start: str = START, steps: int = STEPS, **config: Any
) -> Run:
    """The search's run, and the reference's steps from the same start with the task's `stops`."""
    cfg = GreaterConfig(steps=steps, **config)
    result = Greater(cfg).optimize(problem_for(lm, task, name, start))
    search = Search(cfg, problem_for(lm, task, name, start))  # the layout only: examples, ids, checks
    ref = Reference(search, stops, min(cfg.max_reasoning_tokens, task.config.generation_kwargs["max_gen_toks"]))
    rng = random.Random(f"greater:0:{name}")  # the search's seeded generator (README: one per task)
    records = [s for s in result.details["steps"] if "step" in s]
    return Run(search, result, records, ref, chain(ref, steps, rng, cfg.topk, cfg.topq))


def load(include: Path, name: str) -> Any:
    tasks = TaskManager(include_path=str(include)).load([name])["tasks"]
    apply_task_overrides(tasks, fewshot_seed=1234)
    return tasks[name]


@pytest.fixture(scope="module")
def task_phrase(planted_lm: HFLM) -> Run:
    """planted_largest with the task's answer phrase ("The answer is") after the full reasoning,
    keeping the `KEPT` best prompts."""
    task = load(planted.TASK_DIR, "planted_largest")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(greater_search, "TOP_KEPT", KEPT)
        return search_and_reference(planted_lm, task, "planted_largest", ["\n", "<|end|>"], extractor="task")


@pytest.fixture(scope="module")
def stopped(planted_lm: HFLM, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A planted_largest variant whose own `until` cuts the reasoning (STOP_TASK)."""
    folder = tmp_path_factory.mktemp("stop_task")
    (folder / "planted_largest_stop.yaml").write_text(STOP_TASK.format(planted=planted.TASK_DIR), encoding="utf-8")
    task = load(folder, "planted_largest_stop")
    return search_and_reference(
        planted_lm, task, "planted_largest_stop", [" take", "<|end|>"], steps=8, extractor="take"
    )


@pytest.fixture(scope="module")
def grown(planted_lm: HFLM) -> Run:
    """planted_first from a one-word prompt: it grows by the placeholder after step 0."""
    task = load(planted.TASK_DIR, "planted_first")
    return search_and_reference(
        planted_lm, task, "planted_first", ["\n", "<|end|>"], start="Use answer", steps=2, extractor="task"
    )


def scored_in_gradient_order(run: Run) -> None:
    """Each step scored the prompts the reference scored, in its gradient order, and moved as it did."""
    assert len(run.steps) == len(run.chain)
    for i, (got, want) in enumerate(zip(run.steps, run.chain)):
        assert (got["position"], got["candidates"]) == (
            want.pos,
            [run.search.tok.decode([t]) for t in want.candidates],
        ), f"step {i}"
        assert [r["instruction"] for r in got["ranked"]] == [run.text(p) for p in want.scored], f"step {i}"
        assert got["chosen"] == run.text(want.chosen), f"step {i}"


def criteria_match(run: Run) -> None:
    """Each scored prompt's criterion is the reference's: error over the answer tokens after its
    own regenerated reasoning, + 0.02 x prompt NLL."""
    for i, (got, want) in enumerate(zip(run.steps, run.chain)):
        assert [r["criterion"] for r in got["ranked"]] == pytest.approx([s.criterion for s in want.scores], abs=1e-4), (
            f"step {i}"
        )


# -- rule 1: the three most negative gradients ---------------------------------------------------


def test_the_scored_candidates_are_the_three_with_the_most_negative_gradient(task_phrase: Run, stopped: Run):
    for run in (task_phrase, stopped):
        # 6 or more candidates: the three most positive never hold the three most negative
        assert all(len(step.candidates) >= 6 for step in run.chain)
        scored_in_gradient_order(run)


# -- rule 2: error + 0.02 x NLL ------------------------------------------------------------------


def test_the_selection_criterion_is_error_plus_002_prompt_nll(task_phrase: Run, stopped: Run):
    for run in (task_phrase, stopped):
        # the NLL term is large here: 0.2 instead of 0.02 moves every criterion by more than 0.1
        assert min(s.nll for step in run.chain for s in step.scores) > 1
        assert {s.error for step in run.chain for s in step.scores} >= {0.0, 1.0}
        criteria_match(run)
        scored_in_gradient_order(run)


# -- rule 3: the final choice among the 10 lowest criteria seen -----------------------------------


def test_the_final_choice_is_among_the_ten_lowest_criteria_seen(planted_lm: HFLM, task_phrase: Run):
    assert TOP_KEPT == 10  # the paper's list; the run keeps KEPT, so that it must drop some on any machine
    run = task_phrase
    seen = {run.text(step.chosen): run.ref.score(step.chosen).criterion for step in run.chain}
    assert len(seen) > KEPT  # the top list had to drop some
    lowest = sorted(seen, key=seen.get)[:KEPT]
    assert {t["instruction"] for t in run.result.details["top_prompts"]} == set(lowest)
    problem = problem_for(planted_lm, load(planted.TASK_DIR, "planted_largest"), "planted_largest")
    dev = {text: problem.score(text, "dev") for text in lowest}  # the harness, afresh
    assert run.result.instruction == max(lowest, key=lambda text: (dev[text], -seen[text]))  # ties: the lower criterion


# -- rule 4: the task's own `until` ---------------------------------------------------------------


def test_the_tasks_own_until_cuts_the_reasoning_in_a_real_search(stopped: Run):
    run, first = stopped, stopped.chain[0]
    # the stop matters here: it cuts every reasoning to " We", and the full reasoning (the model's
    # own end-of-sequence only) ranks other candidates first
    assert all(run.search.tok.decode(r) == " We" for r in first.reasoning)
    unstopped = Reference(run.search, ["<|end|>"], run.ref.max_new)
    full = unstopped.reasoning(first.prompt)
    assert all(len(r) > 5 for r in full)
    gradient = [unstopped.gradient(first.prompt, first.pos, first.candidates, r) for r in (full, first.reasoning)]
    assert torch.argsort(gradient[0]).tolist()[:3] != torch.argsort(gradient[1]).tolist()[:3]
    scored_in_gradient_order(run)
    criteria_match(run)


# -- rule 5: k grows by 2 -----------------------------------------------------------------------------


def test_the_proposal_grows_k_by_two_until_six_candidates_remain(planted_lm: HFLM):
    task = load(planted.TASK_DIR, "planted_largest")
    search = Search(GreaterConfig(topk=1, topq=2), problem_for(planted_lm, task, "planted_largest"))
    ref, prompt = Reference(search, [], 1), search.initial
    by_one = False
    for pos in range(len(prompt)):
        want = ref.proposal(prompt, pos, random.Random(pos), topk=1, topq=2)
        by_one |= ref.proposal(prompt, pos, random.Random(pos), topk=1, topq=2, grow=1) != want
        assert search.scorer.propose(prompt, pos, random.Random(pos)) == want, f"position {pos}"
    assert by_one  # on these positions k += 1 proposes other sets


# -- rule 6: the error is over the answer tokens, any of them wrong -------------------------------


def test_the_error_counts_any_wrong_answer_token_and_only_answer_tokens(task_phrase: Run, stopped: Run):
    # a multi-token answer whose first token is always right: the first token alone says 0
    first = stopped.chain[0]
    assert [stopped.ref.score(p, scored="first").error for p in first.scored] == [0.0] * len(first.scored)
    assert any(s.error > 0 for s in first.scores)
    # the task's phrase after the full reasoning: the model does not predict the extractor itself
    first = task_phrase.chain[0]
    assert [task_phrase.ref.score(p, scored="extractor").error for p in first.scored] == [1.0] * len(first.scored)
    assert any(s.error < 1 for s in first.scores)
    for run in (task_phrase, stopped):
        criteria_match(run)
        scored_in_gradient_order(run)


# -- rule 7: each candidate on its own regenerated reasoning --------------------------------------


def test_each_candidate_is_scored_on_its_own_regenerated_reasoning(task_phrase: Run, stopped: Run):
    # on these steps the candidates' own reasonings differ and so do their errors: scoring them
    # all on the first one's would give them its error
    apart = [
        step for step in task_phrase.chain
        if len({tuple(map(tuple, s.reasoning)) for s in step.scores}) > 1 and len({s.error for s in step.scores}) > 1
    ]  # fmt: skip
    assert apart
    for run in (task_phrase, stopped):
        criteria_match(run)
        scored_in_gradient_order(run)


# -- rule 8: the reasoning regenerated after the prompt grows ---------------------------------------


def test_the_reasoning_is_regenerated_after_the_prompt_grows(grown: Run):
    run = grown
    before, after = run.chain
    assert after.prompt == before.chosen + [run.search.placeholder] and after.pos == 1
    # The grown prompt's reasoning is generated afresh (a row per train doc) besides each scored
    # candidate's own. Whether the placeholder changes the reasoning depends on the planted model's
    # weights, which each machine's float arithmetic trains a little differently, so the rule is
    # checked by the work done: reusing the reasoning from before the placeholder saves those rows.
    assert run.steps[1]["counters"]["generations"] == len(after.reasoning) * (1 + len(run.steps[1]["ranked"]))
    scored_in_gradient_order(run)
