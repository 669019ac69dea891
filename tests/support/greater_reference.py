"""A slow, independent GReaTer step for the tests (shared/reference/greater.md §4), written out
with plain full forwards: no batching, no KV cache, no memo, nothing of the search's loop.

It takes from a `Search` only the layout it was built with (the train examples as token pieces,
the fixed "Use" ids, the tokens a candidate may be, the re-encoding check and the placeholder),
which other tests check on their own, and recomputes everything the search decides per step: the
reasoning (greedy, cut at the task's stop strings), the proposal, the gradient order, the
criterion of each scored prompt on its own regenerated reasoning, the move and the next position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch


TEMPERATURE, GRADIENT_NLL, SELECTION_NLL, SCORED, FEWEST, SUBSET, RESTART = 0.2, 0.2, 0.02, 3, 6, 5, 0.12


def reasoning(model: Any, tok: Any, context: list[int], stops: list[str], max_new: int) -> list[int]:
    """Greedy tokens after `context`, one full forward per token; ends at end-of-sequence (or
    padding), and drops the token that completes a stop string, as lm-eval cuts the text."""
    ends = {tok.eos_token_id, tok.pad_token_id} - {None}
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([context + out])).logits[0, -1].argmax())
            if token in ends:
                break
            out.append(token)
            if any(s in tok.decode(out, skip_special_tokens=True) for s in stops):
                return out[:-1]
    return out


def wrong_and_nll(model: Any, seq: list[int], span: range, prompt: range) -> tuple[bool, float]:
    """Whether the greedy prediction of any token of `seq` in `span` (teacher-forced) is wrong, and
    the mean -log p of the tokens in `prompt` (a causal model: one forward gives both)."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()
    wrong = bool((logits[span.start - 1 : span.stop - 1].argmax(-1) != torch.tensor(seq[span.start : span.stop])).any())
    log_probs = torch.log_softmax(logits[prompt.start - 1 : prompt.stop - 1], dim=-1)
    return wrong, -float(log_probs.gather(1, torch.tensor(seq[prompt.start : prompt.stop])[:, None]).mean())


@dataclass
class Score:
    criterion: float
    error: float
    nll: float
    reasoning: list[list[int]]


