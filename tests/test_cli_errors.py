"""Entry points and clear one-line errors (no tracebacks) for bad input."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE, hf_on_cpu, run_lm_eval


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--optimize", "bogus"], ["unknown optimizer 'bogus'; available: candidates, gpo, greater, none"]),
        (["--optimize", "none", "--optimize_args", "seed"], ["'seed' is not of the form key=value"]),
        (["--optimize", "none", "--optimize_args", "stepz=3"], ["unknown key(s) stepz", "valid keys:"]),
        (["--optimize", "candidates"], ["exactly one of file=PATH or candidates"]),
        (["--optimize_args", "seed=1"], ["--optimize_args needs --optimize NAME"]),
        (["--optimize", "none", "--samples", '{"x": [0]}'], ["--samples cannot be combined with --optimize"]),
        (["--optimize", "none", "--limit", "0"], ["--limit 0: give a number of held-out docs per task above 0"]),
        (
            ["--optimize", "none", "--system_instruction", "Be brief.", "--optimize_args", "instruction=Be short."],
            [
                "the initial instruction is given twice: pass either --system_instruction or --optimize_args instruction=..., not both"
            ],
        ),
        (
            ["--model_args", "pretrained=/no/such/model,tokenizer=gpt2", "--optimize", "none"],
            [
                "--model_args pretrained=/no/such/model: no such file or folder (a local path; a Hugging Face repo id reads org/name)"
            ],
        ),
        (
            ["--optimize", "gpo", "--optimize_args", "retrieval=none,steps=0"],
            ["steps must be at least 1 (leave it out for the paper's count from epochs and batch)"],
        ),
    ],
)
def test_bad_arguments_fail_before_loading_anything(args, needles):
    proc = run_lm_eval(["--model", "hf", "--tasks", "mmlu_anatomy", *args], check=False)
    assert_clean_error(proc, *needles)


def test_unknown_task_is_a_clear_error():
    proc = run_lm_eval(["--model", "hf", "--tasks", "no_such_task_xyz", "--optimize", "none"], check=False)
    assert_clean_error(proc, "task load failed: Tasks not found: no_such_task_xyz", "lm_eval ls tasks", code=4)


def test_model_load_failure_is_one_line_with_its_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()  # a folder that holds no model
    proc = run_lm_eval(
        [
            *hf_on_cpu(tmp_path / "empty"),
            "--tasks",
            "planted_first",
            "--optimize",
            "none",
            "--output_path",
            str(tmp_path),
        ],  # (its data is local: tasks load first)
        check=False,
    )
    assert_clean_error(proc, "model load failed:", "error.log", code=3)
    assert "Traceback" in next(tmp_path.glob("*/prompt_optimization_*/error.log")).read_text()


FAKE_VERSION = """
import importlib.metadata as m, sys
real = m.version
m.version = lambda name: "0.5.1" if name.replace("_", "-") == "lm-eval" else real(name)
sys.argv = ["lm_eval", *sys.argv[1:]]
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


def test_unsupported_lm_eval_refuses_optimize_but_keeps_plain_lm_eval():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", FAKE_VERSION, *args], capture_output=True, text=True, env=OFFLINE | {"PATH": ""}
        )

    proc = run("--model", "hf", "--tasks", "mmlu_anatomy", "--optimize", "none")
    assert_clean_error(proc, "--optimize is unavailable: lm-eval 0.5.1 is installed", "lm-eval>=0.4.10,<0.5")
    plain = run("run", "--help")
    assert plain.returncode == 0 and "--tasks" in plain.stdout and "--optimize" not in plain.stdout


def test_help_of_every_entry_point_shows_the_group():
    commands = [
        [str(Path(sys.executable).with_name("lm_eval")), "run", "--help"],
        [str(Path(sys.executable).with_name("lm-eval-promptopt")), "run", "--help"],
        [sys.executable, "-m", "lm_eval_promptopt", "run", "--help"],
    ]
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "prompt optimization:" in proc.stdout and "--optimize_args" in proc.stdout
    top = subprocess.run(
        [str(Path(sys.executable).with_name("lm-eval-promptopt")), "--help"], capture_output=True, text=True
    )
    assert "run" in top.stdout and "lm_eval run" in top.stdout


def test_an_instruction_longer_than_the_context_is_refused_before_the_search(tiny_model: Path, tmp_path: Path):
    """lm-eval would cut the prompt from the left (the model seeing the instruction's end while the
    records hold all of it): one line names the task, the instruction and the sizes, exit 2."""
    long = "Think about every item of the list very carefully before you answer. " * 8
    proc = run_lm_eval(
        ["--model", "hf", "--model_args", f"pretrained={tiny_model},max_length=64", "--device", "cpu", "--gen_kwargs", "max_gen_toks=8",
         "--tasks", "planted_first", "--optimize", "candidates", "--optimize_args", f"candidates=Be brief.|{long.strip()},train_size=0,dev_size=4",
         "--output_path", str(tmp_path)],
        check=False,
    )  # fmt: skip
    assert_clean_error(
        proc, "planted_first: the instruction 'Think about every item of the list very carefully before ...' ("
    )
    line = proc.stderr.strip().splitlines()[-1]
    assert (
        "over the 56 the model takes (max_length 64, less the tokens to generate): lm-eval would cut it from the left"
        in line
    )
    assert not list(tmp_path.glob("*/prompt_optimization_*/trajectories/*"))  # refused before any search


def test_help_metric_example_works_as_printed():
    """`lm_eval run --help` shows the metric setting with the quotes its comma needs: pasted into a
    shell, the example sets that metric (unquoted, `metric=a,b` splits into `metric=a` and a bad `b`)."""
    from lm_eval_promptopt.options import split_pairs

    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lm_eval")), "run", "--help"], capture_output=True, text=True
    )
    examples = [word for word in proc.stdout.split() if word.startswith("'metric=")]
    assert examples, "the help shows a quoted metric example"
    (argument,) = shlex.split(examples[0].rstrip(";,)"))
    assert split_pairs(argument) == {"metric": "exact_match,flexible-extract"}
