"""Benchmark GReaTer's search: where each step's time goes, and how far it is from the hardware's floor.

Runs the real `lm_eval --optimize greater` (CPU, `--threads` torch threads; `refresh=true`: a fresh
search every run, never the cached one) on a model folder, or on
the Llama-3-shaped tiny random model it builds (4.46 M parameters: 256 hidden, 4 layers, 4 heads,
512 intermediate, byte-level BPE of 3.6k tokens with Llama-3's special tokens and chat template),
then prints per step: seconds split into generation / forwards / backwards / proposal / other, the
counters, the batch sizes, tokens per second of generation, and the floor: bare `model.generate`
(default settings, no stop criteria) over random contexts of the step's regeneration shapes (same
context lengths, the same number of new tokens for every row) in the largest batches GReaTer's
sizing allows (free memory; on CPU at most 8192 tokens, beyond which batches measured slower).
Then, per phase, the FLOPs the run counted (`optimizers/greater/flops.py`), the FLOP/s achieved,
and the machine's own matmul FLOP/s measured in this run at the same shapes: every weight matrix
of the model applied to as many rows as the phase's matmuls have (generation: a batch's prompt
tokens for the prefill, its rows for each decoded token; the other phases: tokens per forward),
weighted by the phase's FLOPs at each shape; the last column is the achieved share of it. Last,
the machine's best matmul FLOP/s (large square products) and the seconds the last step's FLOPs
would take at that speed: no implementation of the same work runs a step faster.

    python scripts/bench_greater.py --threads 1 --apply-chat-template
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


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.testbed import bench_model, write_local_task_overrides  # noqa: E402


PHASES = ["generation", "forwards", "backwards", "proposal"]
COUNTERS = [
    "generate_calls",
    "generations",
    "tokens_generated",
    "forward_passes",
    "tokens_processed",
    "backward_passes",
]


def floor_seconds(model_dir: Path, shapes: dict, threads: int, seed: int) -> float:
    """Seconds of bare greedy `generate` over random contexts of the recorded lengths, making
    exactly the recorded number of new tokens, in as few calls as GReaTer's sizing allows."""
    import torch
    from transformers import AutoModelForCausalLM

    from lm_eval_promptopt.optimizers.greater.batching import memory_budget, padded, rows_that_fit

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    lengths, new = sorted(shapes["context_lengths"], reverse=True), shapes["new_tokens"]
    budget = memory_budget(model)
    pad = model.config.pad_token_id or 0
    started = time.perf_counter()
    start = 0
    while start < len(lengths):
        rows = rows_that_fit(model, budget, lengths[start] + new, len(lengths) - start, None)
        chunk = lengths[start : start + rows]
        ids, mask = padded(
            [torch.randint(10, model.config.vocab_size - 10, (n,), generator=gen).tolist() for n in chunk],
            pad,
            left=True,
        )
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
        start += rows
    return time.perf_counter() - started


def matmul_rate(model, rows: int, threads: int, process_time: bool = False) -> float:
    """FLOP/s of this machine multiplying `rows` rows by each weight matrix of `model` (as in a
    forward at that batch shape), timed for at least half a second (wall, or this process's CPU
    time with `process_time`)."""
    import torch

    from lm_eval_promptopt.optimizers.greater.flops import matrices

    torch.set_num_threads(threads)
    layers, head = matrices(model)
    weights = [w.detach() for w in [*layers, head]]
    gen = torch.Generator().manual_seed(0)
    inputs = {w.shape[1]: torch.randn(max(rows, 1), w.shape[1], generator=gen, dtype=w.dtype) for w in weights}
    clock = time.process_time if process_time else time.perf_counter
    flops, started, runs = 0, clock(), 0
    with torch.no_grad():
        while runs < 2 or clock() - started < 0.5:
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
                flops += 2 * inputs[w.shape[1]].shape[0] * w.numel()
            runs += 1
    return flops / (clock() - started)


def peak_rate(threads: int) -> float:
    """This machine's best float32 matmul FLOP/s on `threads` threads: square products of 2048
    and 4096, each timed for at least half a second (wall)."""
    import torch

    torch.set_num_threads(threads)
    gen, best = torch.Generator().manual_seed(0), 0.0
    for n in (2048, 4096):
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        a @ b
        started, runs = time.perf_counter(), 0
        while runs < 2 or time.perf_counter() - started < 0.5:
            a @ b
            runs += 1
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - started))
    return best


def phase_rows(step: dict) -> dict[str, list[tuple[int, float]]]:
    """Per phase: (rows of its matmuls, share of its FLOPs at that shape)."""
    shapes, rows, counters = step["regeneration_shapes"], step.get("batch_rows", {}), step["counters"]
    out = {}
    if shapes["context_lengths"]:
        batch = rows.get("generate", 1)
        width = sum(shapes["context_lengths"]) / len(shapes["context_lengths"])
        prefill, decode = batch * width, batch * max(shapes["new_tokens"] - 1, 0)  # row-tokens per batch
        out["generation"] = [(round(prefill), prefill / (prefill + decode)), (batch, decode / (prefill + decode))]
    per_forward = counters.get("tokens_processed", 0) / max(counters.get("forward_passes", 0), 1)
    for phase in ("forwards", "backwards", "proposal"):
        out[phase] = [(max(round(per_forward), 1), 1.0)]
    return out


