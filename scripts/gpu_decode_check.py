"""The greedy decoder against Hugging Face `generate` on a random Llama-3-8B-shaped bfloat16 model,
on one GPU, needing only torch and transformers (no lm-eval: for a bare GPU machine).

50 random contexts of 300 tokens (seeded), up to 1024 new tokens each (the paper's GReaTer
sizes; a random model seldom emits EOS), one batch, on a static cache. Prints seconds of each
path, whether their tokens are equal, the FLOPs counted (`optimizers/greater/flops.py`), the
achieved TFLOP/s and the GPU's bfloat16 matmul TFLOP/s at the prefill's and a decode step's
shapes, measured in the same run.

    python scripts/gpu_decode_check.py [--rows 50 --context 300 --new 1024]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
GREATER = REPO / "lm_eval_promptopt" / "optimizers" / "greater"


def load(name: str):
    """A module of optimizers/greater by its file (the package's __init__ imports lm-eval)."""
    spec = importlib.util.spec_from_file_location(name, GREATER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced(work):
    sync()
    started = time.perf_counter()
    out = work()
    sync()
    return out, time.perf_counter() - started


def matmul_rate(weights: list[torch.Tensor], rows: int) -> float:
    """FLOP/s of `rows` rows times each of `weights` on the GPU, for at least a second."""
    x = {w.shape[1]: torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype) for w in weights}
    flops, runs = 0, 0
    sync()
    started = time.perf_counter()
    while runs < 3 or time.perf_counter() - started < 1.0:
        for w in weights:
            torch.nn.functional.linear(x[w.shape[1]], w)
            flops += 2 * rows * w.numel()
        runs += 1
        sync()
    return flops / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--new", type=int, default=1024)
    parser.add_argument("--shape", choices=["8b", "dry"], default="8b", help="dry: a 3.0 M-parameter model on CPU")
    args = parser.parse_args()
    device = "cuda" if args.shape == "8b" else "cpu"
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    decode, flops = load("decode"), load("flops")
    sys.path.insert(0, str(REPO / "scripts"))
    from greater_step_check import DRY, LLAMA3_8B

    shape = LLAMA3_8B if args.shape == "8b" else {**DRY, "vocab_size": 3584}
    config = LlamaConfig(
        **shape, max_position_embeddings=8192, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)
    model.eval()
    print(f"gpu_decode_check: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters bf16, "
          f"{args.rows} contexts of {args.context} tokens, up to {args.new} new", flush=True)  # fmt: skip
    ids = torch.randint(
        10, config.vocab_size, (args.rows, args.context), generator=torch.Generator().manual_seed(0)
    ).to(device)
    mask = torch.ones_like(ids)
    room = args.context + args.new
    decode.greedy(model, ids[:2, :16], mask[:2, :16], 4, 20, lambda t: False)  # warm-up
    (fast, _, fed), fast_s = synced(
        lambda: decode.greedy(model, ids, mask, args.new, room, lambda t: t[-1] == config.eos_token_id)
    )
    print(f"gpu_decode_check: greedy decoder {fast_s:.1f} s ({sum(len(r) for r in fast)} tokens)", flush=True)
    with torch.no_grad():
        result, slow_s = synced(lambda: model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=config.pad_token_id, cache=StaticCache(config=config, max_cache_len=room)))  # fmt: skip
    slow = result[:, args.context :].tolist()
    same = all(s[: len(f)] == f for f, s in zip(fast, slow))
    print(
        f"gpu_decode_check: generate {slow_s:.1f} s; same tokens: {same}; generate / decoder {slow_s / fast_s:.2f}x",
        flush=True,
    )
    counted = flops.Shape(model)
    decoded = sum(len(r) - 1 for r in fast)
    total = counted.forward(ids.numel() + decoded, room, args.rows + decoded)
    layers, head = flops.matrices(model)
    weights = [w.detach() for w in [*layers, head]]
    prefill_rate, step_rate = matmul_rate(weights, ids.numel()), matmul_rate(weights, args.rows)
    prefill, steps = counted.forward(ids.numel(), 0, 0), counted.forward(decoded, 0, decoded)
    machine = (prefill + steps) / (prefill / prefill_rate + steps / step_rate)
    print(f"gpu_decode_check: {total / 1e12:.1f} TFLOP; decoder {total / fast_s / 1e12:.1f} TFLOP/s, generate {total / slow_s / 1e12:.1f} TFLOP/s; "
          f"bf16 matmul at these shapes {machine / 1e12:.1f} TFLOP/s (prefill rows {ids.numel()}: {prefill_rate / 1e12:.1f}, "
          f"decode rows {args.rows}: {step_rate / 1e12:.1f}); peak memory {torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else 0:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
