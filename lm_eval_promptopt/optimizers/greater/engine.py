"""The model side of one GReaTer search: batched generation, forwards and the answer read off the
generation's KV cache, counted and timed per phase.

Generation gives the tokens of lm-eval's `generate_until`: greedy, stopped by the task's `until`
plus the EOS text, the ids cut where lm-eval cuts the text; `decode.greedy` makes them (Hugging
Face `generate` where it cannot, with a logged line), rows leaving the batch as they end. A step's
regenerations run longest first in as few left-padded batches as `batching.rows_that_fit` allows,
each on a static KV cache (it grows by no copies); a candidate's answer is then read off that
cache by one forward over [the reasoning's last token] + extractor + answer, not by a second
forward over the whole reasoning. Every model call's FLOPs are counted per phase (`flops`). Logits are taken at the hidden states that need them only, in
float32 (Gemma-2's final soft-capping applied).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.models.utils_hf import stop_sequences_criteria
from transformers import StaticCache

from ...errors import PromptOptError
from ...logs import get_logger
from .batching import memory_budget, padded, rows_that_fit
from .config import GreaterConfig
from .decode import CompileFailed, DecodeStep, cache_keyword, greedy, unsupported
from .flops import Shape


log = get_logger(__name__)


class Counters(dict):
    def add(self, key: str, value: float = 1) -> None:
        self[key] = self.get(key, 0) + value


def needs_hf(got: str) -> PromptOptError:
    return PromptOptError(
        f"GReaTer needs gradients of a local Hugging Face causal model (--model hf); got {got}. "
        "For API or other backends use --optimize gpo."
    )


def hf_model(lm: Any) -> Any:
    """`lm` if it is lm-eval's Hugging Face causal model, else a clear error."""
    from lm_eval.models.huggingface import HFLM

    if not isinstance(lm, HFLM) or getattr(lm, "backend", "causal") != "causal":
        raise needs_hf(type(lm).__name__)
    return lm


def peak_memory_mb(device: Any) -> float:
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS (Linux: KiB)


