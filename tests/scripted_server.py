"""A small deterministic OpenAI-compatible `/v1/chat/completions` server for tests.

It listens on 127.0.0.1 on an ephemeral port in a daemon thread, records every request body,
and answers each choice with `respond(body, sample)`, where `sample` is `seed + choice index`
(so one request with `n=8` and eight `n=1` requests with seeds `s..s+7` get the same answers).
Failures can be scripted: `failures` is consumed one per request (an HTTP status such as 429
or 500, None for a normal answer, "hang" to reply only after `hang_s` seconds, past the
client's timeout, "empty" for an HTTP 200 answer whose every choice has empty content,
"no_choices" for one with `choices: []`, or "html" for an HTTP 200 HTML page); `fail_always` answers every later request with that
action. `down_url()` is an endpoint where nothing listens (connection refused). `honour_n=False`
answers one choice whatever `n` asks (like many local servers); `reject_n=True` refuses `n` > 1
with HTTP 400. `delay_s` holds every answered request (HTTP 200) that long before it is
sent, as a model's generation time would; failures and refusals are sent at once. Each request
in `requests` notes its path with its query string (`_path`), when it was received and answered (`_received`, `_answered`:
`time.perf_counter()`), so `max_in_flight()` tells how many were served at the same time. It
stops on leaving the `with` block, or by itself after `lifetime_s` seconds.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


Respond = Callable[[dict[str, Any], int], str]


def current_and_budget(prompt: str) -> tuple[str, int | None]:
    """The current instruction and the word budget stated in a GPO meta-prompt."""
    current = (
        prompt.split("The current prompt is:\n", 1)[-1].split("\n\n", 1)[0]
        if "The current prompt is:\n" in prompt
        else ""
    )
    budget = re.search(r"change at most (\d+) words", prompt)
    return current, int(budget.group(1)) if budget else None


def edit_toward(target: str) -> Respond:
    """Edit the current instruction toward `target` by e = 1 + sample % 6 words, at most the
    budget: the first e words of the target, then the current words after position e."""

    def respond(body: dict[str, Any], sample: int) -> str:
        current, budget = current_and_budget(body["messages"][-1]["content"])
        edits = 1 + sample % 6
        if budget is not None:
            edits = min(edits, budget)
        words = target.split()[:edits] + current.split()[edits:]
        return f"Here is a better prompt:\n<START>{' '.join(words)}<END>"

    return respond


def down_url() -> str:
    """An OpenAI-style base URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ScriptedServer:
    def __init__(
        self,
        respond: Respond | None = None,
        *,
        failures: list[int | str | None] | tuple = (),
        fail_always: int | str | None = None,
        honour_n: bool = True,
        reject_n: bool = False,
        hang_s: float = 1.5,
        delay_s: float = 0.0,
        retry_after: str | None = "0",
        lifetime_s: float = 300.0,
    ) -> None:
        self.respond = respond or edit_toward("Focus on the task.")
        self.failures = list(failures)
        self.fail_always = fail_always
        self.honour_n = honour_n
        self.reject_n = reject_n
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.lifetime_s = lifetime_s
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                entry = {
                    **body,
                    "_authorization": self.headers.get("Authorization"),
                    "_path": self.path,
                    "_received": time.perf_counter(),
                }
                with server.lock:
                    server.requests.append(entry)
                    action = server.failures.pop(0) if server.failures else server.fail_always
                if action == "hang":
                    time.sleep(server.hang_s)
                elif action == "html":  # a web page where the API should be (e.g. a proxy's login page)
                    return self._send(
                        200,
                        "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in to continue</body></html>",
                    )
                elif action in ("empty", "no_choices"):
                    pass
                elif action is not None:
                    # A 401 echoes the key it got, as some servers do: clients must not log it.
                    reason = f"invalid key {self.headers.get('Authorization')}" if int(action) == 401 else "scripted"
                    return self._send(
                        int(action), {"error": {"message": f"failure {action}: {reason}", "type": "scripted"}}
                    )
                if not self.path.split("?")[0].endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                if server.reject_n and int(body.get("n") or 1) > 1:
                    return self._send(400, {"error": {"message": "n must be 1", "type": "invalid_request_error"}})
                n = int(body.get("n") or 1) if server.honour_n else 1
                seed = int(body.get("seed") or 0)
                texts = [server.respond(body, seed + i) for i in range(n)]
                if action == "empty":
                    texts = [""] * n
                elif action == "no_choices":
                    texts = []
                time.sleep(server.delay_s)
                entry["_answered"] = time.perf_counter()
                prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "scripted"),
                        "choices": [
                            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                            for i, t in enumerate(texts)
                        ],
                        "usage": {
                            "prompt_tokens": prompt_words,
                            "completion_tokens": sum(len(t.split()) for t in texts),
                            "total_tokens": prompt_words + sum(len(t.split()) for t in texts),
                        },
                    },
                )

            def _send(self, status: int, payload: dict[str, Any] | str) -> None:
                html = isinstance(payload, str)
                data = (payload if html else json.dumps(payload)).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status >= 400 and server.retry_after is not None:
                        self.send_header("Retry-After", server.retry_after)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout): nothing to answer
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # many concurrent clients: no refused connection

            def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> Self:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def max_in_flight(self, requests: list[dict[str, Any]] | None = None) -> int:
        """The most answered requests (of `requests`, default all) that the server held at one time."""
        events = sorted(
            (t, step)
            for r in (self.requests if requests is None else requests)
            if "_answered" in r
            for t, step in ((r["_received"], 1), (r["_answered"], -1))
        )
        held = most = 0
        for _, step in events:  # at equal times an answer (-1) sorts before an arrival: no false overlap
            held += step
            most = max(most, held)
        return most

    def prompts(self) -> list[str]:
        """The user message of every chat request received, in order."""
        return [r["messages"][-1]["content"] for r in self.requests if r.get("messages")]
