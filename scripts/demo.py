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


def newest_results(out: Path, since: float) -> Path | None:
    """The results JSON lm-eval's tracker wrote under `out` during this run."""
    files = [p for p in out.glob("**/results_*.json") if p.stat().st_mtime >= since]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo_output"), help="where the results go")
    parser.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"planted ops to run, of {', '.join(planted.OPS)}")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if not ops or not set(ops) <= set(planted.OPS):
        sys.exit(f"demo: --ops takes a comma-separated list of {', '.join(planted.OPS)}")

    print("demo: the planted model (trained on the first run: about 2 minutes on 2 idle CPU cores, an hour or more on a busy machine; then cached) ...", flush=True)
    model = planted.planted_model()
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu", "--batch_size", "32",
        "--include_path", str(planted.TASK_DIR), "--tasks", ",".join(f"planted_{op}" for op in ops),
        "--optimize", "greater", "--optimize_args", SEARCH,
        "--output_path", str(out / "results"),
    ]  # fmt: skip
    print("$", shlex.join(command), flush=True)
    # One torch thread: the model is tiny, and extra threads only spin on a busy machine.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    code = subprocess.run(command, check=False, env=env).returncode
    if code != 0:
        sys.exit(code)
    results = newest_results(out / "results", started)
    run_dir = Path(json.loads(results.read_text(encoding="utf-8"))["prompt_optimization"]["run_dir"]) if results else None
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