class Engine:
    """The model-side computations of one GReaTer run, batched and counted."""

    def __init__(self, lm: Any, config: GreaterConfig, stop: list[str], max_new: int) -> None:
        self.lm = lm
        self.model = lm.model
        self.tok = lm.tokenizer
        self.device = lm.device
        self.max_new = max_new
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.eos = {i for i in [self.tok.eos_token_id, getattr(lm, "eot_token_id", None)] if i is not None}
        # the stop sequences lm-eval's generate_until uses: the task's `until` plus the EOS text
        self.until = handle_stop_sequences(list(stop), eos=lm.tok_decode(lm.eot_token_id, skip_special_tokens=False))
        self.embeddings = self.model.get_input_embeddings().weight
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        given = getattr(lm, "batch_size_per_gpu", None)  # lm-eval's --batch_size (its default is 1)
        self.cap = config.batch_size or (given if isinstance(given, int) and given > 1 else None)
        self.budget = memory_budget(self.model)
        """Bytes one batch may plan for (see `batching`)."""
        self.counters = Counters()
        self.seconds = Counters()
        """Wall seconds per phase: generation, forwards, backwards, proposal."""
        self.rows: dict[str, int] = {}
        """The largest batch (sequences) used per kind of call: generate, forward, backward."""
        self.shapes: list[int] = []
        """Context lengths of the sequences generated in this step (reset per step), and the most
        tokens one generate call made."""
        self.new_tokens = 0
        self.fallback = unsupported(self.model)
        """Why generation falls back to Hugging Face `generate` (None: `decode.greedy` runs)."""
        self.step = DecodeStep(self.model, config.compile)
        """The decode steps' forward (compiled with `compile`)."""
        self.cache_key = cache_keyword(self.model)
        if self.fallback:
            log.warning(
                "GReaTer generates with Hugging Face generate: the fast greedy decoder cannot run (%s)", self.fallback
            )
        self.shape = Shape(self.model)
        self.current = "other"
        """The phase now running: FLOPs are counted to it (counters `flops_<phase>`)."""
        self.to_backward = 0
        """FLOPs done with gradients since the last backward: the backward does as many (see `flops`)."""
        self.lookback = max((len(self.tok.encode(s, add_special_tokens=False)) for s in self.until), default=0) + 2

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase `name`."""
        started, outer, self.current = time.perf_counter(), self.current, name
        try:
            yield
        finally:
            self.seconds.add(name, time.perf_counter() - started)
            self.current = outer
            if name == "backwards":
                self.counters.add("flops_backwards", self.to_backward)
                self.to_backward = 0

    def count(self, tokens: int, attended: int, logits: int = 0) -> None:
        """Add the FLOPs of a forward (see `flops.Shape.forward`) to the phase now running."""
        flops = self.shape.forward(tokens, attended, logits)
        self.counters.add(f"flops_{self.current}", flops)
        if torch.is_grad_enabled():
            self.to_backward += flops

    def fit(self, kind: str, width: int, wanted: int, backward: bool = False) -> int:
        """Rows for the next `kind` batch of `width` tokens (recorded)."""
        rows = rows_that_fit(self.model, self.budget, width, wanted, self.cap, backward)
        self.rows[kind] = max(self.rows.get(kind, 0), rows)
        return rows

    def batch(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask on the model's device."""
        ids, mask = padded(seqs, self.pad)
        return ids.to(self.device), mask.to(self.device)

    def hidden(
        self, mask: torch.Tensor, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.counters.add("forward_passes")
        self.counters.add("tokens_processed", int(mask.sum()))
        self.count(mask.numel(), mask.shape[1])
        out = self.model.base_model(input_ids=ids, inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head at the given hidden states only (not at every position), in float32."""
        self.count(0, 0, hidden.numel() // hidden.shape[-1])
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def decoder(self) -> str:
        """How the reasoning was generated, for the run's record."""
        if self.fallback:
            return f"generate ({self.fallback})"
        return f"greedy, decode steps {self.step.describe()}"

    # -- generation ------------------------------------------------------------------------
    def _trim(self, ids: list[int]) -> list[int]:
        """Cut at end-of-sequence and before the token that completes the first stop sequence, as
        lm-eval cuts the decoded text; the generated ids are kept as they are."""
        for i, token in enumerate(ids):
            if token in self.eos or token == self.pad:
                ids = ids[:i]
                break

        if not self._stops(ids):
            return ids
        low, high = 0, len(ids)  # the shortest prefix that contains a stop sequence
        while low < high:
            mid = (low + high) // 2
            if self._stops(ids[: mid + 1]):
                high = mid
            else:
                low = mid + 1
        return ids[:low]

    def _stops(self, ids: list[int]) -> bool:
        """Whether the text of `ids` holds a stop sequence (as `_trim` decodes it)."""
        text = self.lm.tok_decode(ids)
        return any(s and s in text for s in self.until)

    def _ended(self, tokens: list[int]) -> bool:
        """Whether a row ends with its last token: an end token, or a stop sequence in its text,
        looked for in its last tokens first (lm-eval's window: the stop's token count plus 2), so
        that a row ends only where `_trim` cuts it."""
        if tokens[-1] in self.eos or tokens[-1] == self.pad:
            return True
        return self._stops(tokens[-self.lookback :]) and self._stops(tokens)

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor, room: int) -> tuple[list[list[int]], Any, int]:
        """Greedy tokens per row (`decode.greedy`, or `generate` where it cannot run), the cache
        holding their KV, and the tokens fed after the prompt."""
        if self.fallback is None:
            try:
                return greedy(self.model, ids, mask, self.max_new, room, self._ended, self.step)
            except CompileFailed:  # the batch again: `self.step` runs uncompiled from now on
                return greedy(self.model, ids, mask, self.max_new, room, self._ended, self.step)
        width = ids.shape[1]
        result = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.max_new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.pad,
            stopping_criteria=stop_sequences_criteria(self.tok, self.until, width, len(ids)),
            **{self.cache_key: StaticCache(config=self.model.config, max_cache_len=room)},  # grows by no copies
            return_dict_in_generate=True,
        )
        generated = result.sequences[:, width:].tolist()
        return generated, result[self.cache_key], len(generated[0]) - 1  # the last generated token was never fed

    def generate(self, contexts: list[list[int]]) -> list[list[int]]:
        """Greedy reasoning for every context (see `generate_and_read`)."""
        return self.generate_and_read(contexts, None)[0]

    @torch.no_grad()
    def generate_and_read(
        self, contexts: list[list[int]], tails: list[list[int]] | None
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy reasoning for every context: longest first, in as few left-padded batches as
        memory allows, returned in the given order. With `tails`: per row also the hidden states
        over [the reasoning's last token (or the context's)] + tail, read off the generation's own
        KV cache (hidden j predicts tail token j)."""
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        out: list[list[int]] = [[] for _ in contexts]
        read: list[tuple[int, torch.Tensor]] = []
        start = 0
        while start < len(order):
            width = len(contexts[order[start]])
            room = width + self.max_new + (1 + max(len(tails[i]) for i in order[start:]) if tails is not None else 0)
            chunk = order[start : start + self.fit("generate", room, len(order) - start)]
            start += len(chunk)
            ids, mask = padded([contexts[i] for i in chunk], self.pad, left=True)
            with self.phase("generation"):
                generated, cache, cached = self._decode(ids.to(self.device), mask.to(self.device), room)
                decoded = sum(len(g) - 1 for g in generated)  # tokens fed after the prompt, over the rows
                self.count(ids.numel() + decoded, room, len(chunk) + decoded)
                for row, i in enumerate(chunk):
                    out[i] = self._trim(generated[row])
                    self.counters.add("tokens_generated", len(out[i]))
            self.counters.add("generate_calls")
            self.counters.add("generations", len(chunk))
            self.shapes += [len(contexts[i]) for i in chunk]
            self.new_tokens = max(self.new_tokens, cached + 1)
            if tails is not None:
                with self.phase("forwards"):
                    hidden = self._read_tails(
                        cache,
                        mask,
                        cached,
                        [contexts[i] for i in chunk],
                        [out[i] for i in chunk],
                        [tails[i] for i in chunk],
                    )
                read += [(i, h) for i, h in zip(chunk, hidden)]
        return out, [h for _, h in sorted(read, key=lambda x: x[0])]

    def _read_tails(
        self,
        cache: Any,
        mask: torch.Tensor,
        cached: int,
        contexts: list[list[int]],
        reasonings: list[list[int]],
        tails: list[list[int]],
    ) -> list[torch.Tensor]:
        """Hidden states over each row's [last token before the tail] + tail, one forward on the
        generation's cache: decoded tokens past the row's reasoning are masked out, the reasoning
        the cache lacks (its last token) is fed, and so is the last cached one, masked in the
        cache, where the cache holds the whole reasoning (its hidden state predicts the tail's first)."""
        width = mask.shape[1]
        kept = mask.new_ones((len(contexts), width + cached))
        kept[:, :width] = mask
        feeds, starts = [], []
        for row, (ctx, reasoning) in enumerate(zip(contexts, reasonings)):
            k = min(cached, len(reasoning))
            kept[row, width + k - 1 :] = 0
            feeds.append((ctx + reasoning)[len(ctx) + k - 1 :] + tails[row])
            starts.append(len(ctx) + k - 1)
        ids, new = self.batch(feeds)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(ids.shape[1], device=self.device)
        self.counters.add("forward_passes")
        self.counters.add("tokens_processed", int(new.sum()))
        self.count(new.numel(), kept.shape[1] + new.shape[1])
        hidden = self.model.base_model(
            input_ids=ids,
            attention_mask=torch.cat([kept.to(self.device), new], dim=1),
            position_ids=positions,
            **{self.cache_key: cache},
        ).last_hidden_state
        return [
            hidden[row, len(feed) - len(tail) - 1 : len(feed)] for row, (feed, tail) in enumerate(zip(feeds, tails))
        ]

    # -- forwards ---------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_log_probs(self, contexts: list[list[int]]) -> torch.Tensor:
        """Log-probabilities of the token after each context (one batched prefix-only forward)."""
        rows, start = [], 0
        with self.phase("proposal"):
            while start < len(contexts):
                size = self.fit("forward", max(len(c) for c in contexts[start:]), len(contexts) - start)
                chunk, start = contexts[start : start + size], start + size
                ids, mask = self.batch(chunk)
                hidden = self.hidden(mask, ids=ids)
                last = torch.tensor([len(c) - 1 for c in chunk], device=self.device)
                rows.append(torch.log_softmax(self.logits(hidden[torch.arange(len(chunk)), last]), dim=-1).cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def prompt_nll(self, heads: list[list[int]], n: int) -> list[float]:
        """Mean NLL of the last `n` tokens of each of `heads` (prefix + instruction ids; a token at
        position 0 has no prediction and is left out); each distinct head is run once."""
        unique = list(dict.fromkeys(tuple(h) for h in heads))
        values: dict[tuple[int, ...], float] = {}
        with self.phase("forwards"):
            start = 0
            while start < len(unique):
                size = self.fit("forward", max(len(h) for h in unique[start:]), len(unique) - start)
                chunk, start = unique[start : start + size], start + size
                ids, mask = self.batch([list(h) for h in chunk])
                hidden = self.hidden(mask, ids=ids)
                for row, head in enumerate(chunk):
                    at = torch.tensor(
                        [t for t in range(len(head) - n, len(head)) if t > 0], dtype=torch.long, device=self.device
                    )
                    if len(at):
                        log_probs = torch.log_softmax(self.logits(hidden[row, at - 1]), dim=-1)
                        values[head] = -float(log_probs.gather(1, ids[row, at][:, None]).mean())
        return [values.get(tuple(h), 0.0) for h in heads]

    def sequence_terms(
        self, hidden: torch.Tensor, seqs: list[list[int]], answer_spans: list[range], prompt_spans: list[range]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per row of one batch of full sequences: answer logits (all vocab, /T applied later), gold
        answer ids, prompt-token NLL."""
        answer_logits, answer_gold, prompt_nll = [], [], []
        for row, seq in enumerate(seqs):
            ans = answer_spans[row]
            logits = self.logits(hidden[row, ans.start - 1 : ans.stop - 1])
            answer_logits.append(logits)
            answer_gold.append(torch.tensor(seq[ans.start : ans.stop], device=logits.device))
            span = [t for t in prompt_spans[row] if t > 0]
            if span:
                idx = torch.tensor(span, device=hidden.device)
                log_probs = torch.log_softmax(self.logits(hidden[row, idx - 1]), dim=-1)
                targets = torch.tensor([seq[t] for t in span], device=log_probs.device)
                prompt_nll.append(-log_probs.gather(1, targets[:, None]).mean())
            else:
                prompt_nll.append(torch.zeros((), device=hidden.device))
        return answer_logits, answer_gold, prompt_nll
