"""Floating-point operations of a decoder's forward, counted from its shape (multiply-add = 2).

Per token: the matrices of the decoder layers (every 2D weight of the base model but the
embeddings), the attention scores and their weighted sum over the positions it attends to (a
static cache's whole length, padding included: the kernels compute them), and the output head
where logits are taken. Norms, activations and softmax are left out (a few percent on these
shapes). GReaTer's backward computes input gradients only (no weight gradients): as many FLOPs
as the forward's matrices.
"""

from __future__ import annotations

from typing import Any

import torch


def matrices(model: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The weight matrices a forward multiplies each token by (every 2D weight of the base model
    but the embeddings), and the output head's."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings().weight
    return [
        p for p in model.base_model.parameters() if p.dim() == 2 and id(p) not in embeddings and p is not head
    ], head


class Shape:
    """The sizes that set a model's forward FLOPs."""

    def __init__(self, model: Any) -> None:
        cfg = model.config.get_text_config(decoder=True)
        layers, head = matrices(model)
        self.layer_weights = sum(p.numel() for p in layers)
        """Weights of the decoder layers' matrices (all layers)."""
        heads = cfg.num_attention_heads
        self.attention_width = (
            cfg.num_hidden_layers * heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        )
        self.head_weights = head.numel()

    def forward(self, tokens: int, attended: int, logits: int) -> int:
        """FLOPs of running `tokens` tokens each attending to `attended` positions, with logits at
        `logits` of them."""
        return (
            2 * tokens * self.layer_weights
            + 4 * tokens * attended * self.attention_width
            + 2 * logits * self.head_weights
        )
