"""Nothing lost, nothing leaked, nothing paid twice: transfer checks, the run lock, Ctrl-C, checks
that fail before the model loads, the cache as a cache. Real `lm_eval` processes throughout."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import OFFLINE, lm_eval_command, load_results, needs_shared_data, run_lm_eval


TASK = "bbh_cot_zeroshot_boolean_expressions"


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("lm_eval: error:")]
    assert needle in line, line
    return line


@needs_shared_data
def test_transfer_refuses_held_out_docs_the_source_was_optimized_on(local_tasks: Path, tmp_path: Path):
    """The source searched on seed=1, 60/120 docs; a default-plan transfer would evaluate 73 of its
    100 held-out docs on docs the instruction was optimized on."""
    base = ["--model", "oracle", "--include_path", str(local_tasks), "--tasks", TASK, "--limit", "2"]
    run_lm_eval([*base, "--optimize", "none", "--optimize_args", "seed=1,train_size=60,dev_size=120",
                 "--output_path", str(tmp_path / "source")], entry="oracle_cli")  # fmt: skip
    (results,) = (tmp_path / "source").glob("*/results_*.json")
    proc = run_lm_eval(
        [*base, "--optimized_prompts", str(results), "--output_path", str(tmp_path / "refused")],
        entry="oracle_cli",
        check=False,
    )
    line = assert_one_line_error(proc, f"{TASK}: 73 of its 100 held-out docs")
    assert "--optimize_args seed=1,train_size=60,dev_size=120" in line and "exclude_source_docs=true" in line
    (refused,) = (tmp_path / "refused").glob("*/prompt_optimization_*")
    assert json.loads((refused / "run.json").read_text())["status"] == "failed"

    # a run's own optimized_prompts.json is checked against the prompt_optimization.json beside it
    (prompts,) = (tmp_path / "source").glob("*/prompt_optimization_*/optimized_prompts.json")
    out = tmp_path / "excluded"
    proc = run_lm_eval([*base, "--optimized_prompts", str(prompts), "--optimize_args", "exclude_source_docs=true",
                        "--output_path", str(out)], entry="oracle_cli")  # fmt: skip
    assert f"{TASK}: evaluating 27 held-out docs: left out the 73 that {prompts} was optimized on" in proc.stdout
    task = load_results(out)["prompt_optimization"]["tasks"][TASK]
    assert (
        task["details"]["transfer_check"]["check"] == "excluded"
        and task["details"]["transfer_check"]["excluded_docs"] == 73
    )
    source_plan = json.loads((prompts.parent / "prompt_optimization.json").read_text())["tasks"][TASK]["plan"]
    used = set(source_plan["train"]["indices"]) | set(source_plan["dev"]["indices"])
    heldout = task["plan"]["heldout"]  # the 27 left, of which --limit 2 evaluated the first 2
    assert heldout["planned_size"] == 27 and heldout["size"] == 2 and not used & set(heldout["indices"])


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        (
            "greater",
            "GReaTer needs gradients of a local Hugging Face causal model (--model hf); got --model local-completions",
        ),
        ("embedding", "retrieval=relevance: cannot load the embedding model"),
        ("output", "cannot write the run folder"),
        ("cache", "--optimize_cache: cannot write the instruction cache"),
    ],
)
def test_checks_fail_before_the_model_loads(setting: str, needle: str, tmp_path: Path):
    """Each would otherwise fail only after the model load (here: an empty model folder, exit 3) or
    after the searches; none loads the model or writes a run folder."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (tmp_path / "empty_model").mkdir()
    model = ["--model", "hf", "--model_args", f"pretrained={tmp_path / 'empty_model'}", "--device", "cpu"]
    out, extra = tmp_path / "out", []
    if setting == "greater":
        model = ["--model", "local-completions", "--model_args", "model=m,base_url=http://127.0.0.1:9/v1/completions"]
        extra = ["--optimize", "greater"]
    elif setting == "embedding":
        extra = ["--optimize", "gpo", "--optimize_args", f"embedding_model={tmp_path / 'no_embedder'}"]
    elif setting == "output":
        out, extra = blocker / "out", ["--optimize", "none"]
    else:
        extra = ["--optimize", "none", "--optimize_cache", str(blocker)]
    proc = run_lm_eval([*model, "--tasks", "planted_first", *extra, "--output_path", str(out)], check=False)
    assert_one_line_error(proc, needle)
    assert not list(tmp_path.glob("**/prompt_optimization_*"))


