"""Benchmark GPO's optimizer calls: per-step sampling latency against one request's latency.

Starts the scripted OpenAI-compatible loopback server of the tests (tests/scripted_server.py) with
a fixed delay per answer, runs a few GPO steps (samples=8) in process on a toy objective (instant
scores: only the optimizer calls take time), once per server mode: `honours n` (one request with
n=8 per step), `ignores n` (one choice per request, as many local servers) and `refuses n` (HTTP
400 for n > 1). Prints, per step, the sampling seconds and requests that GPO recorded in its
`gpo_step` entries, and the most requests the server held at one time.

    python scripts/bench_gpo_calls.py [--delay 1.0] [--steps 3] [--samples 8] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the tables
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the scripted server lives with the tests

from scripted_server import ScriptedServer, edit_toward  # noqa: E402

from lm_eval_promptopt.optimizers.base import Problem  # noqa: E402
from lm_eval_promptopt.optimizers.gpo import GPO, GPOConfig  # noqa: E402
from lm_eval_promptopt.optimizers.gpo.endpoint import OpenAIChat  # noqa: E402


MODES = {"honours n": {}, "ignores n": {"honour_n": False}, "refuses n": {"reject_n": True}}


class ToyTask:
    def doc_to_text(self, doc: dict) -> str:
        return f"Q: {doc['q']}\nA:"

    def doc_to_target(self, doc: dict) -> str:
        return doc["a"]

    def get_config(self, key: str) -> Any:
        return "generate_until" if key == "output_type" else None


class ToyObjective:
    """Instant dev scores (the fraction of the words of "Focus on the task." in the instruction)."""

    def __init__(self) -> None:
        self.splits = type("Splits", (), {"task": ToyTask()})()
        self.entries: list[dict[str, Any]] = []
        self.record = self.entries.append

    def docs(self, split: str) -> list[dict]:
        return [{"q": f"question {i}", "a": f"answer {i}"} for i in range(8)]

    def score(self, instruction: str, split: str = "dev") -> float:
        return len(set(instruction.lower().rstrip(".").split()) & {"focus", "on", "the", "task"}) / 4


def one_request_latency(url: str, repeats: int = 3) -> float:
    """Median wall seconds of an n=1 request, each through a fresh client."""
    seconds = []
    for seed in range(repeats):
        chat = OpenAIChat("scripted", base_url=url, timeout=60.0)
        start = time.perf_counter()
        chat.sample("The current prompt is:\nBe brief.\n\nmore", 1, temperature=1.0, max_tokens=16, seed=seed)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run_mode(name: str, server_kw: dict[str, Any], args: argparse.Namespace) -> None:
    with ScriptedServer(edit_toward("Focus on the task."), delay_s=args.delay, **server_kw) as server:
        single = one_request_latency(server.url)
        server.requests.clear()
        objective = ToyObjective()
        config = GPOConfig(
            optimizer_model="scripted", optimizer_base_url=server.url, retrieval="recency",
            samples=args.samples, steps=args.steps, concurrency=args.concurrency,
        )  # fmt: skip
        GPO(config).optimize(Problem("toy", None, None, objective, "Let's think step by step.", 0))
        steps = [e for e in objective.entries if e.get("kind") == "gpo_step"]
        print(f"\n{name}: one request {single:.3f} s (median of 3, server delay {args.delay} s)")
        print(
            "| step | sampling s | / one request | requests | n per request | held at once | prompt tok | completion tok |"
        )
        print("|---|---|---|---|---|---|---|---|")
        done = 0
        for step in steps:
            sampling = step["sampling"]
            asked = server.requests[done : done + sampling["requests"]]
            done += sampling["requests"]
            ns = ",".join(str(n) for n in sorted({int(r.get("n") or 1) for r in asked}))
            print(
                f"| {step['step']} | {sampling['seconds']:.3f} | {sampling['seconds'] / single:.2f} | {sampling['requests']} "
                f"| {ns} | {server.max_in_flight(asked)} | {sampling['prompt_tokens']} | {sampling['completion_tokens']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the server takes per answer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    for name, server_kw in MODES.items():
        run_mode(name, server_kw, args)


if __name__ == "__main__":
    main()
