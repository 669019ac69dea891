"""The tiny Llama of the test bed and the planted benchmark: its chat templates and its construction.

No lm-eval here, and torch / transformers only when a model is built: the planted benchmark
imports the template without them.
"""

from __future__ import annotations

from typing import Any


# ChatML-like: every message is "<|role|>\n{content}<|end|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Same markers, but rejects system messages the way Gemma-2's template does.
CHAT_TEMPLATE_NO_SYSTEM = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def init_llama(tokenizer: Any, seed: int, *, tie_word_embeddings: bool = True, **shape: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of `shape` (LlamaConfig sizes) for `tokenizer`'s
    vocabulary and special tokens; the weights depend only on `seed` and the config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
