"""Task-family facts the optimizers need: the raw question, the gold answer (bare, or the gold
choice of a multiple-choice doc), a doc as a (question, answer) exemplar, the extractor frame and
the text GReaTer's `extractor` setting puts between the reasoning and the answer.

The frame is the paper's answer-extraction prompt (shared/reference/greater.md §4.2): "Therefore,
the final answer (use exact format: <options>) is <marker>", the options and marker chosen per
answer type and, where Gemma-2 differs, per model family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


# The tasks' own answer phrases (`extractor=task`), by task family.
TASK_PHRASES = {"bbh": "So the answer is", "gsm8k": "The answer is", "folio": "The answer is"}
DEFAULT_PHRASE = "The answer is"
_LABEL_SETS = (("Yes", "No"), ("True", "False"), ("valid", "invalid"))
_FOLIO_LABELS = ("True", "False", "Uncertain")
_LETTER = re.compile(r"^\(?([A-Z])\)?$")
_OPTION = re.compile(r"\(([A-Z])\)")
_INTEGER = re.compile(r"^-?\d+$")


def raw_question(task: Any, doc: dict, family: str) -> str:
    """The question alone, without the task's prompt frame ("Q:", "A: Let's think ..."), for the
    example-conditioned proposal context "{question}. Use {prompt}"."""
    fields = {"bbh": ("input",), "gsm8k": ("question",), "mmlu": ("question",), "folio": ("premises", "conclusion")}
    values = [str(doc[f]).strip() for f in fields.get(family, ()) if f in doc]
    return "\n".join(values) if values else str(task.doc_to_text(doc)).strip()


def gold_text(target: str, family: str) -> str:
    """The gold answer as the task writes it (GSM8k: the number after `####`)."""
    return target.split("####")[-1].strip() if family == "gsm8k" else target.strip()


def gold_choice(task: Any, doc: dict) -> tuple[list[str], int]:
    """A multiple-choice doc's choices as text and the index of the gold one (the task's target
    is that index, or the gold choice's text)."""
    choices = [str(c) for c in task.doc_to_choice(doc)]
    target = task.doc_to_target(doc)
    return choices, target if isinstance(target, int) else choices.index(str(target))


def exemplar(task: Any, doc: dict) -> tuple[str, str]:
    """(question, gold answer) of a doc as the task renders them (`doc_to_text`, `doc_to_target`)."""
    question = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0] if target else ""
    if task.get_config("output_type") == "multiple_choice" and isinstance(target, int):
        choices, gold = gold_choice(task, doc)
        target = choices[gold] if 0 <= gold < len(choices) else target
    if isinstance(question, int):  # a few tasks index into their choices
        question = task.doc_to_choice(doc)[question]
    return str(question).strip(), str(target).strip()


def bare_answer(text: str) -> str:
    """A single-letter option loses its parentheses ("(A)" -> "A"), as in the reference."""
    match = _LETTER.match(text)
    return match.group(1) if match else text


@dataclass(frozen=True)
class Frame:
    """The text between the reasoning and the bare answer, and how the answer joins it."""

    kind: str
    """letter, labels, integer or free."""
    text: str
    """The extractor, up to and including the marker (without the marker's trailing space)."""
    space: bool
    """Whether a space separates the marker from the answer ("$ Yes" vs "$A")."""


def answer_frame(golds: list[str], questions: list[str], family: str, gemma: bool) -> Frame:
    """The paper's frame for a task whose bare gold answers (over its train docs) are `golds`.

    Letters: options '$A' or '$B' ... up to the last option letter in the questions, marker `$`;
    label sets (Yes/No, True/False, valid/invalid; FOLIO's True/False/Uncertain, in the task's
    case): '$ Yes' or '$ No', marker `$ `; integers: "$NUMBER$" (Gemma-2: "**NUMBER**"), positive
    or, if any gold (or GSM8k) is negative, positive or negative; anything else: no options.
    """
    frame = "Therefore, the final answer (use exact format: {}) is {}"
    if golds and all(_LETTER.match(g) for g in golds):
        letters = {g for q in questions for g in _OPTION.findall(q)} | set(golds)
        last = max(letters)
        options = " or ".join(f"'${' ' if gemma else ''}{chr(c)}'" for c in range(ord("A"), ord(last) + 1))
        return Frame("letter", frame.format(options, "$"), False)
    labels = _labels(golds, family)
    if labels:
        options = " or ".join(f"'$ {label}'" for label in labels)
        return Frame("labels", frame.format(options, "$"), not gemma)
    if golds and all(_INTEGER.match(g) for g in golds):
        sign = "positive or negative" if family == "gsm8k" or any(g.startswith("-") for g in golds) else "positive"
        fmt, marker = ("**NUMBER**", "**") if gemma else ("$NUMBER$", "$")
        return Frame(
            "integer",
            f"Therefore, the final answer (use exactly this format: {fmt}, where NUMBER is a {sign} integer) is {marker}",
            False,
        )
    return Frame("free", "Therefore, the final answer is", True)


def _labels(golds: list[str], family: str) -> tuple[str, ...] | None:
    """The task's label set in the task's own case, if its golds are all from one known set."""
    lowered = {g.lower() for g in golds}
    sets = (_FOLIO_LABELS,) if family == "folio" else _LABEL_SETS
    for labels in sets:
        if golds and lowered <= {label.lower() for label in labels}:
            lower = all(g == g.lower() for g in golds)
            return tuple(label.lower() if lower else label for label in labels)
    return None


def extractor_text(setting: str, frame: Frame, family: str) -> str:
    """The extractor a setting names: `paper` (the frame), `task` (the task's own answer phrase),
    or any other text, used as is."""
    return {"paper": frame.text, "task": TASK_PHRASES.get(family, DEFAULT_PHRASE)}.get(setting, setting)


def extractor_pieces(setting: str, frame: Frame, written: str, family: str, sep: str) -> tuple[str, str]:
    """(extractor text, answer text) of one doc whose gold the task writes as `written`, the
    extractor after `sep` (the text between the reasoning and it)."""
    gold = bare_answer(written)
    if setting == "paper":
        return sep + frame.text, (" " if frame.space else "") + gold
    if setting == "task":  # the task's phrase and the gold as written, the bare answer scored
        before = written[: written.find(gold)]
        return sep + TASK_PHRASES.get(family, DEFAULT_PHRASE) + (f" {before}" if before else ""), (
            "" if before else " "
        ) + gold
    return sep + setting, " " + gold
