"""GPO (Tang et al., AAAI 2025, arXiv 2402.17564): an LLM writes instructions, guided like gradient descent.

Per step: retrieve k entries of the trajectory (the current instruction and the k-1 earlier
step-winners most similar to it), show them with their dev scores and a few train exemplars in a
meta-prompt that asks for a new instruction within a word budget that decays on a cosine schedule
(50 -> 10 words), sample 8 candidates, score each new one on optimize-dev with the harness, and
move to the best candidate not already in the trajectory (even if it scores below the current
one). The result is the trajectory entry with the best dev score.

Modules: `config.py` (the settings), `meta.py` (schedule, parsing, retrieval, meta-prompt, the
move: pure functions), `embed.py` (embeddings for retrieval=relevance), `llm.py` (the
optimizer-LLM clients), `search.py` (one task's search: state and step loop); here, the
registered optimizer and its checks before the model loads.

Spec: shared/reference/gpo.md. Deviations from the reference code: docs/optimizers/gpo.md.
"""

from __future__ import annotations

import os
from typing import NoReturn

from ...errors import PromptOptError
from ..base import OptimizationResult, Optimizer, Problem
from ..registry import register_optimizer
from .config import GPOConfig
from .embed import NOT_INSTALLED, Embedder, have_sentence_transformers
from .meta import Entry, choose, meta_prompt, parse_candidate, retrieve, total_steps, word_budget, word_edits
from .search import Search


INITIAL_INSTRUCTION = "Let's think step by step."

__all__ = [
    "GPO",
    "Embedder",
    "Entry",
    "GPOConfig",
    "choose",
    "meta_prompt",
    "parse_candidate",
    "retrieve",
    "total_steps",
    "word_budget",
    "word_edits",
]


@register_optimizer("gpo")
class GPO(Optimizer):
    """GPO: LLM-proposed instructions with trajectory retrieval and a decaying word budget."""

    config_class = GPOConfig
    default_instruction = INITIAL_INSTRUCTION
    dev_scored = "then each step's new candidates, step by step"

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        cfg: GPOConfig = self.config
        steps = cfg.steps or total_steps(n_train, cfg.epochs, cfg.batch)
        evals = 1 + steps * cfg.samples  # the initial instruction, then each new candidate once
        optimizer = steps * cfg.samples
        return {
            "harness_evaluations": evals,
            "model_calls": evals * n_dev + (optimizer if cfg.optimizer_model == "self" else 0),
            "optimizer_calls": 0 if cfg.optimizer_model == "self" else optimizer,
        }

    def preflight(self) -> None:
        """Check the environment (the optimizer's API key, sentence-transformers) and load the
        embedding model (once per process): a bad setting fails before the model loads."""
        cfg: GPOConfig = self.config
        hosted = cfg.optimizer_model != "self" and not (cfg.optimizer_base_url or os.environ.get("OPENAI_BASE_URL"))
        if hosted and not os.environ.get(cfg.key_env):
            self._refuse(
                f"optimizer_model={cfg.optimizer_model} on the OpenAI API needs an API key in ${cfg.key_env} "
                "(set it, or name another variable with api_key_env=NAME)"
            )
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            self._refuse(f"api_key_env={cfg.api_key_env} names an environment variable that is not set")
        if cfg.retrieval == "relevance":
            if not have_sentence_transformers():
                self._refuse(NOT_INSTALLED)
            Embedder(cfg.embedding_model)

    def _refuse(self, message: str) -> NoReturn:
        """An --optimize_args error, worded as the settings' own checks word theirs."""
        raise PromptOptError(f"--optimize_args ({self.name}): {message}")

    def optimize(self, problem: Problem) -> OptimizationResult:
        return Search(self.config, problem).run()
