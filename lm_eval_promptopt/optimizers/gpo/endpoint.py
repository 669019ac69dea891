"""The OpenAI-compatible chat endpoint as GPO's optimizer LLM (the `openai` client, retried with
tenacity as lm-eval's API models are). The API key, and credentials written into the endpoint URL,
are never logged: records and messages name the endpoint without them (`llm.redact_url`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, retry_if_result, stop_after_attempt

from ...logs import get_logger
from .llm import Log, OptimizerLLMError, Usage, redact_url, replay, request_key, split_query


logger = get_logger(__name__)


class _NotCompletion(Exception):
    """An HTTP 200 whose body is not a chat completion."""


class _Failed(Exception):
    def __init__(self, record: dict[str, Any], message: str, status: int | None) -> None:
        super().__init__(message)
        self.record = record
        self.status = status


class OpenAIChat:
    """Any OpenAI-compatible `/v1/chat/completions` endpoint, through the `openai` package.

    `n` samples are asked for in one request with `n=`; an endpoint that returns fewer choices
    (many local servers ignore `n`) or refuses `n` > 1 (HTTP 400) gets the rest as separate `n=1`
    requests, `concurrency` at a time, with seeds `seed+1, seed+2, ...` (`seed, ...` after a
    refusal), and from then on only such requests. Rate limits (429),
    408/409, server errors (5xx), timeouts and connection errors are retried up to `max_retries`
    times, waiting what the server's `Retry-After` asks, else `backoff * 2**attempt` seconds
    (at most `max_backoff`); any other error ends the run at once. An answer with no usable
    completion (`choices: []`, or every text empty or rejected by `usable`) is a fault too, and
    retried the same way; after the last retry it is returned as it is (the caller sees no
    usable text). The first retry says so on stderr, once. A request whose key is in `replay`
    is answered from there and not sent. Credentials in `base_url` are used for the requests
    but kept out of every record and message.
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        concurrency: int = 8,
        log: Log | None = None,
        replay: dict[str, dict] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        usable: Callable[[str], bool] = lambda text: bool(text.strip()),
    ) -> None:
        import openai

        self.model = model
        self.base_url = redact_url(base_url)
        """The endpoint as records and messages name it (no credentials)."""
        password = urlsplit(base_url).password if base_url else None
        url, query = split_query(base_url) if base_url else (None, {})
        self._secrets = [s for s in (api_key, password, unquote(password or ""), *query.values()) if s]
        # The client's own retries are off: tenacity retries here, each attempt logged in the trajectory.
        self.client = openai.OpenAI(
            base_url=url, api_key=api_key or "unused", timeout=timeout, max_retries=0, default_query=query or None
        )
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.log = log or (lambda entry: None)
        self.replay = replay or {}
        """Responses already paid for, by request key (a resumed search): answered, not sent."""
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.usable = usable
        self.supports_n: bool | None = None
        self.usage = Usage()
        self._lock = threading.Lock()
        self._told_retrying = False

    def sample(self, prompt: str, n: int, *, temperature: float, max_tokens: int, seed: int) -> list[str]:
        messages = [{"role": "user", "content": prompt}]
        texts: list[str] = []
        if self.supports_n is not False:
            try:
                got = self._logged([(messages, n, temperature, max_tokens, seed)])[0]
            except OptimizerLLMError as err:
                if n == 1 or err.status != 400:
                    raise
                got = []  # the endpoint refuses n > 1: one request per sample
                self.supports_n = False
            else:
                texts += got[:n]
                if not got:
                    return texts  # no choices even after the retries: one request per sample would only repeat it
                if n > 1:
                    self.supports_n = len(got) >= n
        missing = n - len(texts)
        if missing > 0:
            start = seed + len(texts)
            calls = [(messages, 1, temperature, max_tokens, start + i) for i in range(missing)]
            for got in self._logged(calls):
                texts += got[:1] or [""]
        return texts

    def _logged(self, calls: list[tuple]) -> list[list[str]]:
        """Run requests (concurrently), log each in order, raise the first failure after logging."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(calls)))) as pool:
            futures = [pool.submit(self._request, *call) for call in calls]
        outcomes: list[list[str]] = []
        failure: _Failed | None = None
        for future in futures:
            try:
                texts, record = future.result()
                outcomes.append(texts)
            except _Failed as err:
                record, failure = err.record, failure or err
            self.log(record)
        if failure is not None:
            raise OptimizerLLMError(str(failure), failure.status)
        return outcomes

    def _request(
        self, messages: list[dict], n: int, temperature: float, max_tokens: int, seed: int
    ) -> tuple[list[str], dict]:
        request = {
            "model": self.model,
            "messages": messages,
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        record: dict[str, Any] = {
            "kind": "optimizer_call",
            "backend": self.backend,
            "base_url": self.base_url,
            "request_key": request_key(request),
            "request": request,
            "attempts": [],
        }
        if record["request_key"] in self.replay:
            with self._lock:
                return replay(record, self.replay[record["request_key"]], self.usage), record
        start = time.perf_counter()
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            retry=retry_if_exception(self._retryable) | retry_if_result(self._unusable),
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=lambda state: self._before_retry(record, state),
            retry_error_callback=lambda state: state.outcome.result(),  # the last answer, or its error raised
        )
        try:
            texts = retrying(self._attempt, request, record)
        except _NotCompletion:
            failure = record["attempts"][-1]["error"]
            raise self._failed(
                record, start, f"{failure} (is it the API's base URL, e.g. ending in /v1?)", "(not retryable)", 200
            ) from None
        except Exception as err:  # noqa: BLE001 (every failure is logged)
            tried = f"after {len(record['attempts'])} attempt(s)" if self._retryable(err) else "(not retryable)"
            raise self._failed(
                record, start, record["attempts"][-1]["error"], tried, getattr(err, "status_code", None)
            ) from None
        if self._unusable(texts):
            record["unusable"] = True
        record["seconds"] = round(time.perf_counter() - start, 3)
        return texts, record

    def _attempt(self, request: dict[str, Any], record: dict[str, Any]) -> list[str]:
        """One request: its texts, its failure recorded in `record["attempts"]` (an unusable answer too)."""
        with self._lock:
            self.usage.requests += 1
        try:
            response = self.client.chat.completions.create(**request)
        except Exception as err:
            record["attempts"].append({"error": self._describe(err)})
            raise
        if not hasattr(
            response, "choices"
        ):  # a body that is not JSON (an HTML page): the wrong URL, not a transient fault
            body = self._mask(" ".join(str(response).split()))
            record["attempts"].append(
                {
                    "error": f"HTTP 200 with a body that is not a chat completion: {body[:120]!r}{'...' if len(body) > 120 else ''}"
                }
            )
            raise _NotCompletion
        choices = sorted(response.choices or [], key=lambda c: c.index)
        texts = [((c.message.content if c.message else None) or "") for c in choices]
        usage = response.usage
        tokens = {
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        }
        with self._lock:
            self.usage.add(len(texts), tokens)
        record["response"] = {
            "texts": texts,
            "finish_reasons": [c.finish_reason for c in choices],
            "usage": tokens,
            "model": getattr(response, "model", None),
        }
        if self._unusable(texts):  # an answer with nothing in it: a fault like a 5xx
            record["attempts"].append(
                {
                    "error": "no usable answer: "
                    + (f"{len(texts)} choice(s), all empty or unparsable" if texts else "no choices")
                }
            )
        return texts

    def _unusable(self, texts: list[str]) -> bool:
        return not any(map(self.usable, texts))

    def _before_retry(self, record: dict[str, Any], state: RetryCallState) -> None:
        """Log the failed attempt's wait in its record, count the retry, and say so (once on stderr)."""
        attempt = record["attempts"][-1]
        attempt["wait_s"] = state.next_action.sleep
        with self._lock:
            self.usage.retries += 1
        logger.debug(
            "optimizer call %s: attempt %d failed (%s); retrying in %.2f s",
            record["request_key"],
            state.attempt_number,
            attempt["error"],
            attempt["wait_s"],
        )
        self._tell_retrying(attempt["error"])

    def _failed(self, record: dict[str, Any], start: float, failure: str, tried: str, status: int | None) -> _Failed:
        """The request's final failure: its record completed, and the one-line message."""
        record["error"] = failure
        record["seconds"] = round(time.perf_counter() - start, 3)
        where = self.base_url or "the OpenAI API"
        return _Failed(record, f"optimizer model {self.model!r} at {where} failed {tried}: {failure}", status)

    @staticmethod
    def _retryable(err: Exception) -> bool:
        import openai

        if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
            return True
        status = getattr(err, "status_code", None)
        return isinstance(err, openai.APIStatusError) and (status in (408, 409, 429) or (status or 0) >= 500)

    def _tell_retrying(self, failure: str) -> None:
        """One line on stderr at the first retry of this client: a failing endpoint is never silent."""
        with self._lock:
            if self._told_retrying:
                return
            self._told_retrying = True
        most = sum(min(self.backoff * 2**i, self.max_backoff) for i in range(self.max_retries))
        where = self.base_url or "the OpenAI API"
        logger.warning(
            f"lm_eval_promptopt: optimizer model {self.model!r} at {where}: {failure}; retrying "
            f"(up to {self.max_retries} retries, about {most:.0f} s of waiting; each attempt is logged in the trajectory)",
        )

    def _wait(self, state: RetryCallState) -> float:
        """What the server's `Retry-After` asks, else `backoff * 2**attempt` (at most `max_backoff`)."""
        err = state.outcome.exception()
        headers = getattr(getattr(err, "response", None), "headers", None) or {}
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                return min(max(float(headers[name]) * scale, 0.0), self.max_backoff)
            except (KeyError, TypeError, ValueError):
                continue
        return min(self.backoff * 2 ** (state.attempt_number - 1), self.max_backoff)

    def _describe(self, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        text = f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + f": {err}"
        return " ".join(self._mask(text).split())[:500]

    def _mask(self, text: str) -> str:
        """`text` with the key and the URL's credentials masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
