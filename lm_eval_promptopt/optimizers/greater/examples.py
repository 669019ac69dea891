"""The train docs as GReaTer's token pieces, and the tokens a search may write.

Each doc is rendered by lm-eval with the instruction and kept as ids around it (`prefix`, the
instruction, `rest`): the doc's own ids where lm-eval's encoding of the whole prompt splits
cleanly at the instruction's characters, else the two sides encoded apart. After the model's
reasoning come the extractor and the bare gold answer (task_facts: the paper's frame, the task's
phrase, or a given text); the answer's ids are those it takes after the extractor where the joint
encoding extends the extractor's, else it is encoded alone; only they enter CE and error. A
multiple-choice doc has no reasoning: its choices after the task's target delimiter are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import PromptOptError
from ...harness.task_facts import answer_frame, bare_answer, extractor_pieces, extractor_text, gold_text
from ..base import Problem


@dataclass
class Example:
    """One train doc as token ids around the instruction, plus what is scored after the reasoning."""

    prefix: list[int]
    rest: list[int]
    question: list[int]
    """The proposal context: "{raw question}. Use" (the paper's layout, §3.2 b)."""
    answer: list[int]
    """Gold answer ids: the only tokens in the loss and the error (generative tasks)."""
    extractor: list[int] = field(default_factory=list)
    """Answer-extraction ids between the reasoning and the answer: context, not scored."""
    choices: list[list[int]] | None = None
    gold: int | None = None


def pieces_in_context(lm: Any, text: str, span: tuple[int, int]) -> tuple[list[int], list[int], list[int]] | None:
    """(before, instruction, after): the ids of `text` as lm-eval encodes it whole, split at the
    instruction's character `span`; None where a token straddles an edge of the span."""
    ids = lm.tok_encode(text)
    encoded = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    plain, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    extra = len(ids) - len(plain)
    if extra < 0 or ids[extra:] != plain:
        return None
    parts: tuple[list[int], list[int], list[int]] = (list(ids[:extra]), [], [])
    part = 0
    for token, (start, end) in zip(plain, offsets):
        where = (
            0
            if end <= span[0] and start < span[0]
            else 2
            if start >= span[1]
            else 1
            if span[0] <= start and end <= span[1]
            else -1
        )
        if where < part:  # straddles an edge, or out of order
            return None
        part = where
        parts[part].append(token)
    return parts


def split_pair(tok: Any, context: str, answer: str) -> tuple[list[int], list[int]]:
    """Ids of `context` and of `answer` after it: the answer's ids as they tokenise after the
    context where the joint encoding extends the context's, else the answer encoded alone."""
    head = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + answer, add_special_tokens=False)
    if whole[: len(head)] == head and len(whole) > len(head):
        return head, whole[len(head) :]
    return head, tok.encode(answer, add_special_tokens=False)


def build_examples(
    problem: Problem, lm: Any, instruction: str, instruction_ids: list[int], extractor: str, fixed_prefix: str
) -> tuple[list[Example], str | None]:
    """Each train doc, rendered by lm-eval with `instruction` (whose ids are `instruction_ids`), as
    token pieces around it; and the extractor used (None for multiple choice: no reasoning)."""
    tok, family = lm.tokenizer, problem.family
    docs = problem.docs("train")
    questions = [problem.question(doc) for doc in docs]
    multiple_choice = problem.output_type == "multiple_choice"
    written = [] if multiple_choice else [gold_text(problem.target(doc), family) for doc in docs]
    gemma = str(getattr(lm.model.config, "model_type", "")).startswith("gemma")
    frame = answer_frame([bare_answer(w) for w in written], questions, family, gemma)
    sep = "" if gemma else " "  # Gemma-2 runs put no space between the reasoning and the extractor
    examples = []
    for i, doc in enumerate(docs):
        rendered = problem.render(doc, instruction)
        if rendered.span is None:
            raise PromptOptError(f"{problem.task_name}: could not locate the instruction in the rendered prompt")
        pieces = pieces_in_context(lm, rendered.text, rendered.span)
        if pieces is not None and pieces[1] == instruction_ids:  # the doc's own ids around the instruction
            prefix, _, rest = pieces
        else:
            prefix = lm.tok_encode(rendered.text[: rendered.span[0]])
            rest = tok.encode(rendered.text[rendered.span[1] :], add_special_tokens=False)
        proposal = lm.tok_encode(f"{questions[i]}. {fixed_prefix}")
        if multiple_choice:
            choices, gold = problem.choices(doc)
            delimiter = "" if problem.chat_template else problem.target_delimiter
            ids = [tok.encode(delimiter + c, add_special_tokens=False) for c in choices]
            examples.append(Example(prefix, rest, proposal, [], choices=ids, gold=gold))
            continue
        context, answer_text = extractor_pieces(extractor, frame, written[i], family, sep)
        extractor_ids, answer = split_pair(tok, context, answer_text)
        if not answer:
            raise PromptOptError(
                f"{problem.task_name}: the gold answer {written[i]!r} encodes to no tokens with this tokenizer"
            )
        examples.append(Example(prefix, rest, proposal, answer, extractor_ids))
    return examples, None if multiple_choice else extractor_text(extractor, frame, family)


def allowed_token_mask(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Tokens whose text is letters and spaces only, or exactly '.', ',' or ' '; no special tokens."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token_id in range(min(vocab_size, len(tokenizer))):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text in (".", ",", " ") or (text.strip() and all(c.isalpha() or c == " " for c in text)):
            mask[token_id] = True
    return mask


def placeholder_token(tok: Any) -> int:
    """The token appended to grow the prompt: "_" as the tokenizer writes it, else any plain word."""
    special = set(tok.all_special_ids)
    for text in (" _", "_", " the", "the"):
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in special:
            return ids[0]
    raise PromptOptError("greater: the tokenizer has no plain token to grow the prompt with ('_' or 'the')")
