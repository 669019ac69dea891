"""Greedy decoding for GReaTer's reasoning: Hugging Face `generate`'s tokens, less of its work.

One prefill and one forward per new token over a preallocated static KV cache, the same inputs
`generate` gives the model (left-padded ids, positions from the attention mask, a 2D mask of the
tokens so far, logits of the last position only, argmax in float32), so each row gets the token
ids `generate` gives it. What `generate` adds around that is left out: logits processors,
stopping criteria decoding every row at every step, and rows that have ended. A row ends at an
end token or when the text of its last tokens holds a stop sequence (lm-eval's `generate_until`
check); ended rows leave the batch at once (their KV kept aside), so no compute goes to them.
Models whose generation config would change greedy tokens (processors) are not decoded here:
`unsupported` names the reason and the caller falls back to `generate`. With `compile`, the
one-token decode steps run through `torch.compile` (dynamic shapes; compiled once per model and
process), falling back to the plain forward with one logged line where compiling fails (the
batch is then decoded again).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, StaticCache

from ...logs import get_logger


log = get_logger(__name__)


# generation-config fields that add logits processors or otherwise change greedy tokens
_PROCESSORS = [
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "min_length",
    "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
    "sequence_bias", "exponential_decay_length_penalty", "renormalize_logits", "watermarking_config", "guidance_scale",
]  # fmt: skip


def cache_keyword(model: Any) -> str:
    """The keyword under which `model.forward` (and `generate`'s output) takes the KV cache:
    `cache` in recent transformers 5.x, `past_key_values` before. An unknown keyword would go
    into the forward's **kwargs unused: every token decoded without its context."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def unsupported(model: Any) -> str | None:
    """Why `greedy` cannot reproduce `generate` for this model, or None."""
    if model.config.is_encoder_decoder:
        return "an encoder-decoder model"
    if not model._supports_logits_to_keep():
        return f"{type(model).__name__} has no logits_to_keep"
    config, default = model.generation_config, GenerationConfig()
    changed = [f for f in _PROCESSORS if getattr(config, f, None) != getattr(default, f, None)]
    return f"its generation config sets {', '.join(changed)}" if changed else None


class CompileFailed(Exception):
    """Compiling a decode step failed, perhaps after part of it ran (the batch's cache is spoilt:
    a sliding-window layer rolls its keys at each write): decode the batch again, uncompiled."""


class DecodeStep:
    """The forward of the one-token decode steps: `model` itself, or (`compile`) its forward
    compiled by `torch.compile` with dynamic shapes, once per model and process. Compiling happens
    at a call (the first, and any with new shapes); where it fails (no C++ compiler for inductor's
    CPU code, an operation dynamo cannot trace), the step falls back to `model` for good, with one
    logged line, and raises `CompileFailed` for the batch to be decoded again; `failure` says why."""

    def __init__(self, model: Any, compile: bool) -> None:
        self.model = model
        self.failure: str | None = _FAILED.get(model) if compile else None
        self.compiled = _compiled(model) if compile and not self.failure else None

    def __call__(self, **inputs: Any) -> Any:
        if self.compiled is None:
            return self.model(**inputs)
        try:
            return self.compiled(**inputs)
        except Exception as error:
            self.compiled, self.failure = None, f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
            _FAILED[self.model] = self.failure
            log.warning("GReaTer decodes without torch.compile: compiling the decode step failed (%s)", self.failure)
            raise CompileFailed(self.failure) from error

    def describe(self) -> str:
        """How the decode steps run: `compiled`, `eager`, or `eager (compile failed: why)`."""
        if self.failure:
            return f"eager (compile failed: {self.failure})"
        return "compiled" if self.compiled is not None else "eager"


_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_FAILED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _compiled(model: Any) -> Any:
    """`model.forward` compiled with dynamic shapes, made once per model."""
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model.forward, dynamic=True)
    return _COMPILED[model]


def _select_rows(config: Any, room: int, cache: StaticCache, rows: torch.Tensor) -> StaticCache:
    """A cache holding only `rows` of `cache` (copies; `cache` is left as it is)."""
    out = StaticCache(config=config, max_cache_len=room)
    for mine, theirs in zip(out.layers, cache.layers):
        mine.lazy_initialization(theirs.keys[rows], theirs.values[rows])
        mine.keys.copy_(theirs.keys[rows])
        mine.values.copy_(theirs.values[rows])
        _copy_length(mine, theirs)
    return out


def _put_rows(full: StaticCache, rows: torch.Tensor, part: StaticCache) -> None:
    """Write `part`'s rows into `full` at batch positions `rows` (its length too)."""
    for mine, theirs in zip(full.layers, part.layers):
        mine.keys.index_copy_(0, rows, theirs.keys)
        mine.values.index_copy_(0, rows, theirs.values)
        _copy_length(mine, theirs)


def _copy_length(mine: Any, theirs: Any) -> None:
    """Give layer `mine` the filled length of `theirs` (sliding-window layers keep it twice)."""
    mine.cumulative_length.copy_(theirs.cumulative_length)
    if hasattr(theirs, "cumulative_length_int"):
        mine.cumulative_length_int = theirs.cumulative_length_int


@torch.no_grad()
def greedy(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new: int,
    room: int,
    ended: Callable[[list[int]], bool],
    step: Callable[..., Any] | None = None,
) -> tuple[list[list[int]], StaticCache, int]:
    """Greedy continuations of the left-padded batch `ids` (`mask` its attention mask), at most
    `max_new` tokens each, on a static cache of `room` positions; `step` runs the one-token
    forwards (default: `model`; a `DecodeStep` to compile them, which raises `CompileFailed`
    where compiling fails: decode the batch again). `ended(tokens)` says whether a
    row's tokens so far end it (its last token included and returned). Returns each row's
    tokens, a cache holding every row's KV up to its end, and the tokens fed after the prompt
    (the cache's length is the prompt's width plus these)."""
    step = step or model
    batch, width = ids.shape
    cache = StaticCache(config=model.config, max_cache_len=room)
    full_mask = torch.cat([mask, mask.new_ones((batch, max_new))], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    key = cache_keyword(model)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **{key: cache}).logits
    out: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.arange(batch, device=ids.device)  # batch positions of the rows still decoding
    live = list(range(batch))
    work, full = cache, cache  # `work` holds the live rows only once a row has ended
    position = positions[:, -1:]
    fed = 0
    while True:
        token = logits[:, -1].float().argmax(-1)
        done = []
        for at, (row, t) in enumerate(zip(live, token.tolist())):
            out[row].append(t)
            if len(out[row]) >= max_new or ended(out[row]):
                done.append(at)
        if done:
            keep = [at for at in range(len(live)) if at not in set(done)]
            if work is not full:
                _put_rows(full, rows, work)
            if not keep:
                return out, full, fed
            kept = torch.tensor(keep, device=ids.device)
            rows, token, position = rows[kept], token[kept], position[kept]
            live = [live[at] for at in keep]
            work = _select_rows(model.config, room, full, rows)
        position = position + 1
        fed += 1
        logits = step(
            input_ids=token[:, None],
            attention_mask=full_mask[rows, : width + fed],
            position_ids=position,
            logits_to_keep=1,
            **{key: work},
        ).logits