class Reference:
    """GReaTer's rules over the examples of `search`, with the task's stop strings `stops`."""

    def __init__(self, search: Any, stops: list[str], max_new: int) -> None:
        self.search, self.model, self.tok = search, search.lm.model, search.tok
        self.examples, self.fixed = search.examples, search.fixed
        self.stops, self.max_new = stops, max_new
        self.reasoned: dict[tuple[int, ...], list[list[int]]] = {}
        self.scores: dict[tuple[int, ...], Score] = {}

    def context(self, ex: Any, prompt: list[int]) -> list[int]:
        return ex.prefix + self.fixed + prompt + ex.rest

    def reasoning(self, prompt: list[int]) -> list[list[int]]:
        key = tuple(prompt)
        if key not in self.reasoned:  # greedy: the same prompt always gives the same reasoning
            self.reasoned[key] = [
                reasoning(self.model, self.tok, self.context(ex, prompt), self.stops, self.max_new)
                for ex in self.examples
            ]
        return self.reasoned[key]

    def score(self, prompt: list[int], reasons: list[list[int]] | None = None, scored: str = "answer") -> Score:
        """Error rate + 0.02 x mean prompt NLL, the reasoning regenerated for `prompt` unless given.
        `scored`: which tokens decide the error: `answer` (the rule), `first` (the first answer
        token only) or `extractor` (extractor and answer), to show that a test tells them apart."""
        if reasons is None and scored == "answer":
            if tuple(prompt) not in self.scores:
                self.scores[tuple(prompt)] = self.score(prompt, self.reasoning(prompt))
            return self.scores[tuple(prompt)]
        reasons = self.reasoning(prompt) if reasons is None else reasons
        errors, nlls = [], []
        for ex, r in zip(self.examples, reasons):
            seq = self.context(ex, prompt) + r + ex.extractor + ex.answer
            start = len(seq) - len(ex.answer) - (len(ex.extractor) if scored == "extractor" else 0)
            span = range(start, start + 1 if scored == "first" else len(seq))
            head = len(ex.prefix) + len(self.fixed)
            wrong, nll = wrong_and_nll(self.model, seq, span, range(head, head + len(prompt)))
            errors.append(wrong)
            nlls.append(nll)
        error, nll = sum(errors) / len(errors), sum(nlls) / len(nlls)
        return Score(error + SELECTION_NLL * nll, error, nll, reasons)

    def loss(self, prompt: list[int], pos: int, reasons: list[list[int]], slot: torch.Tensor) -> torch.Tensor:
        """CE(answer logits / 0.2) + 0.2 x prompt NLL summed over the examples, with the embedding
        `slot` at the prompt's position `pos` (full logits, the model's own forward)."""
        weight = self.model.get_input_embeddings().weight
        total = torch.zeros(())
        for ex, r in zip(self.examples, reasons):
            seq = self.context(ex, prompt) + r + ex.extractor + ex.answer
            embeds = weight[torch.tensor(seq)].detach().clone()
            start = len(ex.prefix) + len(self.fixed)
            embeds[start + pos] = slot
            logits = self.model(inputs_embeds=embeds[None]).logits[0].float()
            a0 = len(seq) - len(ex.answer)
            ce = torch.nn.functional.cross_entropy(logits[a0 - 1 : len(seq) - 1] / TEMPERATURE, torch.tensor(ex.answer))
            log_probs = torch.log_softmax(logits[start - 1 : start + len(prompt) - 1], dim=-1)
            total = total + ce + GRADIENT_NLL * -log_probs.gather(1, torch.tensor(prompt)[:, None]).mean()
        return total

    def gradient(self, prompt: list[int], pos: int, candidates: list[int], reasons: list[list[int]]) -> torch.Tensor:
        """d loss / d one-hot over the candidates at `pos` (the chain rule through the embedding)."""
        weight = self.model.get_input_embeddings().weight
        slot = weight[prompt[pos]].detach().clone().requires_grad_(True)
        self.loss(prompt, pos, reasons, slot).backward()
        return weight[candidates].detach() @ slot.grad

    def proposal(
        self, prompt: list[int], pos: int, rng: random.Random, topk: int, topq: int, grow: int = 2
    ) -> list[int]:
        """Per-example top-k after "{question}. Use {prefix}" over the allowed tokens but the one
        before `pos`, intersected over `topq` seeded subsets of 5, unioned; k grows by `grow` until
        6 remain; the current token added."""
        with torch.no_grad():
            rows = [
                self.model(torch.tensor([ex.question + prompt[:pos]])).logits[0, -1].float() for ex in self.examples
            ]
        mask = self.search.scorer.allowed[: rows[0].shape[0]].clone()
        mask[prompt[pos - 1]] = False
        log_probs = [torch.log_softmax(row, -1).masked_fill(~mask, float("-inf")) for row in rows]
        draws = [rng.sample(range(len(rows)), min(SUBSET, len(rows))) for _ in range(topq)]
        k, limit = min(topk, int(mask.sum())), int(mask.sum())
        while True:
            tops = [set(torch.topk(row, k).indices.tolist()) for row in log_probs]
            union = set().union(*(set.intersection(*(tops[i] for i in d)) for d in draws))
            if len(union) >= FEWEST or k >= limit:
                return sorted(union | {prompt[pos]})
            k = min(k + grow, limit)


def ends_sentence(tok: Any, token: int) -> bool:
    return "." in tok.decode([token])


@dataclass
class Step:
    prompt: list[int]
    pos: int
    candidates: list[int]
    scored: list[list[int]]
    """The prompts scored, in gradient order."""
    scores: list[Score]
    chosen: list[int]
    reasoning: list[list[int]] = field(default_factory=list)
    """The reasoning the gradient was taken after: the current prompt's, regenerated."""


def chain(ref: Reference, steps: int, rng: random.Random, topk: int, topq: int) -> list[Step]:
    """`steps` reference steps from the search's initial prompt at position 0."""
    search, tok = ref.search, ref.tok
    prompt, pos, out = list(search.initial), 0, []
    for _ in range(steps):
        reasons = ref.reasoning(prompt)
        candidates = ref.proposal(prompt, pos, rng, topk, topq)
        order = [candidates[i] for i in torch.argsort(ref.gradient(prompt, pos, candidates, reasons)).tolist()]
        scored: list[list[int]] = []
        for token in order:  # most negative first; the period rule takes one at once
            new = prompt[:pos] + [token] + prompt[pos + 1 :]
            if not search.reencodes(new):
                continue
            if ends_sentence(tok, token) and pos >= 0.5 * len(search.initial):
                scored = [new]
                break
            scored.append(new)
            if len(scored) == SCORED:
                break
        scores = [ref.score(p) for p in scored]
        if not scored:  # nothing re-encodes: the prompt stays
            chosen, criterion = list(prompt), ref.score(prompt).criterion
        else:  # the period rule's one, else the lowest criterion, ties to the later
            best = min(reversed(range(len(scored))), key=lambda i: scores[i].criterion)
            chosen, criterion = scored[best], scores[best].criterion
        out.append(Step(list(prompt), pos, candidates, scored, scores, chosen, reasons))
        prompt, pos = list(chosen), pos + 1
        if pos >= len(prompt):
            if ends_sentence(tok, prompt[-1]):
                pos = 0
            else:
                prompt.append(search.placeholder)
        if criterion < RESTART:
            pos = 0
    return out
