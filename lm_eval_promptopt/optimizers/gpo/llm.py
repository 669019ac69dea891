"""Optimizer-LLM clients: what they share, and the evaluated lm-eval model itself (`SelfLM`; the
OpenAI-compatible chat endpoint is `endpoint.OpenAIChat`).

Both send one user message and return `n` sampled completions. Every request and its response
(or error) is passed to a `log` callback, in request order, with a stable `request_key` (a hash
of the request): for audit, and so that a resume can find the answers it already paid for.
The API key, and credentials written into the endpoint URL (`http://user:key@host`, or its
query string: `http://host/v1?api_key=k`), are never logged: records and messages name the
endpoint without them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ...errors import StageError
from ...harness.setup import unwrap


Log = Callable[[dict[str, Any]], None]


@dataclass
class Usage:
    """What the optimizer LLM was asked for, summed over a run."""

    requests: int = 0
    """Requests sent (retries included)."""
    replayed: int = 0
    """Requests answered from the log of an interrupted run of the same search (not sent again)."""
    retries: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completions: int, tokens: dict[str, int]) -> None:
        """Count one answer: its completions, and its prompt and completion tokens."""
        self.completions += completions
        self.prompt_tokens += tokens.get("prompt_tokens", 0)
        self.completion_tokens += tokens.get("completion_tokens", 0)

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class OptimizerLLM(Protocol):
    """Samples completions of a single user message."""

    backend: str
    model: str
    usage: Usage

    def sample(self, prompt: str, n: int, *, temperature: float, max_tokens: int, seed: int) -> list[str]:
        """`n` completions of the user message `prompt` (fewer only if the model returns fewer)."""
        ...


class OptimizerLLMError(StageError):
    """The optimizer LLM failed for good (after retries, or with a non-retryable error).

    An optimizer-phase failure (exit code 5) that stops the run at once: other tasks would only
    wait on the same failing endpoint. `detail` is the message without the phase prefix."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__("optimizer", detail)
        self.detail = detail
        self.status = status


def redact_url(url: str | None) -> str | None:
    """`url` without what may hold credentials: its user-info part and its query string
    (`http://user:key@host/v1?api_key=k` -> `http://host/v1`)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment=""))


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its query string, and the query's parameters: the client joins request paths
    to the first and sends the second with every request (`/v1?k=x` + `chat/completions` would
    otherwise become `/v1?k=xchat/completions`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), dict(parse_qsl(parts.query, keep_blank_values=True))


def request_key(request: dict[str, Any]) -> str:
    """A stable id of a request (model, messages, sampling settings, seed)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def replay(record: dict[str, Any], logged: dict[str, Any], usage: Usage) -> list[str]:
    """Answer a request from an earlier run's logged response: count it, and mark the record."""
    response = logged["response"]
    usage.replayed += 1
    usage.add(len(response["texts"]), response.get("usage") or {})
    record.update(response=response, replayed=True, seconds=0.0)
    return list(response["texts"])


class SelfLM:
    """The evaluated model as the optimizer: generation through the lm-eval `LM` object.

    The meta-prompt goes through the model's chat template when the run uses one. Sampling is
    seeded with `torch.manual_seed(seed)` inside a forked RNG, so the run's global RNG state is
    left as it was and the same seed gives the same samples.
    """

    backend = "self"

    def __init__(
        self, lm: Any, *, chat_template: bool = False, log: Log | None = None, replay: dict[str, dict] | None = None
    ) -> None:
        self.lm = unwrap(lm)  # bypass --use_cache's CachingLM: it would repeat one sample
        self.chat_template = chat_template and hasattr(self.lm, "apply_chat_template")
        inner = getattr(self.lm, "_model", None) or getattr(self.lm, "model", None)
        self.model = str(getattr(getattr(inner, "config", None), "name_or_path", "") or type(self.lm).__name__)
        self.log = log or (lambda entry: None)
        self.replay = replay or {}
        self.usage = Usage()

    def _tokens(self, text: str) -> int:
        encode = getattr(self.lm, "tok_encode", None)
        try:
            return len(encode(text)) if encode else 0
        except Exception:  # noqa: BLE001 (counting is informative only)
            return 0

    def sample(self, prompt: str, n: int, *, temperature: float, max_tokens: int, seed: int) -> list[str]:
        import torch
        from lm_eval.api.instance import Instance

        context = self.lm.apply_chat_template([{"role": "user", "content": prompt}]) if self.chat_template else prompt
        # lm-eval's HFLM needs max_gen_toks < max_length; keep at least half the context for the prompt.
        max_length = getattr(self.lm, "max_length", None)
        cap = max_length // 2 if isinstance(max_length, int) and max_length > 1 else None
        max_gen_toks = min(max_tokens, cap) if cap is not None else max_tokens
        gen_kwargs = {
            "until": [],
            "max_gen_toks": max_gen_toks,
            "do_sample": temperature > 0,
            "temperature": temperature,
        }
        request = {"model": self.model, "context": context, "n": n, "gen_kwargs": gen_kwargs, "seed": seed}
        if max_gen_toks < max_tokens:  # recorded only when it bites, so other requests keep their keys
            request["max_tokens_capped"] = {"requested": max_tokens, "model_max_length": max_length}
        key = request_key(request)
        if key in self.replay:
            record = {"kind": "optimizer_call", "backend": self.backend, "request_key": key, "request": request}
            texts = replay(record, self.replay[key], self.usage)
            self.log(record)
            return texts
        requests = [Instance("generate_until", {}, (context, dict(gen_kwargs)), i) for i in range(n)]
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            texts = [str(t) for t in self.lm.generate_until(requests, disable_tqdm=True)]
        tokens = {"prompt_tokens": self._tokens(context) * n, "completion_tokens": sum(self._tokens(t) for t in texts)}
        self.usage.requests += 1
        self.usage.add(len(texts), tokens)
        self.log(
            {
                "kind": "optimizer_call",
                "backend": self.backend,
                "request_key": key,
                "request": request,
                "response": {"texts": texts, "usage": tokens},
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        return texts
