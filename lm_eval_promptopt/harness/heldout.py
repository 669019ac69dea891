"""The held-out evaluation's calls into lm-eval: which docs each task evaluates, and each task
bound to its instruction for lm-eval's `evaluate` (the initial instructions, `compare_baseline`)
or its `simple_evaluate` (the final ones, as a stock run reports them)."""

from __future__ import annotations

from typing import Any

from .prompting import Placement, bind_instruction
from .settings import EvalSettings
from .setup import apply_task_overrides, limited, quiet_harness, root_items
from .splits import SplitPlan


def heldout_samples(plans: dict[str, SplitPlan], tasks: list[str], limit: float | None) -> dict[str, list[int]]:
    """Each task's held-out doc indices, the first `limit` of them where given (lm-eval's `samples`)."""
    return {task: limited(list(plans[task].heldout.indices), limit) for task in tasks}


def evaluate_initial(
    instructions: dict[str, str], lm: Any, loaded: dict[str, Any], samples: dict[str, list[int]],
    placement: Placement, settings: EvalSettings,
) -> dict[str, Any]:  # fmt: skip
    """lm-eval's bare `evaluate()` on `samples`, each task bound to `instructions[task]`: no
    samples logged, no bootstrap (only the scores are compared)."""
    from lm_eval.evaluator import evaluate

    for task, instruction in instructions.items():
        bind_instruction(loaded["tasks"][task], instruction, placement)
    apply_task_overrides(loaded["tasks"], settings.gen_kwargs, settings.num_fewshot, settings.fewshot_random_seed)
    with quiet_harness():
        return evaluate(
            lm=lm, task_dict=loaded, samples=samples, bootstrap_iters=0, log_samples=False, **settings.evaluate_kwargs()
        )


def evaluate_final(
    instructions: dict[str, str], lm: Any, loaded: dict[str, Any], samples: dict[str, list[int]],
    placement: Placement, settings: EvalSettings,
) -> dict[str, Any] | None:  # fmt: skip
    """lm-eval's own `simple_evaluate` on `samples`, each task bound to `instructions[task]`, with
    the run's other settings (None on the other processes of a data-parallel run)."""
    from lm_eval.evaluator import simple_evaluate

    for task, instruction in instructions.items():
        bind_instruction(loaded["tasks"][task], instruction, placement)
    kwargs = settings.lm_eval_kwargs(
        model=lm, tasks=root_items(loaded), samples=samples, limit=None, system_instruction=None, use_cache=None
    )
    return simple_evaluate(**kwargs)
