"""Where the instruction goes in the prompt lm-eval renders, and how each task gets its own.

lm-eval has one system-instruction slot for the whole run. Each task gets its own instruction by
binding it to the task object: the bound task ignores the run-wide slot and hands lm-eval its
own instruction, so lm-eval still renders every prompt (description, few-shot, chat template).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .lm_eval_compat import bind_build_requests
from .setup import quiet


_SENTINEL = "lm_eval_promptopt system-role probe"
_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Placement:
    """How an instruction reaches the model, decided once per run from the model and flags."""

    chat_template: bool
    system_role: bool = True

    @property
    def name(self) -> str:
        if not self.chat_template:
            return "text_prefix"
        return "system_message" if self.system_role else "first_user_turn"

    def system_text(self, instruction: str) -> str | None:
        """The string for lm-eval's system-instruction slot (None: no instruction)."""
        if not instruction:
            return None
        if not self.chat_template and not instruction[-1].isspace():
            # Without a chat template and without a task description lm-eval glues the system
            # text to the question; a trailing delimiter separates them (and when a description
            # follows, lm-eval then adds no second delimiter: the result is the same as stock).
            return instruction + _DELIMITER
        return instruction

    def wrap_chat_template(self, chat_template: Callable[..., str] | None) -> Callable[..., str] | None:
        """For templates without a system role: move the system text into the first user turn."""
        if chat_template is None or self.system_role:
            return chat_template

        def merged(messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> str:
            return chat_template(merge_system_into_first_user_turn(messages), *args, **kwargs)

        return merged


def merge_system_into_first_user_turn(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    text = _DELIMITER.join(system)
    for message in rest:
        if message["role"] == "user":
            sep = "" if text[-1].isspace() or message["content"][:1].isspace() else _DELIMITER
            message["content"] = text + sep + message["content"]
            return rest
    return [{"role": "user", "content": text}, *rest]


def detect_placement(lm: Any, apply_chat_template: bool | str) -> Placement:
    """Probe the model's chat template for a system role (lm-eval drops it silently if absent)."""
    if not apply_chat_template:
        return Placement(chat_template=False)
    probe = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "?"}]
    with quiet("lm_eval.models.huggingface", logging.ERROR):  # HFLM warns when it drops the system role: expected here
        rendered = lm.apply_chat_template(probe)
    return Placement(chat_template=True, system_role=_SENTINEL in str(rendered))


def bind_instruction(task: Any, instruction: str, placement: Placement) -> None:
    """Make `task` render `instruction` in its system slot, whatever the run-wide slot holds."""
    system_text = placement.system_text(instruction)

    def adjust(kwargs: dict[str, Any]) -> None:
        kwargs["system_instruction"] = system_text
        kwargs["chat_template"] = placement.wrap_chat_template(kwargs.get("chat_template"))

    bind_build_requests(task, adjust)


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt and the character span of the instruction in it (None if absent)."""

    text: str
    span: tuple[int, int] | None


def render(
    task: Any,
    doc: dict,
    instruction: str,
    placement: Placement,
    lm: Any,
    fewshot_as_multiturn: bool,
) -> Rendered:
    """Render `doc` exactly as lm-eval's `build_all_requests` does, with `instruction` placed.

    For tasks whose few-shot sampler is random, the shots of a doc depend on the docs rendered
    before it in the same pass; seed the sampler (`task.set_fewshot_seed`) before calling this.
    """
    chat = lm.apply_chat_template if placement.chat_template else None
    text = task.fewshot_context(
        doc,
        task.config.num_fewshot or 0,
        system_instruction=placement.system_text(instruction),
        apply_chat_template=placement.chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        chat_template=placement.wrap_chat_template(chat),
        gen_prefix=task.doc_to_prefix(doc),
    )
    if isinstance(text, list):  # multiple-input tasks: one context per choice
        text = text[0]
    start = text.find(instruction) if instruction else -1
    return Rendered(text, (start, start + len(instruction)) if start >= 0 else None)
