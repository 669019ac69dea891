"""GReaTer's greedy decoder: the token ids Hugging Face `generate` gives, on each model family."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import SHARED_DATA, needs_shared_data
from lm_eval.models.huggingface import HFLM
from support.testbed import build_tiny_model
from torch._dynamo.utils import counters
from transformers import AutoTokenizer

from lm_eval_promptopt.optimizers.greater import GreaterConfig
from lm_eval_promptopt.optimizers.greater.decode import cache_keyword
from lm_eval_promptopt.optimizers.greater.engine import Engine


pytestmark = needs_shared_data
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {  # family: (tokenizer of the test bed, config class, its settings)
    "llama3": ("llama3", None, {}),
    "mistral": ("metaspace", "MistralConfig", SIZES | {"sliding_window": None}),
    "gpt2": ("bpe", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024)),
    "qwen2": ("bpe", "Qwen2Config", SIZES | {"tie_word_embeddings": True}),
    "gemma2": (
        "bpe",
        "Gemma2Config",
        SIZES | {"head_dim": 16, "query_pre_attn_scalar": 16, "tie_word_embeddings": False},
    ),
    # a window shorter than the contexts: the sliding layers' cache rolls while decoding
    "gemma2_rolling": (
        "bpe",
        "Gemma2Config",
        SIZES | {"head_dim": 16, "query_pre_attn_scalar": 16, "tie_word_embeddings": False, "sliding_window": 24},
    ),
}


def build(family: str, root: Path) -> Path:
    """A tiny random model of `family` with a test-bed tokenizer, saved in `root`."""
    kind, config_class, settings = FAMILIES[family]
    path = build_tiny_model(root, tokenizer=kind, data_dir=SHARED_DATA)
    if config_class:
        tok = AutoTokenizer.from_pretrained(path)
        config = getattr(transformers, config_class)(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.3,
            **settings,  # wide enough that greedy reasoning differs between contexts
        )
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def engine(lm: HFLM, until: list[str], max_new: int, batch_size: int | None = None) -> Engine:
    return Engine(lm, GreaterConfig(batch_size=batch_size), until, max_new)


def contexts(lm: HFLM) -> list[list[int]]:
    texts = [
        f"Question {i}: Alice has {i} balls; Bob swaps {i % 3} of them with Claire. " * (1 + i % 4) for i in range(9)
    ]
    return [lm.tok_encode(t) for t in texts]


def stops(lm: HFLM, free: list[list[int]]) -> list[str]:
    """Stop sequences taken from three rows' own reasoning, so that rows end at different lengths."""
    return [lm.tok_decode(free[r][k : k + 2]) for r, k in [(0, 2), (3, 5), (6, 8)] if len(free[r]) > k + 1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_decoder_gives_generates_token_ids(family: str, tmp_path: Path):
    lm = HFLM(pretrained=str(build(family, tmp_path)), device="cpu", batch_size=1)
    ctx = contexts(lm)
    fast = engine(lm, [], 12)
    assert fast.fallback is None
    free = fast.generate(ctx)
    assert len({tuple(r) for r in free}) > 1
    until = stops(lm, free)
    fast, slow = engine(lm, until, 12), engine(lm, until, 12)
    slow.fallback = "the reference"
    tails = [lm.tok_encode(" So the answer is")] * len(ctx)
    (got, hidden), (want, reference) = fast.generate_and_read(ctx, tails), slow.generate_and_read(ctx, tails)
    assert got == want
    assert len({len(r) for r in got}) > 2  # the stops ended rows at different lengths
    assert fast.counters["tokens_generated"] == slow.counters["tokens_generated"]
    if family != "gemma2_rolling":  # answers are not read off a rolled window (Gemma-2's is 4096 tokens)
        for h, r in zip(hidden, reference):
            assert torch.allclose(h, r, atol=1e-5)


def test_ended_rows_leave_the_batch(tmp_path: Path):
    lm = HFLM(pretrained=str(build("llama3", tmp_path)), device="cpu", batch_size=1)
    ctx = contexts(lm)
    free = engine(lm, [], 12).generate(ctx)
    until = [lm.tok_decode(free[0][1:3])]
    fast, slow = engine(lm, until, 12), engine(lm, until, 12)
    slow.fallback = "the reference"
    rows: list[int] = []
    hook = lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = fast.generate(ctx)
        fed, rows[:] = sum(rows[1:]), []
        assert got == slow.generate(ctx)
    finally:
        hook.remove()
    assert len(got[0]) < 3 and max(len(r) for r in got) > 3
    # each row is fed until it ends, not until the longest ends: fewer row-tokens, fewer FLOPs
    assert sum(len(r) - 1 for r in got) <= fed < sum(rows[1:]) == len(ctx) * (len(rows) - 1)
    assert 0 < fast.counters["flops_generation"] < slow.counters["flops_generation"]


def test_a_generation_config_with_processors_falls_back_to_generate(tmp_path: Path, caplog):
    path = build("llama3", tmp_path)
    config = transformers.GenerationConfig.from_pretrained(path)
    config.repetition_penalty = 1.3
    config.save_pretrained(path)
    lm = HFLM(pretrained=str(path), device="cpu", batch_size=1)
    with caplog.at_level(logging.WARNING):
        slow = engine(lm, [], 12)
    assert slow.fallback == "its generation config sets repetition_penalty"
    assert [r.message for r in caplog.records if "generate" in r.message] == [
        "GReaTer generates with Hugging Face generate: the fast greedy decoder cannot run (its generation config sets repetition_penalty)"
    ]
    fast = engine(lm, [], 12)
    fast.fallback = None
    assert slow.generate(contexts(lm)) != fast.generate(contexts(lm))  # the decoder would not apply the penalty


def test_the_kv_cache_goes_under_the_keyword_the_installed_transformers_takes():
    """transformers renamed `past_key_values` to `cache`: a cache passed under the other name would
    fall into the forward's **kwargs unused (every token decoded without its context, as on an H200
    with transformers 5.17)."""

    class Renamed(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    class Before(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    assert (cache_keyword(Renamed()), cache_keyword(Before())) == ("cache", "past_key_values")


@pytest.mark.parametrize("family", ["llama3", "gemma2_rolling"])
def test_compiled_decode_steps_give_generates_token_ids(family: str, tmp_path: Path):
    lm = HFLM(pretrained=str(build(family, tmp_path)), device="cpu", batch_size=1)
    ctx = contexts(lm)
    free = engine(lm, [], 12).generate(ctx)
    until = stops(lm, free)
    fast = Engine(lm, GreaterConfig(compile=True), until, 12)
    slow = engine(lm, until, 12)
    slow.fallback = "the reference"
    traced = counters["stats"]["calls_captured"]
    got, want = fast.generate(ctx), slow.generate(ctx)
    assert fast.decoder() == "greedy, decode steps compiled"
    assert counters["stats"]["calls_captured"] > traced  # dynamo traced the decode step
    assert got == want
    assert len({len(r) for r in got}) > 2  # rows left the batch at different steps: shapes changed


NO_COMPILER = """
import json, sys
from lm_eval.models.huggingface import HFLM
from lm_eval_promptopt.optimizers.greater import GreaterConfig
from lm_eval_promptopt.optimizers.greater.engine import Engine
from test_greater_decode import contexts, engine
lm = HFLM(pretrained=sys.argv[1], device="cpu", batch_size=1)
want = engine(lm, [], 12).generate(contexts(lm))
first = Engine(lm, GreaterConfig(compile=True), [], 12)
got = first.generate(contexts(lm))
again = Engine(lm, GreaterConfig(compile=True), [], 12)
print(json.dumps([got == want, again.generate(contexts(lm)) == want, first.decoder(), again.decoder()]))
"""


def test_a_decode_step_that_cannot_compile_runs_eager_with_one_line(tmp_path: Path):
    """On a machine without the C++ compiler inductor needs, decoding goes on uncompiled, with the
    same tokens and one logged line (a fresh process and inductor cache: nothing compiled before)."""
    path = build("llama3", tmp_path)
    env = os.environ | {"CXX": "no-such-compiler", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run(
        [sys.executable, "-c", NO_COMPILER, str(path)],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    same_first, same_again, first, again = json.loads(done.stdout.strip().splitlines()[-1])
    assert same_first and same_again
    assert first.startswith("greedy, decode steps eager (compile failed: ") and again == first
    lines = [line for line in done.stderr.splitlines() if "torch.compile" in line]
    assert len(lines) == 1
    assert lines[0].startswith("GReaTer decodes without torch.compile: compiling the decode step failed (")


def test_a_compile_failure_after_part_of_the_step_ran_decodes_the_batch_again(tmp_path: Path, caplog):
    """A compiled step can fail at a graph compiled after an earlier part of the step ran (dynamo
    compiles per graph, and anew for new shapes), when the cache has taken its writes (a rolled
    sliding window cannot be put back): the batch is decoded again, uncompiled."""
    lm = HFLM(pretrained=str(build("gemma2_rolling", tmp_path)), device="cpu", batch_size=1)
    ctx = contexts(lm)
    want = engine(lm, [], 12).generate(ctx)
    calls = []

    def runs_then_fails(**inputs):  # a stand-in for a compiled forward whose later graph fails to compile
        calls.append(lm.model(**inputs))
        raise RuntimeError("inductor: a later graph failed\nmore detail")

    broken = engine(lm, [], 12)
    broken.step.compiled = runs_then_fails
    with caplog.at_level(logging.WARNING):
        assert broken.generate(ctx) == want
    assert len(calls) == 1
    assert (
        broken.decoder() == "greedy, decode steps eager (compile failed: RuntimeError: inductor: a later graph failed)"
    )
