"""One GReaTer step on a random model of Llama-3-8B's shape, its generation by the greedy decoder
and by Hugging Face `generate` (part of `gpu_check.sh`).

No weights are needed to time a step: the model is Llama-3-8B's configuration (hidden 4096, 32
layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary 128256) with random bfloat16 weights,
made on the device; the tokenizer is the test bed's Llama-3-style one (its ids are a subset of the
vocabulary). The task is the planted `planted_largest` (data in the repository), 50 train docs,
up to 1024 reasoning tokens (a random model rarely stops early). Prints the step's seconds and
phase split (greedy decoder), then the step's first generation (the 50 docs' reasoning) timed
with the decoder and with `generate`, and whether their tokens agree; last, the same generation
with the decode steps compiled (`compile=true`), with and without the compiling. `--device cpu` is the dry
mode: the same code on a 3.0 M-parameter model of the same shape family (256 hidden, 4 layers), 8 docs, 32 tokens.

    python scripts/greater_step_check.py [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    rope_theta=500000.0,
)
DRY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512)
TASK = "planted_largest"


def random_model(tokenizer, shape: dict, device: str, dtype: torch.dtype):
    """A Llama of `shape` with random weights (std 0.02, seeded), built on `device` directly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{"vocab_size": len(tokenizer), **shape}, max_position_embeddings=8192, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)  # its buffers were left empty
    return model.eval()


def search_for(lm, train: int, tokens: int):
    """A GReaTer search on `planted_largest` as `lm_eval --optimize greater` would set it up."""
    from lm_eval.tasks import TaskManager

    from lm_eval_promptopt.harness.objective import Objective, TaskSplits, primary_metric
    from lm_eval_promptopt.harness.prompting import Placement
    from lm_eval_promptopt.harness.setup import apply_task_overrides
    from lm_eval_promptopt.harness.splits import plan_splits
    from lm_eval_promptopt.optimizers.base import Problem
    from lm_eval_promptopt.optimizers.greater import Greater, GreaterConfig, Search
    from lm_eval_promptopt.options import RunOptions

    task = TaskManager(include_path=str(REPO / "task_configs" / "planted")).load([TASK])["tasks"][TASK]
    apply_task_overrides({TASK: task}, gen_kwargs={"max_gen_toks": tokens})
    splits = TaskSplits(task)
    plan = plan_splits(
        TASK, task.config, RunOptions(train_size=train, dev_size=8, seed=0), splits.size, lambda s: set()
    )
    objective = Objective(
        task_name=TASK, splits=splits, plan=plan, lm=lm, placement=Placement(chat_template=False), metric=primary_metric(TASK, task, {}),
        fewshot_seed=1234, eval_kwargs={"apply_chat_template": False, "fewshot_as_multiturn": False, "confirm_run_unsafe_code": False},
        record=lambda entry: None,
    )  # fmt: skip
    problem = Problem(TASK, lm, plan, objective, Greater.default_instruction, 0)
    return Search(GreaterConfig(steps=1, max_reasoning_tokens=tokens), problem)


def timed(device: str, work):
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = work()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default=str(REPO / "demo_output" / "gpu_check"))
    args = parser.parse_args()
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from tests.support.testbed import build_tiny_model

    dry = args.device == "cpu"
    tok_dir = Path(args.out).resolve() / "llama3_tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tiny_model(tok_dir, seed=0, tokenizer="llama3")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    shape, train, tokens = (DRY, 8, 32) if dry else (LLAMA3_8B, 50, 1024)
    model = random_model(tokenizer, shape, args.device, torch.float32 if dry else torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=args.device, batch_size=1)
    search = search_for(lm, train, tokens)
    engine = search.engine
    print(
        f"greater_step: {params / 1e6:.1f} M parameters ({model.dtype}) on {args.device}, {train} train docs, up to {engine.max_new} reasoning tokens, decoder: {engine.fallback or 'greedy'}",
        flush=True,
    )
    (top, steps, _), seconds = timed(args.device, lambda: search.run(random.Random(0)))
    step = [s for s in steps if "step" in s][0]
    print(
        f"greater_step: one step {step['seconds']:.1f} s (search {seconds:.1f} s), phases "
        + ", ".join(f"{k} {v:.1f} s" for k, v in step["phase_seconds"].items())
    )
    print("greater_step: counters " + ", ".join(f"{k} {v:.3g}" for k, v in step["counters"].items()), flush=True)
    contexts = search.scorer.contexts(search.initial)
    fast, fast_s = timed(args.device, lambda: engine.generate(contexts))
    engine.fallback = "gpu_check: generate, for comparison"
    slow, slow_s = timed(args.device, lambda: engine.generate(contexts))
    made = sum(len(r) for r in fast)
    print(f"greater_step: generation of {len(contexts)} reasonings ({made} tokens kept): greedy decoder {fast_s:.1f} s, generate {slow_s:.1f} s "
          f"({slow_s / fast_s:.2f}x); same tokens: {fast == slow}")  # fmt: skip
    from lm_eval_promptopt.optimizers.greater.decode import DecodeStep

    engine.fallback, engine.step = None, DecodeStep(model, compile=True)
    (compiled, first_s), (_, again_s) = (timed(args.device, lambda: engine.generate(contexts)) for _ in range(2))
    print(f"greater_step: the same generation with compiled decode steps ({engine.decoder()}): {first_s:.1f} s with "
          f"compiling, then {again_s:.1f} s ({fast_s / again_s:.2f}x the uncompiled decoder); same tokens: {compiled == fast}")  # fmt: skip
    if device_peak := (torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None):
        print(f"greater_step: peak CUDA memory {device_peak:.1f} GiB")


if __name__ == "__main__":
    main()