def flops_table(model_dir: Path, steps: list[dict], threads: int) -> None:
    """Per step and phase: FLOPs, achieved FLOP/s, the machine's matmul FLOP/s at those shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rates: dict[int, float] = {}
    print("| step | phase | GFLOP | seconds | achieved GFLOP/s | matmul GFLOP/s at its shapes (rows) | share |")
    print("|---|---|---|---|---|---|---|")
    for s in steps:
        for phase, shapes in phase_rows(s).items():
            flops, seconds = s["counters"].get(f"flops_{phase}", 0), s.get("phase_seconds", {}).get(phase, 0.0)
            if not flops or not seconds:
                continue
            for rows, _ in shapes:
                if rows not in rates:
                    rates[rows] = matmul_rate(model, rows, threads)
            machine = 1 / sum(share / rates[rows] for rows, share in shapes)  # FLOP-weighted harmonic mean
            achieved = flops / seconds
            where = ", ".join(f"{rows}: {rates[rows] / 1e9:.1f}" for rows, _ in shapes)
            print(
                f"| {s['step']} | {phase} | {flops / 1e9:.1f} | {seconds:.2f} | {achieved / 1e9:.1f} | {machine / 1e9:.1f} ({where}) | {achieved / machine:.0%} |"
            )
    peak, last = peak_rate(threads), steps[-1]
    total = sum(v for k, v in last["counters"].items() if k.startswith("flops_"))
    print(
        f"machine's best matmul (float32, 2048 and 4096 square, {threads} thread(s)): {peak / 1e9:.1f} GFLOP/s; "
        f"step {last['step']}'s {total / 1e9:.1f} GFLOP at that speed: at least {total / peak:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model", nargs="?", help="a Hugging Face model folder (default: build the tiny Llama-3-shaped one)"
    )
    parser.add_argument("--task", default="bbh_cot_zeroshot_tracking_shuffled_objects_five_objects")
    parser.add_argument("--train", type=int, default=50, help="train examples")
    parser.add_argument("--reasoning", type=int, default=64, help="max reasoning tokens")
    parser.add_argument("--topk", type=int, default=40)
    parser.add_argument("--topq", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apply-chat-template", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the lm_eval run and the floor")
    parser.add_argument("--optimize-args", default="", help="more greater settings, e.g. batch_size=8")
    parser.add_argument("--out", default=str(REPO / "demo_output" / "bench_greater"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    model = Path(args.model).resolve() if args.model else out / "tiny_llama3"
    bench_model(model, args.data)
    tasks = write_local_task_overrides(out / "tasks", args.data, names=(args.task,))
    results_dir = out / f"results_{int(time.time())}"
    settings = f"steps={args.steps},train_size={args.train},dev_size=10,max_reasoning_tokens={args.reasoning},topk={args.topk},topq={args.topq},seed={args.seed},refresh=true"
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
        "--include_path", str(tasks), "--tasks", args.task, "--limit", "1",
        "--gen_kwargs", f"max_gen_toks={args.reasoning}",
        "--optimize", "greater", "--optimize_args", settings + (f",{args.optimize_args}" if args.optimize_args else ""),
        "--output_path", str(results_dir),
        *(["--apply_chat_template"] if args.apply_chat_template else []),
    ]  # fmt: skip
    threads = str(args.threads)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # this checkout's plugin
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"lm_eval failed ({run.returncode}):\n{run.stderr[-4000:]}")
    wall = time.perf_counter() - started
    (path,) = glob.glob(str(results_dir / "**" / "results_*.json"), recursive=True)
    details = json.loads(Path(path).read_text())["prompt_optimization"]["tasks"][args.task]["details"]

    steps = [s for s in details["steps"] if "step" in s]
    print(f"GReaTer on {args.task}: {args.train} train examples, reasoning <= {args.reasoning} tokens, topk {args.topk}, topq {args.topq}, "
          f"chat template {args.apply_chat_template}, {args.threads} thread(s), model {model.name}")  # fmt: skip
    print(
        "| step | seconds | "
        + " | ".join(PHASES)
        + " | other | "
        + " | ".join(COUNTERS)
        + " | gen tok/s | batch rows (gen / fwd / bwd) | floor s |"
    )
    print("|---" * (len(PHASES) + len(COUNTERS) + 6) + "|")
    for s in steps:
        phases = s.get("phase_seconds", {})
        other = s["seconds"] - sum(phases.get(p, 0.0) for p in PHASES)
        gen_rate = s["counters"].get("tokens_generated", 0) / phases["generation"] if phases.get("generation") else 0.0
        rows = s.get("batch_rows", {})
        shapes = s.get("regeneration_shapes")
        floor = floor_seconds(model, shapes, args.threads, args.seed) if shapes and shapes["context_lengths"] else None
        cells = [f"{s['seconds']:.2f}", *(f"{phases.get(p, 0.0):.2f}" for p in PHASES), f"{other:.2f}"]
        cells += [str(s["counters"].get(c, 0)) for c in COUNTERS] + [f"{gen_rate:.0f}"]
        cells += [
            " / ".join(str(rows.get(k, "-")) for k in ("generate", "forward", "backward")),
            "-" if floor is None else f"{floor:.2f}",
        ]
        print(f"| {s['step']} | " + " | ".join(cells) + " |")
    later = steps[1:] or steps
    flops_table(model, steps, args.threads)
    print(f"seconds per step (steps 2-{len(steps)}): {sum(s['seconds'] for s in later) / len(later):.2f}")
    print("chosen: " + " | ".join(repr(s["chosen"]) for s in steps))
    print(f"peak memory: {details['peak_memory_mb']} MB (process RSS on CPU, CUDA allocator peak on GPU)")
    print(
        f"search wall time: {details['search_seconds']:.1f} s (including the top-10 dev scoring); whole lm_eval run: {wall:.1f} s"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
