"""One task's GReaTer search: its examples and token ids, the step loop, and the pure rules.

One step changes one position of the instruction: candidate tokens come from the model's own
next-token distribution, are ranked by the gradient of the answer loss taken after the model's
own reasoning, and the best 3 that re-encode to their ids are scored by regenerating the
reasoning on all train examples (error rate + 0.02 x prompt NLL; these three in `scoring.py`).
`select` takes the move, `advance` the next position, growing the prompt by a placeholder until
a sentence end is chosen at its end.

The instruction is the paper's fixed "Use" (`fixed`, as the tokenizer writes it inside the
rendered prompt) followed by the searched ids. Candidates are checked for re-encoding inside the
first train doc's rendered prompt, or on their own where the initial instruction already merges
with the text around it. After each step the state (with the random generator's) is saved, and
every scored prompt journaled, so a resumed run repeats no step and rescores no prompt.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from ...errors import PromptOptError
from ...logs import get_logger
from ..base import Problem
from .config import CANDIDATES_SCORED, FIXED_PREFIX, RESTART_BELOW, TOP_KEPT, GreaterConfig
from .engine import Engine, hf_model
from .examples import allowed_token_mask, build_examples, pieces_in_context, placeholder_token
from .scoring import Scored, Scorer


logger = get_logger(__name__)


def ends_sentence(token_text: str) -> bool:
    return "." in token_text


def select(ranked: list[tuple[list[int], float, str]], pos: int, initial_length: int) -> list[int] | None:
    """The move among scored candidates `(ids, criterion, token text)` in gradient order: one whose
    token ends a sentence at `pos` >= half the initial length is taken at once (the period rule);
    otherwise the lowest criterion, ties to the later candidate (the reference's `<=`)."""
    best: tuple[list[int], float] | None = None
    for ids, criterion, token in ranked:
        if ends_sentence(token) and pos >= 0.5 * initial_length:
            return ids
        if best is None or criterion <= best[1]:
            best = (ids, criterion)
    return best[0] if best else None


def advance(
    prompt: list[int], pos: int, criterion: float, placeholder: int, last_ends_sentence: bool
) -> tuple[list[int], int]:
    """The next (prompt, position): one position on; past the end, wrap to 0 if the last token
    ends a sentence, else grow the prompt by a placeholder; a criterion below 0.12 restarts at 0."""
    pos += 1
    if pos >= len(prompt):
        if last_ends_sentence:
            pos = 0
        else:
            prompt = [*prompt, placeholder]
    if criterion < RESTART_BELOW:
        pos = 0
    return prompt, pos


class Search:
    """The search on one `Problem`: built per call, so no task sees another's state."""

    def __init__(self, config: GreaterConfig, problem: Problem) -> None:
        lm = hf_model(problem.model)
        tok = lm.tokenizer
        instruction = problem.initial_instruction
        if not instruction.startswith(FIXED_PREFIX):
            raise PromptOptError(
                f"greater optimizes the text after a fixed {FIXED_PREFIX!r} (as in the paper); "
                f"the initial instruction must start with it, got {instruction!r}"
            )
        special = set(tok.all_special_ids)
        fixed = tok.encode(FIXED_PREFIX, add_special_tokens=False)
        if not fixed or special & set(fixed):
            raise PromptOptError(
                f"greater: this tokenizer cannot write the paper's fixed {FIXED_PREFIX!r} (it encodes to {tok.convert_ids_to_tokens(fixed)})"
            )
        whole = tok.encode(instruction, add_special_tokens=False)
        tail = (
            whole[len(fixed) :]
            if whole[: len(fixed)] == fixed
            else tok.encode(instruction[len(FIXED_PREFIX) :], add_special_tokens=False)
        )
        prompt = [t for t in tail if t not in special]  # e.g. <unk>: no text can stand for it
        if not prompt:
            raise PromptOptError(
                f"greater needs an initial instruction with words after 'Use' that the tokenizer can represent, got {instruction!r}"
            )
        gen_kwargs = problem.generation_kwargs
        until = gen_kwargs.get("until") or []
        stop = [until] if isinstance(until, str) else list(until)
        max_new = min(config.max_reasoning_tokens, int(gen_kwargs.get("max_gen_toks", config.max_reasoning_tokens)))
        self.config, self.problem, self.lm, self.tok, self.fixed = config, problem, lm, tok, fixed
        self.engine = Engine(lm, config, stop, max_new)
        start = self.text(prompt)
        self.initial_as_seen = None if start == instruction else start
        """The initial instruction as the tokenizer gives it back, where it does not round-trip."""
        if self.initial_as_seen is not None:
            logger.info(
                f"lm_eval_promptopt: {problem.task_name}: the tokenizer does not round-trip the initial instruction; the search starts from, and the harness sees, {start!r}"
            )
        docs = problem.docs("train")
        if not docs:
            raise PromptOptError(
                f"{problem.task_name}: greater needs at least one optimize-train doc (train_size >= 1)"
            )
        self.first_doc = docs[0]
        self.initial = self._ids_in_context(start, prompt)
        """The initial prompt's ids (after `fixed`)."""
        self.examples, self.extractor = build_examples(
            problem, lm, start, self.fixed + self.initial, config.extractor, FIXED_PREFIX
        )
        self.in_context = True
        if not self.reencodes(self.initial):
            self.in_context = False
            logger.info(
                f"lm_eval_promptopt: {problem.task_name}: the initial instruction tokenises differently inside the rendered prompt "
                "(it merges with the text around it); candidates are checked for re-encoding on their own instead"
            )
        self.scorer = Scorer(
            config, self.engine, self.examples, self.fixed, allowed_token_mask(tok, self.engine.embeddings.shape[0])
        )
        self.placeholder = placeholder_token(tok)
        self.memo: dict[tuple[int, ...], Scored] = {}
        """Every prompt scored so far (a resumed search reads them back from the journal)."""
        self.initial_length = len(self.initial)

    def _ids_in_context(self, start: str, prompt: list[int]) -> list[int]:
        """The initial prompt's ids as they tokenise inside the rendered prompt (a SentencePiece
        tokenizer writes "Use" at the start of a line without its word-start mark); `self.fixed`
        becomes the in-context ids of "Use". Where they cannot be told apart: the ids as given."""
        rendered = self.problem.render(self.first_doc, start)
        pieces = None if rendered.span is None else pieces_in_context(self.lm, rendered.text, rendered.span)
        if pieces is None or self.tok.decode(pieces[1], skip_special_tokens=True) != start:
            return prompt
        ids, fixed = pieces[1], self.tok.decode(self.fixed, skip_special_tokens=True).strip()
        for j in range(1, len(ids)):
            if self.tok.decode(ids[:j], skip_special_tokens=True).strip() == fixed:
                self.fixed = ids[:j]
                return ids[j:]
        return prompt

    def text(self, prompt: list[int]) -> str:
        """The instruction the harness gets for `prompt` (never the text of a special token)."""
        return self.tok.decode(self.fixed + prompt, skip_special_tokens=True)

    def reencodes(self, prompt: list[int]) -> bool:
        """Whether the text of `prompt`, rendered by lm-eval into the first train doc's prompt and
        encoded, gives exactly the ids the search uses (on its own where the initial one fails that)."""
        text = self.text(prompt)
        if not self.in_context:
            return self.tok.encode(text, add_special_tokens=False) == self.fixed + prompt
        rendered = self.problem.render(self.first_doc, text)
        ex = self.examples[0]
        return (
            rendered.span is not None and self.lm.tok_encode(rendered.text) == ex.prefix + self.fixed + prompt + ex.rest
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self, rng: random.Random) -> tuple[list[tuple[float, list[int]]], list[dict[str, Any]], str]:
        """The steps (after the last completed one where the run log resumes a search): the 10
        best prompts seen as (criterion, ids), the step records, and why the loop ended."""
        state = self._start(rng)
        prompt, pos, skipped = list(state["prompt"]), state["pos"], state["skipped"]
        top = [(c, list(ids)) for c, ids in state["top"]]
        history = list(state["history"])
        reasoning, reasoning_for = (
            (self.memo[tuple(prompt)].reasoning, list(prompt)) if tuple(prompt) in self.memo else (None, None)
        )
        stop_reason = "steps"
        steps = tqdm(
            range(state["step"], self.config.steps), desc=f"greater {self.problem.task_name}", unit="step", leave=False
        )
        for step in steps:
            started, counters, seconds = time.perf_counter(), dict(self.engine.counters), dict(self.engine.seconds)
            self.engine.rows, self.engine.shapes, self.engine.new_tokens = {}, [], 0
            if reasoning_for != prompt:
                reasoning, reasoning_for = self.scorer.reasoning(prompt), list(prompt)
            entry, best, skips = self._step(step, prompt, pos, reasoning, rng)
            skipped += skips
            entry |= self._measures(started, counters, seconds)
            history.append(entry)
            self.problem.record({"kind": "greater_step", **entry})
            scored = self.memo[tuple(best)]
            prompt, reasoning, reasoning_for = list(best), scored.reasoning, list(best)
            if all(ids != prompt for _, ids in top):
                top = sorted([*top, (scored.criterion, list(prompt))], key=lambda x: x[0])[:TOP_KEPT]
            prompt, pos = advance(
                prompt, pos, scored.criterion, self.placeholder, ends_sentence(self.tok.decode([prompt[-1]]))
            )
            state = {
                "step": step + 1,
                "prompt": prompt,
                "pos": pos,
                "top": top,
                "history": history,
                "skipped": skipped,
                "initial_length": self.initial_length,
                "counters": dict(self.engine.counters),
                "rng": rng.getstate(),
            }
            stop = self.problem.log.step_done(-scored.criterion, state)
            if stop and step + 1 < self.config.steps:
                stop_reason = stop
                break
        if skipped:
            history.append({"reencoding_skips": skipped})
        return top, history, stop_reason

    def _start(self, rng: random.Random) -> dict[str, Any]:
        """The loop's state: fresh, or the interrupted run's after its last completed step (its
        random generator, counters and scored prompts restored)."""
        log = self.problem.log
        if not log.resumed:
            return {"step": 0, "prompt": self.initial, "pos": 0, "top": [], "history": [], "skipped": 0}
        state = dict(log.resumed)
        version, internal, gauss = state.pop("rng")
        rng.setstate((version, tuple(internal), gauss))
        self.initial_length = state["initial_length"]
        self.engine.counters.update(state["counters"])
        for e in log.journal():
            self.memo[tuple(e["ids"])] = Scored(
                e["criterion"], e["error"], e["nll"], e["reasoning"], e.get("gold_near_zero")
            )
        return state

    def _step(
        self, step: int, prompt: list[int], pos: int, reasoning: list[list[int]], rng: random.Random
    ) -> tuple[dict[str, Any], list[int], int]:
        """One position: propose, rank by gradient, score, select. The step's record, the chosen
        prompt, and the candidates skipped for not re-encoding."""
        candidates = self.scorer.propose(prompt, pos, rng)
        gradient = self.scorer.gradient(prompt, pos, candidates, reasoning)
        chosen, skipped = self._to_score(prompt, pos, [candidates[i] for i in torch.argsort(gradient).tolist()])
        self._remember([ids for ids in chosen if tuple(ids) not in self.memo])
        ranked = [(ids, self.memo[tuple(ids)].criterion, self.tok.decode([ids[pos]])) for ids in chosen]
        best = select(ranked, pos, self.initial_length)
        if best is None:  # every candidate failed the re-encoding check: keep the prompt
            best = list(prompt)
            if tuple(best) not in self.memo:
                self._remember([best])
        scored = self.memo[tuple(best)]
        entry = {
            "step": step,
            "position": pos,
            "candidates": [self.tok.decode([t]) for t in candidates],
            "scored": {self.text(ids): round(c, 6) for ids, c, _ in ranked},
            "ranked": [{"instruction": self.text(ids), "token": t, "criterion": c} for ids, c, t in ranked],
            "chosen": self.text(best),
            "criterion": scored.criterion,
            "train_error": scored.error,
            "prompt_nll": scored.nll,
            "gold_near_zero": scored.gold_near_zero,
        }
        if self.config.harness_train:  # the harness's own score beside the criterion (memoized, replayed on resume)
            entry["harness_train_score"] = self.problem.score(self.text(best), "train")
        return entry, best, skipped

    def _to_score(self, prompt: list[int], pos: int, order: list[int]) -> tuple[list[list[int]], int]:
        """The prompts with a candidate at `pos`, in gradient order, that re-encode to their ids:
        up to 3, or one alone that the period rule takes whatever the others score; and the
        number skipped."""
        chosen, skipped = [], 0
        for token in order:
            new = prompt[:pos] + [token] + prompt[pos + 1 :]
            if not self.reencodes(new):
                skipped += 1
                continue
            chosen.append(new)
            if ends_sentence(self.tok.decode([token])) and pos >= 0.5 * self.initial_length:
                return [new], skipped
            if len(chosen) == CANDIDATES_SCORED:
                break
        return chosen, skipped

    def _remember(self, prompts: list[list[int]]) -> None:
        """Score `prompts`, memoized and journaled for a resume."""
        for ids, scored in zip(prompts, self.scorer.score(prompts)):
            self.memo[tuple(ids)] = scored
            self.problem.log.write_journal({"ids": ids, **asdict(scored)})

    def _measures(self, started: float, counters: dict[str, float], seconds: dict[str, float]) -> dict[str, Any]:
        """What the step cost: wall seconds, counters and phase seconds since the step began, the
        largest batches, the regenerations' shapes."""
        engine = self.engine
        return {
            "seconds": round(time.perf_counter() - started, 3),
            "counters": {k: v - counters.get(k, 0) for k, v in engine.counters.items()},
            "phase_seconds": {k: round(v - seconds.get(k, 0), 3) for k, v in engine.seconds.items()},
            "batch_rows": dict(engine.rows),
            "regeneration_shapes": {"context_lengths": sorted(engine.shapes), "new_tokens": engine.new_tokens},
        }
