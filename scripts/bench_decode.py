"""Benchmark GReaTer's generation alone: the greedy decoder and Hugging Face `generate` against the
machine's own matmul throughput at the same shapes, in CPU seconds (robust to a loaded machine).

Greedy reasoning for `--rows` random contexts (seeded; lengths spread +-10 % around `--context`),
`--new` tokens each (no stop sequences; EOS ends a row), in GReaTer's batches (`Engine.generate`:
longest first, as many rows as `batching.rows_that_fit` allows). Per round, alternately: the
decoder, the decoder with its decode steps compiled (`compile=true`; round 1 includes the
compiling), `generate`, and the model's weight matrices applied to as many rows as the prefill
(a batch's tokens) and a decode step (its rows) have. Prints per round the FLOPs counted
(`optimizers/greater/flops.py`), process CPU seconds (wall in brackets), achieved GFLOP/s, the
matmul GFLOP/s at those shapes (FLOP-weighted over prefill and decode) and the share, and
whether the tokens equal the uncompiled decoder's.

    python scripts/bench_decode.py [MODEL_DIR] --threads 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def timed(work):
    cpu, wall = time.process_time(), time.perf_counter()
    out = work()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model", nargs="?", help="a Hugging Face model folder (default: the bench's tiny Llama-3-shaped one)"
    )
    parser.add_argument("--rows", type=int, default=150, help="contexts (GReaTer's bench step: 150)")
    parser.add_argument("--context", type=int, default=266, help="mean context tokens")
    parser.add_argument("--new", type=int, default=64, help="tokens to generate per context")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "demo_output" / "bench_greater"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    import torch
    from bench_greater import matmul_rate
    from lm_eval.models.huggingface import HFLM

    from lm_eval_promptopt.optimizers.greater.config import GreaterConfig
    from lm_eval_promptopt.optimizers.greater.engine import Engine
    from tests.support.testbed import bench_model

    torch.set_num_threads(args.threads)
    model = Path(args.model).resolve() if args.model else Path(args.out).resolve() / "tiny_llama3"
    bench_model(model, args.data)
    lm = HFLM(pretrained=str(model), device="cpu", batch_size=1, dtype="float32")
    rng = random.Random(args.seed)
    special = set(lm.tokenizer.all_special_ids)
    words = [t for t in range(len(lm.tokenizer)) if t not in special]
    contexts = [[rng.choice(words) for _ in range(int(args.context * rng.uniform(0.9, 1.1)))] for _ in range(args.rows)]
    print(f"generation of {args.rows} contexts of ~{args.context} tokens, {args.new} new tokens each, model {model.name} "
          f"({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f} M parameters), {args.threads} thread(s)")  # fmt: skip
    print(
        "| round | path | GFLOP | CPU s (wall s) | achieved GFLOP/s | matmul GFLOP/s at its shapes (rows) | share | same tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rates: dict[int, float] = {}
    for round_ in range(1, args.rounds + 1):
        results = {}
        for path in ("decoder", "compiled", "generate"):
            engine = Engine(lm, GreaterConfig(compile=path == "compiled"), [], args.new)
            engine.fallback = "bench: generate, for comparison" if path == "generate" else None
            out, cpu, wall = timed(lambda: engine.generate(contexts))
            batch = engine.rows["generate"]
            width = sum(len(c) for c in contexts) / len(contexts)
            prefill_rows, prefill = round(batch * width), engine.shape.forward(round(batch * width), 0, 0)
            decode = engine.shape.forward(batch * (args.new - 1), 0, batch * (args.new - 1))
            for rows in (prefill_rows, batch):
                rates[rows] = matmul_rate(lm.model, rows, args.threads, process_time=True)
            machine = (prefill + decode) / (prefill / rates[prefill_rows] + decode / rates[batch])
            flops = engine.counters["flops_generation"]
            results[path] = out
            same = "" if path == "decoder" else str(out == results["decoder"])
            print(f"| {round_} | {path} | {flops / 1e9:.1f} | {cpu:.2f} ({wall:.2f}) | {flops / cpu / 1e9:.1f} | {machine / 1e9:.1f} "
                  f"({prefill_rows}: {rates[prefill_rows] / 1e9:.1f}, {batch}: {rates[batch] / 1e9:.1f}) | {flops / cpu / machine:.0%} | {same} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
