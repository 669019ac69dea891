"""The model-side parts of a GReaTer step over the train examples: the reasoning, the proposal,
the gradient ranking and the selection criterion.

- Proposal: per-example top-k of the next-token distribution after "{question}. Use {prefix}"
  (or, with `proposal=rendered`, after the rendered prompt prefix), over letters-and-spaces
  tokens, no immediate repeat; intersected over `topq` random subsets of 5 examples, unioned; k
  grows by 2 until 6 candidates remain.
- Gradient: of CE(answer logits / 0.2) + 0.2 x prompt NLL, with the model's reasoning fixed,
  w.r.t. a one-hot over the candidates' embeddings at the position only; float32 whatever the
  model's dtype; one backward per batch of examples (all choices of an example together).
- Criterion: error rate over the answer tokens after regenerated reasoning + 0.02 x prompt NLL;
  for multiple choice, the error of the highest-likelihood choice (lm-eval's `acc`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .config import (
    ANSWER_TEMPERATURE,
    EXAMPLES_PER_INTERSECTION,
    GRADIENT_FLUENCY,
    MIN_CANDIDATES,
    SELECTION_FLUENCY,
    GreaterConfig,
)
from .engine import Engine
from .examples import Example


@dataclass
class Scored:
    criterion: float
    error: float
    nll: float
    reasoning: list[list[int]]
    gold_near_zero: float | None = None
    """Share of train docs whose bare gold answer has probability below `NEAR_ZERO` after the
    reasoning and the extractor (None for multiple choice)."""


NEAR_ZERO = 0.01


class Scorer:
    """Reasoning, proposal, gradient and criterion for prompts after `fixed` on `examples`."""

    def __init__(
        self, config: GreaterConfig, engine: Engine, examples: list[Example], fixed: list[int], allowed: torch.Tensor
    ) -> None:
        self.config = config
        self.engine = engine
        self.examples = examples
        self.fixed = fixed
        self.allowed = allowed
        """The tokens a candidate may be (see `examples.allowed_token_mask`)."""
        self.multiple_choice = examples[0].choices is not None

    def contexts(self, prompt: list[int]) -> list[list[int]]:
        return [ex.prefix + self.fixed + prompt + ex.rest for ex in self.examples]

    def reasoning(self, prompt: list[int]) -> list[list[int]]:
        if self.multiple_choice:
            return [[] for _ in self.examples]
        return self.engine.generate(self.contexts(prompt))

    def propose(self, prompt: list[int], pos: int, rng: random.Random) -> list[int]:
        """Candidate tokens for `pos`: per-example top-k, intersected over subsets, unioned; k grows."""
        cfg = self.config
        if cfg.proposal == "example":
            contexts = [ex.question + prompt[:pos] for ex in self.examples]
        else:
            ex = self.examples[0]
            contexts = [ex.prefix + self.fixed + prompt[:pos]]
        log_probs = self.engine.next_token_log_probs(contexts)
        mask = self.allowed[: log_probs.shape[1]].clone()
        mask[prompt[pos - 1]] = False  # no immediate repeat (pos 0: the last token, as in the reference)
        log_probs = log_probs.masked_fill(~mask, float("-inf"))
        limit = int(mask.sum())
        k = min(cfg.topk, limit)
        size = min(EXAMPLES_PER_INTERSECTION, len(contexts))
        draws = [rng.sample(range(len(contexts)), size) for _ in range(cfg.topq)]
        while True:
            top_sets = [set(row.tolist()) for row in torch.topk(log_probs, k, dim=1).indices]
            union: set[int] = set()
            for draw in draws:
                union |= set.intersection(*(top_sets[i] for i in draw))
            if len(union) >= MIN_CANDIDATES or k >= limit:
                break
            k = min(k + 2, limit)
        if prompt[pos] not in union:
            union.add(prompt[pos])
        return sorted(union)

    def rows(
        self, prompt: list[int], reasoning: list[list[int]]
    ) -> tuple[list[list[int]], list[range], list[range], list[int]]:
        """Full sequences, answer spans, prompt spans, and the example each row belongs to."""
        seqs, answers, prompts, owner = [], [], [], []
        for i, ex in enumerate(self.examples):
            head = ex.prefix + self.fixed + prompt + ex.rest + reasoning[i] + ex.extractor
            start = len(ex.prefix) + len(self.fixed)
            for piece in ex.choices if self.multiple_choice else [ex.answer]:
                seqs.append(head + piece)
                answers.append(range(len(head), len(head) + len(piece)))
                prompts.append(range(start, start + len(prompt)))
                owner.append(i)
        return seqs, answers, prompts, owner

    def losses(
        self, hidden, seqs, answers, prompts, owner, batch_examples
    ) -> tuple[list[torch.Tensor], list[float], list[torch.Tensor]]:
        """Per example: answer loss (CE with logits/T), error (0/1), prompt NLL."""
        logits, gold, nll = self.engine.sequence_terms(hidden, seqs, answers, prompts)
        losses, errors, nlls = [], [], []
        for i in batch_examples:
            rows = [r for r, o in enumerate(owner) if o == i]
            if self.multiple_choice:
                ll = torch.stack([torch.log_softmax(logits[r], dim=-1).gather(1, gold[r][:, None]).sum() for r in rows])
                target = torch.tensor(self.examples[i].gold, device=ll.device)
                losses.append(torch.nn.functional.cross_entropy((ll / ANSWER_TEMPERATURE)[None], target[None]))
                errors.append(float(int(ll.argmax()) != self.examples[i].gold))
            else:
                (r,) = rows
                losses.append(torch.nn.functional.cross_entropy(logits[r] / ANSWER_TEMPERATURE, gold[r]))
                errors.append(float(bool((logits[r].argmax(-1) != gold[r]).any())))
            nlls.append(nll[rows[0]])
        return losses, errors, nlls

    def _example_batches(self, seqs: list[list[int]], backward: bool) -> list[list[int]]:
        """Examples per forward (all choices of one example together), as many as memory allows."""
        per = len(self.examples[0].choices) if self.multiple_choice else 1
        width = max(len(q) for q in seqs)
        rows = self.engine.fit("backward" if backward else "forward", width, len(seqs), backward)
        size = max(1, rows // per)
        return [list(range(s, min(s + size, len(self.examples)))) for s in range(0, len(self.examples), size)]

    def gradient(self, prompt: list[int], pos: int, candidates: list[int], reasoning: list[list[int]]) -> torch.Tensor:
        """d loss / d one-hot over the candidates at `pos`, summed over examples, L2-normalised."""
        engine = self.engine
        weight = engine.embeddings
        # the one-hot, the loss and the gradient stay in float32 whatever the model's dtype
        one_hot = torch.zeros(len(candidates), dtype=torch.float32, device=weight.device)
        one_hot[candidates.index(prompt[pos])] = 1.0
        one_hot.requires_grad_(True)
        rows_c = weight[candidates].detach().float()
        seqs, answers, prompts, owner = self.rows(prompt, reasoning)
        for batch in self._example_batches(seqs, backward=True):
            rows = [r for r, o in enumerate(owner) if o in batch]
            with engine.phase("forwards"):
                ids, mask = engine.batch([seqs[r] for r in rows])
                embeds = weight[ids].detach().clone()
                slot = (one_hot @ rows_c).to(weight.dtype)
                for j, r in enumerate(rows):
                    embeds[j, len(self.examples[owner[r]].prefix) + len(self.fixed) + pos] = slot
                hidden = engine.hidden(mask, embeds=embeds)
                sub = (
                    [seqs[r] for r in rows],
                    [answers[r] for r in rows],
                    [prompts[r] for r in rows],
                    [owner[r] for r in rows],
                )
                losses, _, nlls = self.losses(hidden, *sub, batch)
                total = sum(loss + GRADIENT_FLUENCY * n for loss, n in zip(losses, nlls))
            with engine.phase("backwards"):
                total.backward()
            engine.counters.add("backward_passes")
        grad = one_hot.grad.detach().float()
        return grad / grad.norm().clamp_min(1e-12)

    @torch.no_grad()
    def score(self, prompts: list[list[int]]) -> list[Scored]:
        """Selection criterion per prompt: regenerate reasoning (all prompts x examples, batched), score."""
        if not prompts:
            return []
        if self.multiple_choice:
            return [self._score_choices(prompt) for prompt in prompts]
        n, engine = len(self.examples), self.engine
        tails = [ex.extractor + ex.answer for _ in prompts for ex in self.examples]
        flat, hidden = engine.generate_and_read([c for p in prompts for c in self.contexts(p)], tails)
        results = []
        for k, prompt in enumerate(prompts):
            errors, near_zero = [], 0
            with engine.phase("forwards"):
                for i, ex in enumerate(self.examples):
                    logits = engine.logits(hidden[k * n + i][len(ex.extractor) : len(ex.extractor) + len(ex.answer)])
                    errors.append(float(logits.argmax(-1).tolist() != ex.answer))
                    gold = (
                        torch.log_softmax(logits, -1)
                        .gather(1, torch.tensor(ex.answer, device=logits.device)[:, None])
                        .sum()
                    )
                    near_zero += float(gold.exp()) < NEAR_ZERO
            nlls = engine.prompt_nll([ex.prefix + self.fixed + prompt for ex in self.examples], len(prompt))
            error, nll = sum(errors) / n, sum(nlls) / n
            results.append(
                Scored(error + SELECTION_FLUENCY * nll, error, nll, flat[k * n : (k + 1) * n], near_zero / n)
            )
        return results

    def _score_choices(self, prompt: list[int]) -> Scored:
        """Multiple choice: error and prompt NLL from full forwards over every choice."""
        seqs, answers, spans, owner = self.rows(prompt, [[] for _ in self.examples])
        errors, nlls = [], []
        with self.engine.phase("forwards"):
            for batch in self._example_batches(seqs, backward=False):
                rows = [r for r, o in enumerate(owner) if o in batch]
                ids, mask = self.engine.batch([seqs[r] for r in rows])
                hidden = self.engine.hidden(mask, ids=ids)
                sub = (
                    [seqs[r] for r in rows],
                    [answers[r] for r in rows],
                    [spans[r] for r in rows],
                    [owner[r] for r in rows],
                )
                _, batch_errors, batch_nlls = self.losses(hidden, *sub, batch)
                errors += batch_errors
                nlls += [float(n) for n in batch_nlls]
        error, nll = sum(errors) / len(errors), sum(nlls) / len(nlls)
        return Scored(error + SELECTION_FLUENCY * nll, error, nll, [[] for _ in self.examples])
