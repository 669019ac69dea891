"""Batches of token sequences: padding them into tensors, and how many rows one batch takes.

Batch sizes depend only on the model, the sequence width and machine constants, never on the
memory free at the moment: the rows a batch holds change the float rounding of its results (and
thus, at a near tie, a choice), so a run repeated or resumed on the same machine must batch alike.
The memory bound is `MEMORY_SHARE` of the device's memory less the model's weights (the CUDA
device's total on a GPU, physical memory on CPU), over an estimate of the bytes per token; on CPU
a batch also stops paying off once its activations leave the processor's caches, so it holds at
most `CPU_BATCH_TOKENS` tokens (150 greedy generations of 300 + 64 tokens on one thread took 22 s
in one batch, 17 s in batches of 25), and that bound is the one that binds there.
"""

from __future__ import annotations

import os
from typing import Any

import torch


MEMORY_SHARE = 0.5  # of the device's memory (less the weights) one batch may plan for
CPU_BATCH_TOKENS = 8192


def padded(seqs: list[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of `seqs`, padded with `pad` to the longest: after each sequence
    (causal models: padding after a sequence changes nothing before it), or before it (`left`,
    for generation). CPU tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def memory_budget(model: Any) -> int:
    """Bytes one batch may plan for: `MEMORY_SHARE` of the device's memory less the weights."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(MEMORY_SHARE * max(total - weights, 0))


def rows_that_fit(model: Any, budget: int, width: int, wanted: int, cap: int | None, backward: bool = False) -> int:
    """How many sequences of `width` tokens one batch takes: `budget` bytes over an estimate of the
    bytes per token (KV cache, one layer's activations and attention scores; every layer's with
    `backward`), on CPU at most `CPU_BATCH_TOKENS` tokens, at most `wanted` and `cap`, at least 1."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv = 2 * cfg.num_hidden_layers * getattr(cfg, "num_key_value_heads", heads) * head_dim
    layer = 8 * cfg.hidden_size + 3 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) + 2 * heads * width
    per_token = next(model.parameters()).element_size() * (kv + layer * (cfg.num_hidden_layers if backward else 1))
    rows = budget // (per_token * max(width, 1))
    if next(model.parameters()).device.type == "cpu":
        rows = min(rows, CPU_BATCH_TOKENS // max(width, 1))
    return max(1, min(rows, wanted, cap or wanted))
