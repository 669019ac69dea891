"""GReaTer (Das et al., ICLR 2025): token-by-token instruction search with gradients over reasoning.

One step changes one position of the instruction: candidate tokens come from the model's own
next-token distribution (top-k per example, intersected over random example subsets, unioned),
are ranked by the gradient of the answer loss taken *after the model's own reasoning* (w.r.t. a
one-hot over the candidates' embeddings only), and the best 3 are scored by regenerating the
reasoning on all train examples (criterion: error rate + 0.02 x prompt NLL). The best is taken,
the position advances, and the prompt grows with a placeholder until a sentence end is chosen.
The 10 best prompts seen are finally scored on optimize-dev by the harness.

Modules: `config` (settings, the paper's constants), `examples` (train docs as token pieces),
`batching` (padding, batch sizes), `engine` (generation and forwards), `scoring` (proposal,
gradient, criterion), `search` (one task's search: state, step loop, rules).
Spec: shared/reference/greater.md. Fixed defects of the reference: docs/optimizers/greater.md (the deviations).
"""

from __future__ import annotations

import random
import time
from typing import Any

from ...harness.setup import unwrap
from ..base import OptimizationResult, Optimizer, Problem
from ..registry import register_optimizer
from .config import CANDIDATES_SCORED, FIXED_PREFIX, INITIAL_PROMPT, TOP_KEPT, GreaterConfig
from .diagnosis import diagnose
from .engine import needs_hf, peak_memory_mb
from .search import Search


__all__ = ["Greater", "GreaterConfig", "Search"]


@register_optimizer("greater")
class Greater(Optimizer):
    """GReaTer: gradient-over-reasoning token search on the task model itself."""

    config_class = GreaterConfig
    default_instruction = f"{FIXED_PREFIX} {INITIAL_PROMPT}"
    dev_scored = f"then its top-{TOP_KEPT} prompts, scored at the end; its steps score train only"

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        """Per step: a reasoning refresh and 3 scored candidates (generations), proposal and
        gradient forwards, backwards; then the initial and the top-10 prompts on dev."""
        cfg: GreaterConfig = self.config
        batches = -(-n_train // (cfg.batch_size or n_train))
        per_step = (1 + CANDIDATES_SCORED) * n_train + n_train + 2 * batches + CANDIDATES_SCORED * batches
        evals = 1 + TOP_KEPT
        return {"harness_evaluations": evals, "model_calls": cfg.steps * per_step + evals * n_dev, "optimizer_calls": 0}

    def check_model(self, model: Any) -> None:
        """Only lm-eval's Hugging Face models give gradients: refuse any other `--model` before it loads."""
        from lm_eval.api.registry import get_model
        from lm_eval.models.huggingface import HFLM

        if not isinstance(model, str):
            model_cls, name = type(unwrap(model)), type(unwrap(model)).__name__
        else:
            try:
                model_cls, name = get_model(model), f"--model {model}"
            except ValueError:
                return  # an unknown name: lm-eval's model load names it
        if not issubclass(model_cls, HFLM):
            raise needs_hf(name)

    def optimize(self, problem: Problem) -> OptimizationResult:
        started = time.perf_counter()
        search = Search(self.config, problem)
        model = search.lm.model
        rng = random.Random(f"greater:{problem.seed}:{problem.task_name}")
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        model.eval()
        try:
            top, history, stop_reason = search.run(rng)
        finally:
            for p in params:
                p.requires_grad_(True)

        left = problem.log.evaluations_left()
        if left is not None:  # the final choice spends what is left of the budget (at least one)
            top = top[: max(1, left)]
        dev = [(problem.score(search.text(ids), "dev"), -crit, search.text(ids)) for crit, ids in top]
        best_dev, _, best = max(dev) if dev else (None, None, problem.initial_instruction)
        return OptimizationResult(
            best,
            stop_reason,
            details={
                "proposal": self.config.proposal,
                "extractor": search.extractor,
                "initial_as_seen": search.initial_as_seen,
                "reencoding_check": "in_context" if search.in_context else "standalone",
                "top_prompts": [
                    {"instruction": t, "train_criterion": -c, "dev_score": s} for s, c, t in sorted(dev, reverse=True)
                ],
                "best_dev_score": best_dev,
                "steps": history,
                "diagnosis": diagnose(problem.task_name, history, self.config.extractor),
                "decoder": search.engine.decoder(),
                "counters": dict(search.engine.counters),
                "peak_memory_mb": peak_memory_mb(search.lm.device),
                "batch_memory_mb": round(search.engine.budget / 2**20),
                "weight_gradients": any(p.grad is not None for p in model.parameters()),
                "search_seconds": round(time.perf_counter() - started, 3),
            },
        )
