"""GPO's optimizer calls overlap: against a loopback server that takes a fixed time per answer, a
step's 8 samples cost about one request's latency, whether the endpoint honours `n` (one request
with n=8) or ignores it (eight concurrent n=1 requests; the first step first probes with n=8, so
it costs about two latencies). Asserted on the steps' recorded `sampling` figures and on the
server's own log (how many requests, and that they were served at the same time)."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

from conftest import needs_shared_data
from scripted_server import ScriptedServer, edit_toward
from test_gpo import run_gpo

from lm_eval_promptopt.optimizers.gpo.endpoint import OpenAIChat


DELAY = 0.8  # seconds the server takes per answer (a model's generation time)
SAMPLES = 8


def one_request_latency(server: ScriptedServer) -> float:
    """Wall seconds of one n=1 request to `server`, through a fresh client (as GPO's first one)."""
    chat = OpenAIChat("scripted", base_url=server.url, timeout=30.0)
    start = time.perf_counter()
    chat.sample("The current prompt is:\nBe brief.\n\nmore", 1, temperature=1.0, max_tokens=16, seed=0)
    return time.perf_counter() - start


def gpo_steps(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("kind") == "gpo_step"]


def test_a_step_takes_one_request_latency_when_the_endpoint_honours_n(tmp_path: Path):
    with ScriptedServer(edit_toward("Focus on the task."), delay_s=DELAY) as server:
        result, _, records = run_gpo(server, tmp_path)  # 3 steps, samples=8
        single = one_request_latency(server)
        asked = server.requests[:-1]
    steps = gpo_steps(records.entries)
    assert [r["n"] for r in asked] == [SAMPLES] * 3  # one request per step
    assert [(s["sampling"]["requests"], s["sampling"]["completions"]) for s in steps] == [(1, SAMPLES)] * 3
    assert single >= DELAY and all(s["sampling"]["seconds"] < 2 * single for s in steps), (single, steps)
    # tokens per step: what the step's one call reported; the steps add up to the run's usage
    calls = [e for e in records.entries if e.get("kind") == "optimizer_call"]
    for step, call in zip(steps, calls, strict=True):
        assert step["sampling"]["prompt_tokens"] == call["response"]["usage"]["prompt_tokens"] > 0
        assert step["sampling"]["completion_tokens"] == call["response"]["usage"]["completion_tokens"] > 0
    usage = result.details["optimizer"]["usage"]
    for name in ("requests", "completions", "prompt_tokens", "completion_tokens"):
        assert sum(s["sampling"][name] for s in steps) == usage[name]


def test_a_step_takes_one_request_latency_when_the_endpoint_ignores_n(tmp_path: Path):
    """Step 1: the n=8 probe gets one choice, then the other 7 go out together (about two
    latencies). Later steps: 8 concurrent n=1 requests (about one latency)."""
    with ScriptedServer(edit_toward("Focus on the task."), delay_s=DELAY, honour_n=False) as server:
        result, _, records = run_gpo(server, tmp_path)
        single = one_request_latency(server)
        asked = server.requests[:-1]
    steps = gpo_steps(records.entries)
    assert [s["sampling"]["requests"] for s in steps] == [SAMPLES] * 3 and all(s["samples"] == SAMPLES for s in steps)
    assert [r["n"] for r in asked] == [SAMPLES] + [1] * (3 * SAMPLES - 1)
    probe, first_rest, second, third = asked[:1], asked[1:8], asked[8:16], asked[16:24]
    # served together: every request of a round was held by the server at the same moment
    assert [server.max_in_flight(r) for r in (first_rest, second, third)] == [7, 8, 8]
    assert max(r["_received"] for r in first_rest) > probe[0]["_answered"]  # the rest waited for the probe
    first, *later = [s["sampling"]["seconds"] for s in steps]
    assert 2 * DELAY <= first < 3 * single, (single, first)
    assert all(seconds < 2 * single for seconds in later), (single, later)
    assert (
        sum(s["sampling"]["completion_tokens"] for s in steps)
        == result.details["optimizer"]["usage"]["completion_tokens"]
    )


def test_the_pool_is_bounded_by_concurrency(tmp_path: Path):
    """concurrency=3: after the probe, the other 7 samples go out at most 3 at a time."""
    with ScriptedServer(edit_toward("Focus on the task."), delay_s=0.3, honour_n=False) as server:
        _, _, records = run_gpo(server, tmp_path, steps=1, concurrency=3)
    (step,) = gpo_steps(records.entries)
    assert step["sampling"]["requests"] == SAMPLES and len(server.requests) == SAMPLES
    assert server.max_in_flight(server.requests[1:]) == 3
    assert step["sampling"]["seconds"] >= 0.3 * 4  # the probe, then ceil(7 / 3) = 3 rounds


@needs_shared_data
def test_end_to_end_the_concurrency_setting_reaches_the_client(local_tasks: Path, tmp_path: Path, evaluate):
    """`lm_eval --optimize gpo --optimize_args ...,concurrency=4` against a delayed server that
    ignores n: step 2's 8 requests go out 4 at a time, and the trajectory file records them."""
    with ScriptedServer(edit_toward("Focus on boolean_expressions."), delay_s=0.5, honour_n=False) as server:
        task = "bbh_cot_zeroshot_boolean_expressions"
        settings = f"optimizer_model=scripted,optimizer_base_url={server.url},retrieval=recency,train_size=8,dev_size=4,steps=2,concurrency=4"
        results = evaluate(
            model="oracle", include_path=local_tasks, tasks=[task], limit=2, optimizer="gpo", optimizer_args=settings
        )
        asked = list(server.requests)
    (path,) = glob.glob(str(tmp_path / "**" / "trajectories" / f"{task}.jsonl"), recursive=True)
    steps = gpo_steps([json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()])
    assert [s["sampling"]["requests"] for s in steps] == [SAMPLES, SAMPLES] and len(asked) == 2 * SAMPLES
    assert server.max_in_flight(asked[SAMPLES:]) == 4
    assert steps[1]["sampling"]["seconds"] >= 2 * 0.5  # two rounds of 4
    usage = results["prompt_optimization"]["tasks"][task]["details"]["optimizer"]["usage"]
    assert sum(s["sampling"]["prompt_tokens"] for s in steps) == usage["prompt_tokens"] > 0