@needs_shared_data
def test_sizes_are_checked_before_the_model_loads(local_tasks: Path, tmp_path: Path):
    (tmp_path / "empty_model").mkdir()  # would fail only when loaded
    proc = run_lm_eval(
        ["--model", "hf", "--model_args", f"pretrained={tmp_path / 'empty_model'}", "--device", "cpu", "--include_path", str(local_tasks),
         "--tasks", TASK, "--optimize", "none", "--optimize_args", "train_size=200,dev_size=100", "--output_path", str(tmp_path)],
        check=False,
    )  # fmt: skip
    assert_one_line_error(proc, "train_size")


def wait_for(path: Path, procs: list[subprocess.Popen], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"no {path}"
        time.sleep(0.05)


class Live:
    """A real `lm_eval` process running in the background, its output in files (pipes would fill)."""

    def __init__(self, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            # Ctrl-C must reach it even when pytest runs as a background job (which starts with SIGINT ignored)
            restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
            self.proc = subprocess.Popen(
                [*lm_eval_command("oracle_cli"), *args], stdout=out, stderr=err, env=env, preexec_fn=restore_sigint
            )

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.out.read_text(), self.err.read_text()
        )


@needs_shared_data
def test_a_second_live_run_is_refused_ctrl_c_saves_and_resume_works(local_tasks: Path, tmp_path: Path):
    """Two identical commands started together: one runs, the other stops at once (exit 2, naming the
    live run's folder). Ctrl-C on the live one: exit 130 and one line. The same command resumes it
    (no step paid twice); a cache that breaks mid-run is a warning, the results are still written."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--model", "oracle", "--include_path", str(local_tasks), "--tasks", TASK, "--limit", "2", "--optimize", "gate",
            "--optimize_args", "train_size=4,dev_size=4", "--optimize_cache", str(cache), "--output_path", str(out)]  # fmt: skip
    gate, gate2 = tmp_path / "gate", tmp_path / "gate2"
    gate.mkdir()
    gate2.mkdir()
    env = {**os.environ, **OFFLINE, "GATE_DIR": str(gate), "LM_EVAL_PROMPTOPT_CACHE": str(tmp_path / "plugin_cache")}
    both = [Live(args, env, tmp_path / f"run{i}") for i in range(2)]
    try:
        wait_for(gate / "waiting", [run.proc for run in both])
        live = next(run for run in both if run.proc.pid == int((gate / "waiting").read_text()))
        second = next(run for run in both if run is not live).finish()
        (run_dir,) = out.glob("*/prompt_optimization_*")
        assert_one_line_error(second, f"running this command in {run_dir} now")

        live.proc.send_signal(signal.SIGINT)
        stopped = live.finish()
        assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
        (line,) = [line for line in stopped.stderr.splitlines() if line.startswith("lm_eval: interrupted")]
        assert (
            f"saved in {run_dir}" in line and "Resume with the same command: oracle_cli.py run --model oracle" in line
        )
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
        shown = subprocess.run(
            [*lm_eval_command("lm-eval-promptopt"), "show", str(run_dir)], capture_output=True, text=True
        )
        assert shown.returncode == 0 and shown.stdout.splitlines() == [
            f"interrupted: resume with: oracle_cli.py run {shlex.join(args)}",
            "no task's search has finished yet; each unfinished search is saved up to its last completed step",
        ], shown.stdout + shown.stderr

        resumed = Live(args, {**env, "GATE_DIR": str(gate2)}, tmp_path / "resumed")
        both.append(resumed)
        wait_for(gate2 / "waiting", [resumed.proc])
        for entry in cache.iterdir():
            entry.unlink()
        cache.rmdir()
        cache.write_text("")  # the cache breaks mid-run: the finished search cannot be stored there
        (gate2 / "open").write_text("")
        done = resumed.finish()
    finally:
        for run in both:
            if run.proc.poll() is None:
                run.proc.kill()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming the interrupted run in {run_dir}" in done.stdout
    assert "could not write the instruction cache entry" in done.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    trajectory = [json.loads(line) for line in (run_dir / "trajectories" / f"{TASK}.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in trajectory if e.get("kind") in ("gate_step", "resumed")] == ["gate_step", "resumed"]
    task = load_results(out)["prompt_optimization"]["tasks"][TASK]
    assert task["source"] == "search" and task["cache_entry"] is None
