"""Demo: optimize-then-evaluate end to end, offline, on 2 CPU cores in a few minutes.

Builds the tiny test model and local-data task overrides (lm-eval's own BBH and MMLU task
definitions, reading ../shared/data), then runs the stock `lm_eval` command with
`--optimize candidates`, which picks the best of a few hand-written instructions per task on
optimize-dev and evaluates it on the held-out docs, next to the baseline (no instruction).

The tiny model is random, so the scores are near chance: the demo shows the pipeline and its
outputs, not an improvement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lm_eval_promptopt.testbed import build_tiny_model, write_local_task_overrides

REPO = Path(__file__).resolve().parents[1]
TASKS = ["bbh_cot_zeroshot_boolean_expressions", "mmlu_anatomy", "mmlu_astronomy"]
CANDIDATES = ["Think step by step.", "Answer with the single best option.", "Be careful and precise."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo_output"), help="where the model, tasks and results go")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="local benchmark data")
    args = parser.parse_args()
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    if not (data / "bbh").is_dir():
        sys.exit(f"demo: benchmark data not found at {data}; pass --data DIR (a folder with bbh/ and mmlu/)")

    model = out / "tiny_model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, seed=0, data_dir=data)
    tasks = write_local_task_overrides(out / "tasks", data, names=tuple(TASKS))
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
        "--include_path", str(tasks), "--tasks", ",".join(TASKS),
        "--gen_kwargs", "max_gen_toks=32",
        "--optimize", "candidates",
        "--optimize_args", f"candidates={'|'.join(CANDIDATES)},train_size=5,dev_size=10,compare_baseline=true",
        "--output_path", str(out / "results"),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    sys.exit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
