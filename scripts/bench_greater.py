"""Benchmark GReaTer's search: per-step and total model calls, tokens, wall time, peak memory.

Runs the real `lm_eval --optimize greater` on a tiny random model (built offline) and BBH
boolean_expressions from ../shared/data with 50 train examples, then prints the counters that the
optimizer recorded per step, next to the reference implementation's per-step counts.

    python scripts/bench_greater.py [--steps 3] [--reasoning 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lm_eval_promptopt.testbed import build_tiny_model, write_local_task_overrides

REPO = Path(__file__).resolve().parents[1]
TASK = "bbh_cot_zeroshot_boolean_expressions"
REFERENCE = {"generations": 200, "forward_passes": 118, "backward_passes": 50}  # per step, N=50 (spec §6.1)
COLUMNS = ["seconds", "generations", "generate_calls", "forward_passes", "backward_passes", "tokens_processed", "tokens_generated"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reasoning", type=int, default=32, help="max reasoning tokens")
    parser.add_argument("--out", default=str(REPO / "demo_output" / "bench_greater"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    model = out / "tiny_model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, seed=0, data_dir=args.data)
    tasks = write_local_task_overrides(out / "tasks", args.data, names=(TASK,))
    results_dir = out / f"results_{int(time.time())}"
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
        "--include_path", str(tasks), "--tasks", TASK, "--limit", "1",
        "--gen_kwargs", f"max_gen_toks={args.reasoning}",
        "--optimize", "greater",
        "--optimize_args", f"steps={args.steps},train_size=50,dev_size=10,max_reasoning_tokens={args.reasoning}",
        "--output_path", str(results_dir),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    (path,) = glob.glob(str(results_dir / "**" / "results_*.json"), recursive=True)
    details = json.loads(Path(path).read_text())["prompt_optimization"]["tasks"][TASK]["details"]

    steps = [s for s in details["steps"] if "step" in s]
    print(f"GReaTer on {TASK}: 50 train examples, reasoning <= {args.reasoning} tokens, tiny random Llama, CPU")
    print("| step | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for s in steps:
        cells = [f"{s['seconds']:.2f}"] + [str(s["counters"].get(c, 0)) for c in COLUMNS[1:]]
        print(f"| {s['step']} | " + " | ".join(cells) + " |")
    totals = details["counters"]
    print("| total | " + f"{details['search_seconds']:.2f} | " + " | ".join(str(totals.get(c, 0)) for c in COLUMNS[1:]) + " |")
    print("per step (mean): " + ", ".join(f"{c} {sum(s['counters'].get(c, 0) for s in steps) / len(steps):.1f}" for c in REFERENCE))
    print("reference per step at N=50: " + ", ".join(f"{c} {v}" for c, v in REFERENCE.items()) + " (backwards at batch size 1, with weight gradients)")
    print(f"peak memory: {details['peak_memory_mb']} MB (process RSS on CPU, CUDA allocator peak on GPU)")
    print(f"weight gradients computed: {details['weight_gradients']}")
    print(f"search wall time: {details['search_seconds']:.1f} s (including the top-10 dev scoring); whole lm_eval run: {wall:.1f} s")


if __name__ == "__main__":
    main()
