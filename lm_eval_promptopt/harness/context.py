"""Whether an instruction fits the model's context: lm-eval cuts a prompt that is too long from
the left, so the model would see the end of an over-long instruction while every record holds
all of it. The instructions known before a search (initial, candidates, given) are checked then."""

from __future__ import annotations

from typing import Any

from ..errors import PromptOptError
from .prompting import Placement, render
from .setup import unwrap


def prompt_budget(lm: Any, task: Any) -> int | None:
    """The tokens a prompt may have before lm-eval's Hugging Face model cuts it: `max_length`, less
    the tokens to generate for generate_until tasks (None: the model does not say)."""
    inner = unwrap(lm)
    max_length = getattr(inner, "max_length", None)
    if not isinstance(max_length, int) or not hasattr(inner, "tok_encode"):
        return None
    if task.get_config("output_type") != "generate_until":
        return max_length
    generate = (task.get_config("generation_kwargs") or {}).get("max_gen_toks", getattr(inner, "max_gen_toks", 0))
    return max_length - int(generate)


def check_fits(
    name: str,
    task: Any,
    doc: dict,
    instructions: list[str],
    lm: Any,
    placement: Placement,
    eval_kwargs: dict[str, Any],
    fewshot_seed: int | None,
) -> None:
    """Refuse, in one line, an instruction that makes `doc`'s prompt longer than the model takes
    where the prompt without it fits (a doc too long by itself is lm-eval's usual truncation)."""
    budget = prompt_budget(lm, task)
    if budget is None:
        return
    encode = unwrap(lm).tok_encode

    def tokens(instruction: str) -> int:
        task.set_fewshot_seed(fewshot_seed)  # the same shots for each instruction
        return len(
            encode(render(task, doc, instruction, placement, lm, eval_kwargs.get("fewshot_as_multiturn", False)).text)
        )

    if tokens("") > budget:
        return
    for instruction in dict.fromkeys(instructions):
        length = tokens(instruction)
        if length > budget:
            shown = instruction if len(instruction) <= 60 else instruction[:57] + "..."
            raise PromptOptError(
                f"{name}: the instruction {shown!r} ({len(encode(instruction))} tokens) makes the prompt {length} tokens, over the "
                f"{budget} the model takes (max_length {unwrap(lm).max_length}, less the tokens to generate): lm-eval would cut it "
                "from the left and the model would not see the start of the instruction. Shorten it, or raise max_length in --model_args"
            )
