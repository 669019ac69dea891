"""Where the instruction lands in the prompt lm-eval renders, with and without chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import needs_shared_data
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from lm_eval_promptopt.harness.prompting import Placement, detect_placement, merge_system_into_first_user_turn, render


pytestmark = needs_shared_data
INSTRUCTION = "Read twice, answer once."


@pytest.fixture(scope="module")
def tasks(local_tasks: Path) -> dict:
    """lm-eval's own gsm8k_cot_zeroshot (no description) and a BBH task (with a description)."""
    loaded = TaskManager(include_path=str(local_tasks)).load(["gsm8k_cot_zeroshot", "bbh_cot_zeroshot_navigate"])
    return loaded["tasks"]


def lm(model: Path) -> HFLM:
    return HFLM(pretrained=str(model), device="cpu", batch_size=1)


def first_doc(task) -> dict:
    return task.eval_docs[0]


def test_no_chat_template_separates_instruction_from_question(tasks, tiny_model):
    model = lm(tiny_model)
    task = tasks["gsm8k_cot_zeroshot"]
    stock = task.fewshot_context(first_doc(task), 0, system_instruction=INSTRUCTION)
    assert stock.startswith(INSTRUCTION + "Q: ")  # lm-eval glues them when there is no description
    placement = detect_placement(model, False)
    assert placement.name == "text_prefix"
    rendered = render(task, first_doc(task), INSTRUCTION, placement, model, False)
    assert rendered.text.startswith(INSTRUCTION + "\n\nQ: ")
    assert rendered.span == (0, len(INSTRUCTION))
    assert rendered.text[len(INSTRUCTION) + 2 :] == task.fewshot_context(first_doc(task), 0)


def test_no_chat_template_with_description_matches_stock(tasks, tiny_model):
    task = tasks["bbh_cot_zeroshot_navigate"]
    doc = first_doc(task)
    ours = render(task, doc, INSTRUCTION, Placement(chat_template=False), lm(tiny_model), False)
    assert ours.text == task.fewshot_context(doc, 0, system_instruction=INSTRUCTION)
    assert ours.text.startswith(INSTRUCTION + "\n\nGiven a series of navigation instructions")


def test_chat_template_puts_instruction_in_system_message(tasks, tiny_model):
    model = lm(tiny_model)
    task = tasks["bbh_cot_zeroshot_navigate"]
    placement = detect_placement(model, True)
    assert placement.name == "system_message"
    text = render(task, first_doc(task), INSTRUCTION, placement, model, True).text
    assert text.startswith(f"<|system|>\n{INSTRUCTION}\n\nGiven a series of navigation instructions")
    assert "<|user|>\nQ: If you follow these instructions" in text


def test_template_without_system_role_moves_instruction_into_first_user_turn(tasks, tiny_model_no_system):
    model = lm(tiny_model_no_system)
    task = tasks["bbh_cot_zeroshot_navigate"]
    doc = first_doc(task)
    stock = task.fewshot_context(
        doc, 0, system_instruction=INSTRUCTION, apply_chat_template=True, chat_template=model.apply_chat_template
    )
    assert INSTRUCTION not in stock and "Given a series" not in stock  # lm-eval drops the whole system message
    placement = detect_placement(model, True)
    assert placement.name == "first_user_turn"
    rendered = render(task, doc, INSTRUCTION, placement, model, True)
    assert rendered.text.startswith(f"<|user|>\n{INSTRUCTION}\n\nGiven a series of navigation instructions")
    assert rendered.text.count("<|user|>") == 1 and rendered.span == (
        len("<|user|>\n"),
        len("<|user|>\n") + len(INSTRUCTION),
    )


def test_merge_keeps_later_turns():
    merged = merge_system_into_first_user_turn(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "U2"},
        ]
    )
    assert merged == [
        {"role": "user", "content": "S\n\nU1"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "U2"},
    ]
