"""`lm-eval-promptopt show`: a finished run, an unfinished one, and files that are not what they should be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import needs_shared_data, run_lm_eval


TASK = "bbh_cot_zeroshot_boolean_expressions"


def show(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lm-eval-promptopt")), "show", str(run_dir)], capture_output=True, text=True
    )


@needs_shared_data
def test_show_says_how_a_run_ended_and_one_line_for_a_corrupt_file(local_tasks: Path, tmp_path: Path):
    """The run folder is recorded absolute from a relative --output_path; `show` names an unfinished
    run's resume command (credentials masked) and refuses a corrupt file in one line."""
    url = "http://user:pw-SECRET@127.0.0.1:9/v1?api_key=q-SECRET"  # recorded masked (never contacted: candidates)
    run_lm_eval(
        ["--model", "oracle", "--include_path", str(local_tasks), "--tasks", TASK, "--limit", "2", "--optimize", "candidates",
         "--optimize_args", "candidates=A|B,train_size=0,dev_size=4", "--output_path", "out", "--metadata", json.dumps({"url": url})],
        entry="oracle_cli",
    )  # fmt: skip
    (run_dir,) = (tmp_path / "out").glob("*/prompt_optimization_*")
    section = json.loads((run_dir / "prompt_optimization.json").read_text())
    assert section["run_dir"] == str(run_dir) and run_dir.is_absolute()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and "SECRET" not in info["command"]
    assert (
        info["command"].startswith("oracle_cli.py run --model oracle")
        and "http://***@127.0.0.1:9/v1?api_key=***" in info["command"]
    )

    finished = show(run_dir)
    assert finished.returncode == 0 and "resume with" not in finished.stdout and "  instruction: 'A'" in finished.stdout

    (run_dir / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    stopped = show(run_dir)
    assert stopped.returncode == 0 and stopped.stdout.splitlines()[0] == (
        f"interrupted: resume with: {info['command']} (put back each credential shown as ***)"
    )

    for text, problem in (
        ("{", "is not valid JSON (Expecting property name"),
        ("[]", "is not a prompt_optimization.json (no tasks)"),
    ):
        (run_dir / "prompt_optimization.json").write_text(text)
        broken = show(run_dir)
        assert broken.returncode == 1 and "Traceback" not in broken.stderr, broken.stderr
        (line,) = broken.stderr.strip().splitlines()
        assert line.startswith(f"Error: {run_dir / 'prompt_optimization.json'} {problem}"), line
