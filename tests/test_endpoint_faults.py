"""A broken optimizer endpoint never passes for success and is never silent; keys and credentials
stay with the host they were given for. Real `lm_eval --optimize gpo` runs (oracle task model)
against scripted OpenAI-compatible servers on loopback, started together to overlap start-up."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import load_results, needs_shared_data
from scripted_server import ScriptedServer, down_url, edit_toward
from test_gpo import Background, toy_problem

from lm_eval_promptopt.optimizers.gpo import GPO, GPOConfig
from lm_eval_promptopt.optimizers.gpo.llm import OptimizerLLMError


pytestmark = needs_shared_data
TASK = "bbh_cot_zeroshot_boolean_expressions"
INITIAL = "Let's think step by step."
# 8 train docs in batches of 8 for 3 epochs: 3 steps; one retry, 1 s after a fault
SMALL = "retrieval=recency,train_size=8,dev_size=4,samples=2,max_retries=1"
OPENAI_KEY = "sk-openai-NOT-FOR-THIS-HOST"


def gpo_args(local_tasks: Path, settings: str) -> list[str]:
    return ["--model", "oracle", "--include_path", str(local_tasks), "--tasks", TASK, "--limit", "2",
            "--optimize", "gpo", "--optimize_args", settings]  # fmt: skip


def retry_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "; retrying (up to 1 retries" in line]


@pytest.fixture(scope="module")
def runs(local_tasks: Path, tmp_path_factory: pytest.TempPathFactory):
    """`empty`: every answer has empty content. `breaks`: one good answer, then empty ones, at an
    endpoint whose URL carries credentials (user-info and query string). `down`: nothing listens."""
    started: dict = {}
    with (
        ScriptedServer(fail_always="empty") as empty,
        ScriptedServer(
            edit_toward(f"Focus on {TASK.split('_', 3)[-1]}."), failures=[None], fail_always="empty"
        ) as breaks,
    ):
        cache = tmp_path_factory.mktemp("faults_cache")
        secret_url = breaks.url.replace("http://", "http://probe:pw-URL-SECRET@") + "?api_key=q-URL-SECRET"
        started["empty"] = Background(
            gpo_args(local_tasks, f"optimizer_model=m,optimizer_base_url={empty.url},{SMALL}"),
            tmp_path_factory.mktemp("faults_empty"),
            entry="oracle_cli",
            OPENAI_API_KEY=OPENAI_KEY,
        )
        started["breaks"] = Background(
            [
                *gpo_args(local_tasks, f"optimizer_model=m,optimizer_base_url={secret_url},{SMALL}"),
                "--optimize_cache",
                str(cache),
            ],
            tmp_path_factory.mktemp("faults_breaks"),
            entry="oracle_cli",
            LM_EVAL_PROMPTOPT_CACHE=str(cache),
        )
        started["down"] = Background(
            gpo_args(local_tasks, f"optimizer_model=m,optimizer_base_url={down_url()},{SMALL}"),
            tmp_path_factory.mktemp("faults_down"),
            entry="oracle_cli",
        )
        try:
            yield {**started, "empty_server": empty, "breaks_server": breaks, "cache": cache}
        finally:
            for run in started.values():
                run.stop()


def test_an_endpoint_that_answers_nothing_is_retried_then_a_clear_error(runs):
    """Empty content at every step: exit 5 (not the initial instruction labelled optimized), one
    retry line; $OPENAI_API_KEY is not sent to this host (no api_key_env names it)."""
    proc = runs["empty"].result(check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"lm_eval: error: optimizer failed: {TASK}: optimizer model 'm' at http://127.0.0.1:")
    assert (
        "gave no usable proposal: every answer was empty or had no text between <START> and <END> (after 1 retries). Stopped at step 1 of 3"
        in error
    )
    (line,) = retry_lines(proc.stderr)
    assert "no usable answer: 2 choice(s), all empty or unparsable" in line
    server = runs["empty_server"]
    assert len(server.requests) == 2 and all(r["_authorization"] == "Bearer unused" for r in server.requests)
    assert not list(runs["empty"].out.glob("**/results_*.json"))


def test_an_endpoint_that_breaks_after_a_good_step_stops_with_no_proposals_and_leaks_no_credentials(runs):
    proc = runs["breaks"].result()
    outcome = load_results(runs["breaks"].out)["prompt_optimization"]["tasks"][TASK]
    assert outcome["stop_reason"] == "no_proposals"
    trajectory = outcome["details"]["trajectory"]
    assert [e["step"] for e in trajectory] == [0, 1, 2] and trajectory[1]["instruction"] != INITIAL
    assert trajectory[2]["instruction"] == trajectory[1]["instruction"]  # step 2 had nothing to move to
    assert len(retry_lines(proc.stderr)) == 1
    server = runs["breaks_server"]
    assert len(server.requests) == 3  # step 1; step 2 and its one retry
    # the URL's credentials reach the server (basic auth, the query string on the right path) but no file and no output
    assert {r["_authorization"] for r in server.requests} == {
        "Basic " + base64.b64encode(b"probe:pw-URL-SECRET").decode()
    }
    assert {r["_path"] for r in server.requests} == {"/v1/chat/completions?api_key=q-URL-SECRET"}
    files = [p for root in (runs["breaks"].out, runs["cache"]) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"prompt_optimization.json", f"{TASK}.json", f"{TASK}.jsonl"} <= names and any(
        n.startswith("results_") for n in names
    )
    assert len(list(runs["cache"].glob("*.json"))) == 1  # the cache entry
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert "pw-URL-SECRET" not in text and "q-URL-SECRET" not in text, path
    assert "URL-SECRET" not in proc.stdout + proc.stderr
    assert outcome["details"]["optimizer"]["base_url"] == runs["breaks_server"].url


def test_a_down_endpoint_says_it_is_retrying(runs):
    """Connection refused: one line says it is retrying (with the error), then exit 5."""
    proc = runs["down"].result(check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = retry_lines(proc.stderr)
    assert (
        "lm_eval_promptopt: optimizer model 'm' at http://127.0.0.1:" in line
        and "APIConnectionError: Connection error." in line
    )
    assert "about 1 s of waiting" in line
    assert "failed after 2 attempt(s): APIConnectionError" in proc.stderr.strip().splitlines()[-1]


def test_choices_empty_is_a_fault_and_a_key_goes_only_where_it_is_named(monkeypatch, tmp_path):
    """`choices: []` at every step: retried, then an error. A key named by api_key_env is sent;
    $OPENAI_API_KEY is not (in process: the real client on loopback HTTP)."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("MY_OPTIMIZER_KEY", "sk-mine")
    with ScriptedServer(fail_always="no_choices") as server:
        problem, _, records = toy_problem(tmp_path)
        config = GPOConfig(
            optimizer_model="m",
            optimizer_base_url=server.url,
            api_key_env="MY_OPTIMIZER_KEY",
            retrieval="recency",
            max_retries=1,
        )
        with pytest.raises(
            OptimizerLLMError, match=r"gave no usable proposal: .* \(after 1 retries\)\. Stopped at step 1 of 3"
        ):
            GPO(config).optimize(problem)
    assert len(server.requests) == 2 and {r["_authorization"] for r in server.requests} == {"Bearer sk-mine"}
    (call,) = [e for e in records.entries if e.get("kind") == "optimizer_call"]
    assert [a["error"] for a in call["attempts"]] == ["no usable answer: no choices"] * 2 and call["unusable"]
    assert records.entries[-1]["kind"] == "gpo_stopped" and OPENAI_KEY not in json.dumps(records.entries)


def test_an_html_page_is_one_line_naming_the_url_and_the_attempt_is_logged(tmp_path):
    """HTTP 200 with an HTML page (a proxy's sign-in page, a web UI's URL): not retried, one line
    naming the endpoint and what came back; the attempt is in the trajectory."""
    with ScriptedServer(fail_always="html") as server:
        problem, _, records = toy_problem(tmp_path)
        config = GPOConfig(
            optimizer_model="m", optimizer_base_url=server.url + "?key=q-SECRET", retrieval="recency", max_retries=2
        )
        with pytest.raises(OptimizerLLMError) as caught:
            GPO(config).optimize(problem)
    assert caught.value.detail.startswith(
        f"toy: optimizer model 'm' at {server.url} failed (not retryable): HTTP 200 with a body that is not a chat completion: "
        "'<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in to continue</body></html>' "
        "(is it the API's base URL, e.g. ending in /v1?). Stopped at step 1 of 3"
    )
    assert len(server.requests) == 1
    (call,) = [e for e in records.entries if e.get("kind") == "optimizer_call"]
    assert call["base_url"] == server.url and call["attempts"] == [{"error": call["error"].split(" (is it")[0]}]
    assert "q-SECRET" not in records.path.read_text()
