"""Resume after a kill, and every stop condition, through the real `lm_eval` entry point."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import OFFLINE, lm_eval_command, load_results, needs_shared_data, run_lm_eval, squeezed
from scripted_server import ScriptedServer, edit_toward


pytestmark = needs_shared_data
BBH = "bbh_cot_zeroshot_boolean_expressions"
TARGET = "Focus on boolean_expressions and answer True or False."


def state_of(out: Path, task: str) -> dict:
    """The task's checkpoint payload in the (only) run folder under `out`, or {} before the first step."""
    paths = glob.glob(str(out / "**" / "state" / f"{task}.json"), recursive=True)
    try:
        return json.loads(Path(paths[0]).read_text(encoding="utf-8"))["payload"] if paths else {}
    except (OSError, ValueError):
        return {}


def kill_after_step(args: list[str], out: Path, task: str, step: int, entry: str, env: dict[str, str]) -> None:
    """Start a run, SIGKILL it as soon as step `step` of `task`'s search is checkpointed."""
    proc = subprocess.Popen(
        [*lm_eval_command(entry), *args, "--output_path", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **OFFLINE, **env},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and state_of(out, task).get("steps_done", 0) < step:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def gpo_args(local_tasks: Path, url: str, extra: str = "") -> list[str]:
    return [
        "--model", "oracle", "--include_path", str(local_tasks), "--tasks", BBH, "--optimize", "gpo",
        "--optimize_args", f"optimizer_model=scripted,optimizer_base_url={url},retrieval=recency,train_size=8,"
        f"dev_size=4,samples=3,steps=6,temperature=0.5{extra}",
    ]  # fmt: skip


def slow(respond, seconds: float):
    def wrapped(body, sample):
        time.sleep(seconds)
        return respond(body, sample)

    return wrapped


def paid_calls(out: Path) -> list[dict]:
    (path,) = glob.glob(str(out / "**" / "trajectories" / f"{BBH}.jsonl"), recursive=True)
    entries = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [e for e in entries if e.get("kind") == "optimizer_call" and not e.get("replayed")]


def test_gpo_killed_mid_search_resumes_and_ends_with_the_same_instruction(local_tasks: Path, tmp_path: Path):
    env = {"OPENAI_API_KEY": "sk-test"}
    with ScriptedServer(slow(edit_toward(TARGET), 0.15)) as server:
        run_lm_eval(
            [*gpo_args(local_tasks, server.url), "--output_path", str(tmp_path / "whole")], entry="oracle_cli", **env
        )
        whole = load_results(tmp_path / "whole")["prompt_optimization"]["tasks"][BBH]
        whole_requests = len(server.requests)
        server.requests.clear()

        with tempfile.TemporaryDirectory() as cache:  # the killed run and its rerun share a cache
            env["LM_EVAL_PROMPTOPT_CACHE"] = cache
            kill_after_step(gpo_args(local_tasks, server.url), tmp_path / "killed", BBH, 2, "oracle_cli", env)
            killed_state = state_of(tmp_path / "killed", BBH)
            assert 2 <= killed_state["steps_done"] < 6 and not glob.glob(
                str(tmp_path / "killed" / "**" / "results_*.json"), recursive=True
            )
            proc = run_lm_eval(
                [*gpo_args(local_tasks, server.url), "--output_path", str(tmp_path / "killed")],
                entry="oracle_cli",
                **env,
            )
        resumed = load_results(tmp_path / "killed")["prompt_optimization"]["tasks"][BBH]

    print(proc.stdout)  # the resumed-run transcript
    assert "resuming the interrupted run in" in proc.stdout and f"{BBH}: resuming after step" in proc.stdout
    assert resumed["final_instruction"] == whole["final_instruction"]
    assert resumed["details"]["trajectory"] == whole["details"]["trajectory"]
    assert resumed["stop_reason"] == whole["stop_reason"] == "steps"
    # No optimizer call is paid twice: the calls logged before the kill are not sent again (the
    # one in flight at the kill, never answered to the client, may be).
    assert len(paid_calls(tmp_path / "killed")) == len(paid_calls(tmp_path / "whole")) == 6
    assert len(server.requests) <= whole_requests + 1
    assert resumed["evaluations"] == whole["evaluations"]  # harness scores before the kill are reused
    assert len(glob.glob(str(tmp_path / "killed" / "*" / "prompt_optimization_*"))) == 1  # the same run folder


def test_greater_killed_mid_search_resumes_and_ends_with_the_same_instruction(
    tiny_model: Path, local_tasks: Path, tmp_path: Path
):
    args = [
        "--model", "hf", "--model_args", f"pretrained={tiny_model}", "--device", "cpu",
        "--include_path", str(local_tasks), "--tasks", BBH, "--optimize", "greater",
        "--optimize_args", "steps=5,train_size=4,dev_size=3", "--gen_kwargs", "max_gen_toks=6", "--limit", "2",
    ]  # fmt: skip
    run_lm_eval([*args, "--output_path", str(tmp_path / "whole")])
    with tempfile.TemporaryDirectory() as cache:
        kill_after_step(args, tmp_path / "killed", BBH, 2, "lm_eval", {"LM_EVAL_PROMPTOPT_CACHE": cache})
        run_lm_eval([*args, "--output_path", str(tmp_path / "killed")], LM_EVAL_PROMPTOPT_CACHE=cache)
    whole = load_results(tmp_path / "whole")["prompt_optimization"]["tasks"][BBH]
    resumed = load_results(tmp_path / "killed")["prompt_optimization"]["tasks"][BBH]
    assert resumed["final_instruction"] == whole["final_instruction"]
    # wall-clock timings (a step's seconds and phase seconds) differ between any two runs; the rest
    # of a step's record (choices, criteria, counters, batch rows, regeneration shapes) must not
    timing = ("seconds", "phase_seconds")
    strip = lambda steps: [{k: v for k, v in s.items() if k not in timing} for s in steps]  # noqa: E731
    assert strip(resumed["details"]["steps"]) == strip(whole["details"]["steps"])
    assert resumed["details"]["counters"]["backward_passes"] == whole["details"]["counters"]["backward_passes"]


@pytest.mark.parametrize(
    ("extra", "reason", "evaluations"),
    [
        ("", "completed", 6),
        (",max_evals=3", "max_evals", 3),  # the initial instruction and two candidates
        (",patience=2", "patience", 5),  # the second candidate is the best; two more do not beat it
        (",time_limit=0.001", "time_limit", 2),
    ],
)
def test_each_budget_stops_the_search_keeps_the_best_and_says_why(local_tasks: Path, evaluate, capsys: pytest.CaptureFixture[str],
                                                                  extra, reason, evaluations):  # fmt: skip
    candidates = "Be brief.|Focus on boolean_expressions.|Be kind.|Be calm.|Be bold."
    results = evaluate(
        model="oracle",
        include_path=local_tasks,
        tasks=[BBH],
        optimizer="candidates",
        optimizer_args=f"candidates={candidates}{extra}",
    )
    task, stdout = results["prompt_optimization"]["tasks"][BBH], capsys.readouterr().out
    assert task["stop_reason"] == reason and task["evaluations"] == evaluations
    expected = "Be brief." if reason == "time_limit" else "Focus on boolean_expressions."
    assert task["final_instruction"] == expected
    if (
        not extra
    ):  # the projected cost, printed before the search: the initial instruction and 5 candidates on 100 dev docs
        table = squeezed(stdout.split("projected cost of the candidates searches", 1)[1])
        assert f"| {BBH} | 50 | 100 | 6 | 600 | 0 |" in table and "| total | | | 6 | 600 | 0 |" in table


def test_gpo_step_and_token_budgets(local_tasks: Path, tmp_path: Path, evaluate, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    outcomes = {}
    with ScriptedServer(edit_toward(TARGET)) as server:
        for name, extra in (("steps", ",steps=2"), ("tokens", ",max_optimizer_tokens=1")):
            settings = gpo_args(local_tasks, server.url)[-1].replace(",steps=6", "") + extra
            results = evaluate(model="oracle", include_path=local_tasks, tasks=[BBH], optimizer="gpo", optimizer_args=settings,
                               optimize_cache=tmp_path / name / "cache", output_path=tmp_path / name)  # fmt: skip
            outcomes[name] = results["prompt_optimization"]["tasks"][BBH]
    by_steps, by_tokens = outcomes["steps"], outcomes["tokens"]
    assert by_steps["stop_reason"] == "steps" and len(by_steps["details"]["trajectory"]) == 3
    assert by_tokens["stop_reason"] == "max_optimizer_tokens" and len(by_tokens["details"]["trajectory"]) == 2
    assert by_tokens["details"]["optimizer"]["usage"]["requests"] == 1
