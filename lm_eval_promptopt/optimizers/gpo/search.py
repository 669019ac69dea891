"""One task's GPO search: the per-task state and the step loop.

`Search` holds what one `GPO.optimize` call needs: the trajectory (the instruction chosen at each
step with its dev score), the instructions already scored, the train exemplars (drawn once with
the seed), the optimizer-LLM client and the word budgets so far. Each step retrieves entries,
writes the meta-prompt, samples candidates, scores the new ones and moves (see `meta.py`); the
run log records every call and step and saves the state after each, so that a rerun of the same
command continues after the last completed step (optimizer calls already paid for are replayed).

Stop: after T steps, at a run stop condition, at `max_optimizer_tokens` (a `MaxTokens` condition
checked first), or `no_proposals` (a step that parsed no candidate after a usable one). A search
whose optimizer never gave a usable candidate is an error, not the start labelled optimized.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from dataclasses import asdict
from typing import Any

from tqdm.auto import tqdm

from ...errors import PromptOptError
from ...run.stop import MaxTokens
from ..base import OptimizationResult, Problem
from .config import GPOConfig
from .embed import Embedder
from .endpoint import OpenAIChat
from .llm import OptimizerLLM, OptimizerLLMError, SelfLM, Usage
from .meta import (
    END,
    START,
    Entry,
    choose,
    meta_prompt,
    parse_candidate,
    retrieve,
    total_steps,
    word_budget,
    word_edits,
)


SELECTION_RULE = "best optimize-dev score in the trajectory, initial instruction included; ties to the earliest"


def optimizer_llm(cfg: GPOConfig, problem: Problem) -> OptimizerLLM:
    """The client that writes the candidates: the evaluated model (`self`), or an endpoint."""
    if cfg.optimizer_model == "self":
        return SelfLM(
            problem.model, chat_template=problem.chat_template, log=problem.record, replay=problem.log.replayed_calls()
        )
    return OpenAIChat(
        cfg.optimizer_model,
        base_url=cfg.endpoint,
        api_key=os.environ.get(cfg.key_env) if cfg.key_env else None,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        concurrency=cfg.concurrency,
        log=problem.record,
        replay=problem.log.replayed_calls(),
        usable=lambda text: bool(parse_candidate(text)),
    )


class Search:
    """GPO on one `Problem`: set up (resuming an interrupted search), then `run()`."""

    def __init__(self, cfg: GPOConfig, problem: Problem) -> None:
        self.cfg, self.problem = cfg, problem
        self.started = time.perf_counter()
        train = problem.docs("train")
        self.steps = cfg.steps or total_steps(len(train), cfg.epochs, cfg.batch)
        if self.steps < 1:
            raise PromptOptError(
                f"{problem.task_name}: gpo runs epochs x (train docs / batch, rounded) steps; {len(train)} train docs "
                f"with batch={cfg.batch} give 0 steps (raise train_size to at least {(cfg.batch + 1) // 2})"
            )
        if cfg.schedule not in ("none", "fixed") and cfg.warmup >= self.steps:
            raise PromptOptError(
                f"{problem.task_name}: warmup={cfg.warmup} must be below the number of steps ({self.steps})"
            )
        if cfg.max_optimizer_tokens is not None:
            problem.log.stop_first(MaxTokens(cfg.max_optimizer_tokens))
        self.embed = Embedder(cfg.embedding_model) if cfg.retrieval == "relevance" else None  # fail before paying
        self.llm = optimizer_llm(cfg, problem)
        rng = random.Random(f"gpo:{problem.seed}:{problem.task_name}")
        self.positions = rng.sample(range(len(train)), min(cfg.exemplars, len(train)))
        self.exemplars = [problem.exemplar(train[i]) for i in self.positions]
        initial = problem.initial_instruction
        self.trajectory = [Entry(initial, problem.score(initial, "dev"), 0)]
        self.seen = {initial}
        self.budgets: list[int | None] = []
        self.proposing = 0  # steps that got at least one usable candidate
        if problem.log.resumed:  # continue after the interrupted run's last completed step
            state = problem.log.resumed
            self.trajectory = [Entry(**e) for e in state["trajectory"]]
            self.seen, self.budgets = set(state["seen"]), list(state["budgets"])
            self.proposing = state.get("proposing_steps", len(self.trajectory) - 1)
            self.llm.usage = Usage(**state["usage"])

    def run(self) -> OptimizationResult:
        """Steps until T or a stop; the result is the trajectory entry with the best dev score."""
        cfg, problem = self.cfg, self.problem
        stop_reason = "completed"
        try:
            bar = tqdm(
                range(len(self.trajectory), self.steps + 1), desc=f"gpo {problem.task_name}", unit="step", leave=False
            )
            for t in bar:
                proposed = self.step(t)
                if not self.proposing:  # a broken optimizer must not pass for a search that kept the start
                    self.trajectory.pop()
                    raise OptimizerLLMError(self._no_proposal())
                best_score = max(e.score for e in self.trajectory)
                reason = None if proposed else "no_proposals"
                stop = problem.log.step_done(best_score, self.state(), reason, tokens=self.llm.usage.tokens)
                if stop and (t < self.steps or stop == "no_proposals"):
                    stop_reason = stop
                    break
            else:
                stop_reason = "steps" if cfg.steps else "completed"
        except OptimizerLLMError as err:
            problem.record({"kind": "gpo_stopped", "step": len(self.trajectory), "error": err.detail})
            where = problem.log.path or f"trajectories/{problem.task_name}.jsonl in the run directory"
            raise OptimizerLLMError(
                f"{problem.task_name}: {err.detail}. Stopped at step {len(self.trajectory)} of {self.steps}; every optimizer call, "
                f"scored instruction and step so far is in {where}"
            ) from None
        return self.result(stop_reason)

    def step(self, t: int) -> int:
        """Step t: propose, score new candidates, move to the best one not yet chosen. Returns the
        number of distinct candidates parsed."""
        cfg, problem = self.cfg, self.problem
        start = time.perf_counter()
        current = self.trajectory[-1]
        shown = retrieve(self.trajectory, cfg.k, cfg.retrieval, self.embed)
        if cfg.order == "ascending":
            shown.reverse()
        budget = word_budget(t, self.steps, cfg.schedule, cfg.budget_start, cfg.budget_end, cfg.warmup)
        prompt = meta_prompt(shown, current.instruction, self.exemplars, cfg.update, budget)
        seed = zlib.crc32(f"gpo:{problem.seed}:{problem.task_name}:{t}".encode())
        before, sampling_start = self.llm.usage.as_dict(), time.perf_counter()
        texts = self.llm.sample(prompt, cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
        # this step's optimizer calls: wall seconds and what they cost (retries included)
        sampling = {"seconds": round(time.perf_counter() - sampling_start, 3)}
        sampling.update((name, value - before[name]) for name, value in self.llm.usage.as_dict().items())

        candidates = list(dict.fromkeys(c for c in map(parse_candidate, texts) if c))
        scored = []
        for text in candidates:
            scored.append(
                {
                    "instruction": text,
                    "dev_score": problem.score(text, "dev"),
                    "new": text not in self.seen,
                    "word_edits": word_edits(current.instruction, text),
                }
            )
            self.seen.add(text)
        chosen = choose(scored, {e.instruction for e in self.trajectory})
        entry = (
            Entry(chosen["instruction"], chosen["dev_score"], t)
            if chosen
            else Entry(current.instruction, current.score, t)
        )
        self.trajectory.append(entry)
        problem.record(
            {
                "kind": "gpo_step",
                "step": t,
                "budget": budget,
                "shown": [{"instruction": e.instruction, "dev_score": e.score, "step": e.step} for e in shown],
                "samples": len(texts),
                "sampling": sampling,
                "unparsed": sum(1 for x in texts if not parse_candidate(x)),
                "candidates": scored,
                "chosen": entry.instruction,
                "dev_score": entry.score,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        self.budgets.append(budget)
        self.proposing += len(candidates) > 0
        return len(candidates)

    def state(self) -> dict[str, Any]:
        """What a resumed search needs after the last completed step."""
        return {
            "trajectory": [asdict(e) for e in self.trajectory],
            "seen": sorted(self.seen),
            "budgets": self.budgets,
            "usage": self.llm.usage.as_dict(),
            "proposing_steps": self.proposing,
        }

    def _no_proposal(self) -> str:
        llm = self.llm
        where = "" if llm.backend == "self" else f" at {getattr(llm, 'base_url', None) or 'the OpenAI API'}"
        retried = "" if llm.backend == "self" else f" (after {self.cfg.max_retries} retries)"
        return (
            f"optimizer model {llm.model!r}{where} gave no usable proposal: every answer was empty "
            f"or had no text between {START} and {END}{retried}"
        )

    def result(self, stop_reason: str) -> OptimizationResult:
        cfg, trajectory = self.cfg, self.trajectory
        best = max(trajectory, key=lambda e: (e.score, -e.step))
        return OptimizationResult(
            best.instruction,
            stop_reason,
            details={
                "steps": self.steps,
                "retrieval": cfg.retrieval,
                "embedding_model": cfg.embedding_model if cfg.retrieval == "relevance" else None,
                "order": cfg.order,
                "update": cfg.update,
                "schedule": cfg.schedule,
                "budgets": self.budgets,
                "optimizer": {
                    "backend": self.llm.backend,
                    "model": self.llm.model,
                    "base_url": cfg.optimizer_base_url,
                    "usage": self.llm.usage.as_dict(),
                },
                "exemplar_train_positions": self.positions,
                "trajectory": [
                    {"step": e.step, "instruction": e.instruction, "dev_score": e.score} for e in trajectory
                ],
                "selection": SELECTION_RULE,
                "best_step": best.step,
                "search_seconds": round(time.perf_counter() - self.started, 3),
            },
        )
