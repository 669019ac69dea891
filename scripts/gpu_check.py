"""GPU check: `lm_eval --optimize greater | gpo (optimizer_model=self) | candidates` on a tiny model,
and one GReaTer step on a random Llama-3-8B-shaped model (`greater_step_check.py`).

Offline: builds the tiny random Llama of the tests (tests/support/testbed.py), loads it in
bfloat16 on CUDA (with `parallelize=True` where more than one GPU is visible) and runs the three
optimizers on the planted task `planted_largest` (data in the repository). Prints, per run, exit
code, wall time, peak memory (CUDA: torch's max allocated; CPU: peak RSS), GReaTer's seconds per
step and every counter the run recorded. Exits 1 if any run failed. `--device cpu` runs the
same commands on CPU (a dry mode that checks everything but CUDA). The `greater_step` run builds
a random bfloat16 model of Llama-3-8B's shape on the GPU and times one step at the paper's sizes
(50 train docs, up to 1024 reasoning tokens), its generation by the greedy decoder, by
`generate` and by the decoder with compiled decode steps (the dry mode: a 3.0 M-parameter model, 8 docs, 32 tokens).

    bash scripts/gpu_check.sh [--device cpu]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
TASK = "planted_largest"
RUNS = {
    "greater": (
        "greater",
        "instruction=Use please answer the question.,extractor=task,steps={steps},train_size=8,dev_size=8,max_reasoning_tokens=16",
    ),
    "gpo_self": (
        "gpo",
        "optimizer_model=self,retrieval=recency,instruction=Please answer.,train_size=8,dev_size=8,epochs=1,samples=2,max_tokens=16",
    ),
    "candidates": ("candidates", "candidates=Please answer.|Please find the largest one.,train_size=0,dev_size=8"),
}


def child(peak_file: str, lm_eval_args: list[str]) -> None:
    """Run `lm_eval` in this process and write its peak memory (MB) to `peak_file` at exit."""

    def write_peak() -> None:
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        peak = (sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
        Path(peak_file).write_text(
            json.dumps(
                {"peak_mb": round(peak / 2**20, 1), "kind": "cuda max allocated" if cuda else "process peak RSS"}
            )
        )

    atexit.register(write_peak)
    from lm_eval_promptopt.cli import main

    main(["run", *lm_eval_args])


def lm_eval_args(model: Path, device: str, gpus: int, optimize: str, settings: str, out: Path) -> list[str]:
    model_args = f"pretrained={model},dtype=bfloat16" + (",parallelize=True" if gpus > 1 else "")
    return [
        "--model", "hf", "--model_args", model_args, "--device", "cuda" if device == "cuda" else "cpu", "--batch_size", "8",
        "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", TASK, "--limit", "16",
        "--optimize", optimize, "--optimize_args", f"{settings},compare_baseline=true", "--output_path", str(out),
    ]  # fmt: skip


def report(name: str, out: Path, code: int, seconds: float, peak: dict) -> list[str]:
    lines = [
        f"{name}: exit {code}, {seconds:.1f} s wall, peak memory {peak.get('peak_mb', '?')} MB ({peak.get('kind', 'not measured')})"
    ]
    files = sorted(out.rglob("results_*.json"))
    if code != 0 or not files:
        return lines
    data = json.loads(files[-1].read_text(encoding="utf-8"))
    task = data["prompt_optimization"]["tasks"][TASK]
    details = task.get("details") or {}
    lines.append(f"  instruction {task['final_instruction']!r}, dev {task['initial_dev_score']} -> {task['final_dev_score']}, "
                 f"{task['evaluations']} harness evaluations, stop: {task['stop_reason']}")  # fmt: skip
    if "steps" in details and isinstance(details["steps"], list) and details["steps"]:
        per_step = [s["seconds"] for s in details["steps"]]
        lines.append(f"  GReaTer: {len(per_step)} steps, {sum(per_step) / len(per_step):.2f} s per step (max {max(per_step):.2f}); "
                     f"peak during search {details.get('peak_memory_mb')} MB; weight gradients: {details.get('weight_gradients')}")  # fmt: skip
    if details.get("counters"):
        lines.append("  counters: " + ", ".join(f"{k} {v}" for k, v in details["counters"].items()))
    usage = (details.get("optimizer") or {}).get("usage")
    if usage:
        lines.append("  optimizer LLM usage: " + ", ".join(f"{k} {v}" for k, v in usage.items()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=3, help="GReaTer steps")
    parser.add_argument("--out", default=str(REPO / "demo_output" / "gpu_check"))
    parser.add_argument(
        "--only", default=",".join([*RUNS, "greater_step"]), help=f"runs to do, of {', '.join(RUNS)}, greater_step"
    )
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child[0], args.child[1:])
        return
    import torch

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        sys.exit("gpu_check: no CUDA device visible (use --device cpu for the dry mode)")
    print(
        f"gpu_check: device {args.device}"
        + (f", {gpus} GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(gpus))}" if gpus else "")
    )
    sys.path.insert(0, str(REPO))  # tests/support/ is in the checkout, not the package
    from tests.support.testbed import build_tiny_model

    out = Path(args.out).resolve()
    model = out / "tiny_model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LM_EVAL_PROMPTOPT_CACHE": str(out / "cache")}  # fmt: skip
    failed, lines = [], []
    for name in args.only.split(","):
        if name == "greater_step":
            print("gpu_check: greater_step ...", flush=True)
            started = time.time()
            # its lines as they come: a run cut by a time limit still shows the figures it reached
            proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "greater_step_check.py"), "--device", args.device, "--out", str(out)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            figures = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith("greater_step:"):
                    figures.append(f"  {line.rstrip()}")
            step_lines = [f"greater_step: exit {proc.wait()}, {time.time() - started:.1f} s wall", *figures]
            if proc.returncode != 0:
                failed.append(name)
            lines += step_lines
            continue
        optimize, settings = RUNS[name]
        run_out, peak_file = out / name, out / f"{name}.peak.json"
        peak_file.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--child", str(peak_file),
                   *lm_eval_args(model, args.device, gpus, optimize, settings.format(steps=args.steps) + ",refresh=true", run_out)]  # fmt: skip
        print(f"gpu_check: {name} ...", flush=True)
        started = time.time()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.time() - started
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n")
        peak = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
        lines += report(name, run_out, proc.returncode, seconds, peak)
        print("\n".join(report(name, run_out, proc.returncode, seconds, peak)), flush=True)
    print("\n".join(["", "gpu_check summary", *lines]))
    if failed:
        sys.exit(f"gpu_check: FAILED: {', '.join(failed)}")
    print("gpu_check: all runs passed")


if __name__ == "__main__":
    main()
