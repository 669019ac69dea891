"""GReaTer (Das et al., ICLR 2025): token-by-token instruction search with gradients over reasoning.

One step changes one position of the instruction: candidate tokens come from the model's own
next-token distribution (top-k per example, intersected over random example subsets, unioned),
are ranked by the gradient of the answer loss taken *after the model's own reasoning* (w.r.t. a
one-hot over the candidates' embeddings only), and the best 3 are scored by regenerating the
reasoning on all train examples (criterion: error rate + 0.02 x prompt NLL). The best is taken,
the position advances, and the prompt grows with a placeholder until a sentence end is chosen.
The 10 best prompts seen are finally scored on optimize-dev by the harness.

Spec: shared/reference/greater.md. Fixed defects of the reference: see README (GReaTer).
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm.auto import tqdm
from transformers import StaticCache

from ..errors import PromptOptError
from ..harness.setup import unwrap
from ..harness.task_facts import TASK_PHRASES, answer_frame, bare_answer, gold_choice, gold_text, raw_question
from .base import OptimizationResult, Optimizer, Problem, register_optimizer

INITIAL_PROMPT = "proper logical reasoning and think step by step. Finally give the actual correct answer."
ANSWER_TEMPERATURE = 0.2  # logits / 0.2 in the answer cross-entropy
GRADIENT_FLUENCY = 0.2  # weight of the prompt NLL in the gradient loss
SELECTION_FLUENCY = 0.02  # weight of the prompt NLL in the selection criterion
CANDIDATES_SCORED = 3
MIN_CANDIDATES = 6
EXAMPLES_PER_INTERSECTION = 5
RESTART_BELOW = 0.12
TOP_KEPT = 10


@dataclass(frozen=True)
class GreaterConfig:
    steps: int = 125
    """Optimization steps (one instruction position each)."""
    topk: int = 5
    """Initial per-example top-k of the proposal (grown by 2 until 6 candidates remain)."""
    topq: int = 3
    """Random example subsets intersected per proposal; their intersections are unioned."""
    max_reasoning_tokens: int = 256
    """Cap on generated reasoning tokens (also capped by the task's max_gen_toks)."""
    extractor: str = "paper"
    """Text between the reasoning and the bare gold answer: `paper` (the paper's frame per answer
    type: "Therefore, the final answer (use exact format: ...) is $"), `task` (the task's own
    answer phrase, e.g. "So the answer is (" for BBH), or any other text, used as is."""
    proposal: str = "example"
    """`example`: propose from "{question}. Use {prompt prefix}" per example (the paper's layout);
    `rendered`: from the rendered prompt prefix (one distribution shared by all examples)."""
    batch_size: int | None = None
    """Cap on the sequences per forward/backward/generation batch; None: lm-eval's integer
    `--batch_size` where it is above 1, else none. Batches are sized to free memory below it."""

    def __post_init__(self) -> None:
        for name in ("steps", "topk", "topq", "max_reasoning_tokens", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.proposal not in ("example", "rendered"):
            raise ValueError(f"proposal must be 'example' or 'rendered', got {self.proposal!r}")


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


@dataclass
class Scored:
    criterion: float
    error: float
    nll: float
    reasoning: list[list[int]]


class Counters(dict):
    def add(self, key: str, value: float = 1) -> None:
        self[key] = self.get(key, 0) + value


MEMORY_SHARE = 0.5  # of the free memory one batch may plan for
CPU_BATCH_TOKENS = 8192
"""On CPU a batch stops paying off once its activations leave the processor's caches: 150 greedy
generations of 300 + 64 tokens on one thread took 22 s in one batch, 17 s in batches of 25."""


def free_memory(device: Any) -> int:
    """Bytes free on `device`: the CUDA allocator's view on a GPU, free physical pages on CPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rows_that_fit(model: Any, width: int, wanted: int, cap: int | None, backward: bool = False) -> int:
    """How many sequences of `width` tokens one batch takes: half the free memory over an estimate
    of the bytes per token (KV cache, one layer's activations and attention scores; every layer's
    with `backward`), on CPU at most `CPU_BATCH_TOKENS` tokens, at most `wanted` and `cap`, at least 1."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv = 2 * cfg.num_hidden_layers * getattr(cfg, "num_key_value_heads", heads) * head_dim
    layer = 8 * cfg.hidden_size + 3 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) + 2 * heads * width
    per_token = next(model.parameters()).element_size() * (kv + layer * (cfg.num_hidden_layers if backward else 1))
    device = next(model.parameters()).device
    rows = int(MEMORY_SHARE * free_memory(device) // (per_token * max(width, 1)))
    if device.type == "cpu":
        rows = min(rows, CPU_BATCH_TOKENS // max(width, 1))
    return max(1, min(rows, wanted, cap or wanted))


def hf_model(problem: Problem) -> Any:
    """The lm-eval HFLM behind the problem, or a clear error for any other model."""
    from lm_eval.models.huggingface import HFLM

    lm = problem.model
    if not isinstance(lm, HFLM) or getattr(lm, "backend", "causal") != "causal":
        raise needs_hf(type(lm).__name__)
    return lm


def needs_hf(got: str) -> PromptOptError:
    return PromptOptError(
        f"GReaTer needs gradients of a local Hugging Face causal model (--model hf); got {got}. "
        "For API or other backends use --optimize gpo."
    )


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


def ends_sentence(token_text: str) -> bool:
    return "." in token_text


def select(ranked: list[tuple[list[int], float, str]], pos: int, initial_length: int) -> list[int] | None:
    """The move among scored candidates `(ids, criterion, token text)` in gradient order: one whose
    token ends a sentence at `pos` >= half the initial length is taken at once (the period rule);
    otherwise the lowest criterion, ties to the later candidate (the reference's `<=`)."""
    best: tuple[list[int], float] | None = None
    for ids, criterion, token in ranked:
        if ends_sentence(token) and pos >= 0.5 * initial_length:
            return ids
        if best is None or criterion <= best[1]:
            best = (ids, criterion)
    return best[0] if best else None


def advance(prompt: list[int], pos: int, criterion: float, placeholder: int, last_ends_sentence: bool) -> tuple[list[int], int]:
    """The next (prompt, position): one position on; past the end, wrap to 0 if the last token
    ends a sentence, else grow the prompt by a placeholder; a criterion below 0.12 restarts at 0."""
    pos += 1
    if pos >= len(prompt):
        if last_ends_sentence:
            pos = 0
        else:
            prompt = [*prompt, placeholder]
    if criterion < RESTART_BELOW:
        pos = 0
    return prompt, pos


class Engine:
    """The model-side computations of one GReaTer run, batched and counted."""

    def __init__(self, lm: Any, config: GreaterConfig, stop: list[str], max_new: int) -> None:
        self.lm = lm
        self.model = lm.model
        self.tok = lm.tokenizer
        self.device = lm.device
        self.config = config
        self.max_new = max_new
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.eos = {i for i in [self.tok.eos_token_id, getattr(lm, "eot_token_id", None)] if i is not None}
        # the stop sequences lm-eval's generate_until uses: the task's `until` plus the EOS text
        self.until = handle_stop_sequences(list(stop), eos=lm.tok_decode(lm.eot_token_id, skip_special_tokens=False))
        self.embeddings = self.model.get_input_embeddings().weight
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        given = getattr(lm, "batch_size_per_gpu", None)  # lm-eval's --batch_size (its default is 1)
        self.cap = config.batch_size or (given if isinstance(given, int) and given > 1 else None)
        self.counters = Counters()
        self.seconds = Counters()
        """Wall seconds per phase: generation, forwards, backwards, proposal."""
        self.rows: dict[str, int] = {}
        """The largest batch (sequences) used per kind of call: generate, forward, backward."""
        self.shapes: list[int] = []
        """Context lengths of the sequences generated in this step (reset per step), and the most
        tokens one generate call made."""
        self.new_tokens = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.add(name, time.perf_counter() - started)

    def fit(self, kind: str, width: int, wanted: int, backward: bool = False) -> int:
        """Rows for the next `kind` batch of `width` tokens (recorded)."""
        rows = rows_that_fit(self.model, width, wanted, self.cap, backward)
        self.rows[kind] = max(self.rows.get(kind, 0), rows)
        return rows

    # -- forward helpers -------------------------------------------------------------------
    def _batch(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask (causal: padding after a sequence changes nothing)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _hidden(self, mask: torch.Tensor, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
        self.counters.add("forward_passes")
        self.counters.add("tokens_processed", int(mask.sum()))
        out = self.model.base_model(input_ids=ids, inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head at the given hidden states only (not at every position), in float32."""
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    # -- generation ------------------------------------------------------------------------
    def _trim(self, ids: list[int]) -> list[int]:
        """Cut at end-of-sequence and before the token that completes the first stop sequence, as
        lm-eval cuts the decoded text; the generated ids are kept as they are."""
        for i, token in enumerate(ids):
            if token in self.eos or token == self.pad:
                ids = ids[:i]
                break

        def stops(prefix: list[int]) -> bool:
            text = self.lm.tok_decode(prefix)
            return any(s and s in text for s in self.until)

        if not stops(ids):
            return ids
        low, high = 0, len(ids)  # the shortest prefix that contains a stop sequence
        while low < high:
            mid = (low + high) // 2
            if stops(ids[: mid + 1]):
                high = mid
            else:
                low = mid + 1
        return ids[:low]

    def generate(self, contexts: list[list[int]]) -> list[list[int]]:
        """Greedy reasoning for every context (see `generate_and_read`)."""
        return self.generate_and_read(contexts, None)[0]

    @torch.no_grad()
    def generate_and_read(self, contexts: list[list[int]], tails: list[list[int]] | None) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy reasoning for every context: longest first, in as few left-padded batches as
        memory allows, returned in the given order. With `tails`: per row also the hidden states
        over [the reasoning's last token (or the context's)] + tail, read off the generation's own
        KV cache (hidden j predicts tail token j)."""
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        out: list[list[int]] = [[] for _ in contexts]
        read: list[tuple[int, torch.Tensor]] = []
        start = 0
        while start < len(order):
            width = len(contexts[order[start]])
            room = width + self.max_new + (1 + max(len(tails[i]) for i in order[start:]) if tails is not None else 0)
            chunk = order[start : start + self.fit("generate", room, len(order) - start)]
            start += len(chunk)
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(contexts[i]) :] = torch.tensor(contexts[i])
                mask[row, width - len(contexts[i]) :] = 1
            with self.phase("generation"):
                result = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=self.max_new,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.pad,
                    stopping_criteria=stop_sequences_criteria(self.tok, self.until, width, len(chunk)),
                    cache=StaticCache(config=self.model.config, max_cache_len=room),  # grows by no copies
                    return_dict_in_generate=True,
                )
                generated = result.sequences[:, width:].tolist()
                for row, i in enumerate(chunk):
                    out[i] = self._trim(generated[row])
                    self.counters.add("tokens_generated", len(out[i]))
            self.counters.add("generate_calls")
            self.counters.add("generations", len(chunk))
            self.shapes += [len(contexts[i]) for i in chunk]
            self.new_tokens = max(self.new_tokens, len(generated[0]))
            if tails is not None:
                with self.phase("forwards"):
                    cached = len(generated[0]) - 1  # the last generated token was never fed
                    hidden = self._read_tails(result.cache, mask, cached, [contexts[i] for i in chunk], [out[i] for i in chunk], [tails[i] for i in chunk])
                read += [(i, h) for i, h in zip(chunk, hidden)]
        return out, [h for _, h in sorted(read, key=lambda x: x[0])]

    def _read_tails(
        self, cache: Any, mask: torch.Tensor, cached: int, contexts: list[list[int]], reasonings: list[list[int]], tails: list[list[int]]
    ) -> list[torch.Tensor]:
        """Hidden states over each row's [last token before the tail] + tail, one forward on the
        generation's cache: decoded tokens past the row's reasoning are masked out, the reasoning
        the cache lacks (its last token) is fed, and so is the last cached one, masked in the
        cache, where the cache holds the whole reasoning (its hidden state predicts the tail's first)."""
        width = mask.shape[1]
        kept = mask.new_ones((len(contexts), width + cached))
        kept[:, :width] = mask
        feeds, starts = [], []
        for row, (ctx, reasoning) in enumerate(zip(contexts, reasonings)):
            k = min(cached, len(reasoning))
            kept[row, width + k - 1 :] = 0
            feeds.append((ctx + reasoning)[len(ctx) + k - 1 :] + tails[row])
            starts.append(len(ctx) + k - 1)
        ids, new = self._batch(feeds)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(ids.shape[1], device=self.device)
        self.counters.add("forward_passes")
        self.counters.add("tokens_processed", int(new.sum()))
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=torch.cat([kept.to(self.device), new], dim=1), position_ids=positions, cache=cache
        ).last_hidden_state
        return [hidden[row, len(feed) - len(tail) - 1 : len(feed)] for row, (feed, tail) in enumerate(zip(feeds, tails))]

    # -- proposal ------------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_log_probs(self, contexts: list[list[int]]) -> torch.Tensor:
        """Log-probabilities of the token after each context (one batched prefix-only forward)."""
        rows, start = [], 0
        with self.phase("proposal"):
            while start < len(contexts):
                size = self.fit("forward", max(len(c) for c in contexts[start:]), len(contexts) - start)
                chunk, start = contexts[start : start + size], start + size
                ids, mask = self._batch(chunk)
                hidden = self._hidden(mask, ids=ids)
                last = torch.tensor([len(c) - 1 for c in chunk], device=self.device)
                rows.append(torch.log_softmax(self._logits(hidden[torch.arange(len(chunk)), last]), dim=-1).cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def prompt_nll(self, heads: list[list[int]], n: int) -> list[float]:
        """Mean NLL of the last `n` tokens of each of `heads` (prefix + instruction ids; a token at
        position 0 has no prediction and is left out); each distinct head is run once."""
        unique = list(dict.fromkeys(tuple(h) for h in heads))
        values: dict[tuple[int, ...], float] = {}
        with self.phase("forwards"):
            start = 0
            while start < len(unique):
                size = self.fit("forward", max(len(h) for h in unique[start:]), len(unique) - start)
                chunk, start = unique[start : start + size], start + size
                ids, mask = self._batch([list(h) for h in chunk])
                hidden = self._hidden(mask, ids=ids)
                for row, head in enumerate(chunk):
                    at = torch.tensor([t for t in range(len(head) - n, len(head)) if t > 0], dtype=torch.long, device=self.device)
                    if len(at):
                        log_probs = torch.log_softmax(self._logits(hidden[row, at - 1]), dim=-1)
                        values[head] = -float(log_probs.gather(1, ids[row, at][:, None]).mean())
        return [values.get(tuple(h), 0.0) for h in heads]

    # -- the loss over one batch of full sequences -----------------------------------------------
    def _sequence_terms(
        self, hidden: torch.Tensor, seqs: list[list[int]], answer_spans: list[range], prompt_spans: list[range]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per row: answer log-probs (all vocab, /T applied later), gold answer ids, prompt-token NLLs."""
        answer_logits, answer_gold, prompt_nll = [], [], []
        for row, seq in enumerate(seqs):
            ans = answer_spans[row]
            logits = self._logits(hidden[row, ans.start - 1 : ans.stop - 1])
            answer_logits.append(logits)
            answer_gold.append(torch.tensor(seq[ans.start : ans.stop], device=logits.device))
            span = [t for t in prompt_spans[row] if t > 0]
            if span:
                idx = torch.tensor(span, device=hidden.device)
                log_probs = torch.log_softmax(self._logits(hidden[row, idx - 1]), dim=-1)
                targets = torch.tensor([seq[t] for t in span], device=log_probs.device)
                prompt_nll.append(-log_probs.gather(1, targets[:, None]).mean())
            else:
                prompt_nll.append(torch.zeros((), device=hidden.device))
        return answer_logits, answer_gold, prompt_nll


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
        where = 0 if end <= span[0] and start < span[0] else 2 if start >= span[1] else 1 if span[0] <= start and end <= span[1] else -1
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


def _extractor_pieces(setting: str, frame_text: str, space: bool, written: str, family: str, sep: str) -> tuple[str, str]:
    """(extractor text, answer text) for one doc whose gold the task writes as `written`."""
    gold = bare_answer(written)
    if setting == "paper":
        return sep + frame_text, (" " if space else "") + gold
    if setting == "task":  # the task's phrase and the gold as written, the bare answer scored
        before = written[: written.find(gold)]
        phrase = TASK_PHRASES.get(family, "The answer is")
        return sep + phrase + (f" {before}" if before else ""), ("" if before else " ") + gold
    return sep + setting, " " + gold


def build_examples(
    problem: Problem, lm: Any, instruction: str, instruction_ids: list[int], extractor: str, fixed_prefix: str
) -> tuple[list[Example], str | None]:
    """Each train doc, rendered by lm-eval with `instruction` (whose ids are `instruction_ids`), as
    token pieces around it; and the extractor frame used (None for multiple choice: no reasoning)."""
    task, tok, family = problem.task, lm.tokenizer, problem.family
    docs = problem.docs("train")
    questions = [raw_question(task, doc, family) for doc in docs]
    multiple_choice = task.get_config("output_type") == "multiple_choice"
    written = [] if multiple_choice else [gold_text(problem.target(doc), family) for doc in docs]
    gemma = str(getattr(lm.model.config, "model_type", "")).startswith("gemma")
    frame = answer_frame([bare_answer(w) for w in written], questions, family, gemma)
    frame_text = None if multiple_choice else {"paper": frame.text, "task": TASK_PHRASES.get(family, "The answer is")}.get(extractor, extractor)
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
            choices, gold = gold_choice(task, doc)
            delimiter = "" if problem.chat_template else task.config.target_delimiter
            pieces = [tok.encode(delimiter + c, add_special_tokens=False) for c in choices]
            examples.append(Example(prefix, rest, proposal, [], choices=pieces, gold=gold))
            continue
        context, answer_text = _extractor_pieces(extractor, frame.text, frame.space, written[i], family, sep)
        extractor_ids, answer = split_pair(tok, context, answer_text)
        if not answer:
            raise PromptOptError(f"{problem.task_name}: the gold answer {written[i]!r} encodes to no tokens with this tokenizer")
        examples.append(Example(prefix, rest, proposal, answer, extractor_ids))
    return examples, frame_text


@register_optimizer("greater")
class Greater(Optimizer):
    """GReaTer: gradient-over-reasoning token search on the task model itself."""

    config_class = GreaterConfig
    default_instruction = f"Use {INITIAL_PROMPT}"
    fixed_prefix = "Use"

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        """Per step: a reasoning refresh and 3 scored candidates (generations), proposal and
        gradient forwards, backwards; then the initial and the top-10 prompts on dev."""
        cfg: GreaterConfig = self.config
        batches = -(-n_train // (cfg.batch_size or n_train))
        per_step = (1 + CANDIDATES_SCORED) * n_train + n_train + 2 * batches + CANDIDATES_SCORED * batches
        evals = 1 + TOP_KEPT
        return {"harness_evaluations": evals, "model_calls": cfg.steps * per_step + evals * n_dev, "optimizer_calls": 0}

    def check_model(self, model: Any) -> None:
        """Only lm-eval's Hugging Face models give gradients: refuse any other `--model` before it loads."""
        from lm_eval.api.registry import get_model
        from lm_eval.models.huggingface import HFLM

        if not isinstance(model, str):
            model_cls, name = type(unwrap(model)), type(unwrap(model)).__name__
        else:
            try:
                model_cls, name = get_model(model), f"--model {model}"
            except ValueError:
                return  # an unknown name: lm-eval's model load names it
        if not issubclass(model_cls, HFLM):
            raise needs_hf(name)

    def optimize(self, problem: Problem) -> OptimizationResult:
        started = time.perf_counter()
        prompt = self.prepare(problem)
        lm, cfg = self.lm, self.config
        rng = random.Random(f"greater:{problem.seed}:{problem.task_name}")
        params = [p for p in lm.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        lm.model.eval()
        try:
            top, history, stop_reason = self._search(problem, prompt, rng)
        finally:
            for p in params:
                p.requires_grad_(True)

        left = problem.log.evaluations_left()
        if left is not None:  # the final choice spends what is left of the budget (at least one)
            top = top[: max(1, left)]
        dev = [(problem.score(self.text(ids), "dev"), -crit, self.text(ids)) for crit, ids in top]
        best_dev, _, best = max(dev) if dev else (None, None, problem.initial_instruction)
        engine = self.engine
        peak = _peak_memory_mb(lm.device)
        return OptimizationResult(
            best,
            stop_reason,
            details={
                "proposal": cfg.proposal,
                "extractor": self.extractor,
                "initial_as_seen": self.initial_as_seen,
                "reencoding_check": "in_context" if self.in_context else "standalone",
                "top_prompts": [{"instruction": t, "train_criterion": -c, "dev_score": s} for s, c, t in sorted(dev, reverse=True)],
                "best_dev_score": best_dev,
                "steps": history,
                "counters": dict(engine.counters),
                "peak_memory_mb": peak,
                "weight_gradients": any(p.grad is not None for p in lm.model.parameters()),
                "search_seconds": round(time.perf_counter() - started, 3),
            },
        )

    def prepare(self, problem: Problem) -> list[int]:
        """Set up the model side and the train examples; return the initial prompt's token ids."""
        lm = hf_model(problem)
        cfg: GreaterConfig = self.config
        tok = lm.tokenizer
        instruction = problem.initial_instruction
        if not instruction.startswith(self.fixed_prefix):
            raise PromptOptError(
                f"greater optimizes the text after a fixed {self.fixed_prefix!r} (as in the paper); "
                f"the initial instruction must start with it, got {instruction!r}"
            )
        special = set(tok.all_special_ids)
        self.fixed = tok.encode(self.fixed_prefix, add_special_tokens=False)
        if not self.fixed or special & set(self.fixed):
            raise PromptOptError(f"greater: this tokenizer cannot write the paper's fixed {self.fixed_prefix!r} (it encodes to {tok.convert_ids_to_tokens(self.fixed)})")
        whole = tok.encode(instruction, add_special_tokens=False)
        tail = whole[len(self.fixed) :] if whole[: len(self.fixed)] == self.fixed else tok.encode(instruction[len(self.fixed_prefix) :], add_special_tokens=False)
        prompt = [t for t in tail if t not in special]  # e.g. <unk>: no text can stand for it
        if not prompt:
            raise PromptOptError(f"greater needs an initial instruction with words after 'Use' that the tokenizer can represent, got {instruction!r}")
        gen_kwargs = problem.generation_kwargs
        until = gen_kwargs.get("until") or []
        stop = [until] if isinstance(until, str) else list(until)
        max_new = min(cfg.max_reasoning_tokens, int(gen_kwargs.get("max_gen_toks", cfg.max_reasoning_tokens)))
        self.engine, self.tok, self.lm, self.problem = Engine(lm, cfg, stop, max_new), tok, lm, problem
        self.multiple_choice = problem.output_type == "multiple_choice"
        start = self.text(prompt)
        self.initial_as_seen = None if start == instruction else start
        if self.initial_as_seen is not None:
            print(f"lm_eval_promptopt: {problem.task_name}: the tokenizer does not round-trip the initial instruction; the search starts from, and the harness sees, {start!r}")
        docs = problem.docs("train")
        if not docs:
            raise PromptOptError(f"{problem.task_name}: greater needs at least one optimize-train doc (train_size >= 1)")
        self.first_doc = docs[0]
        prompt = self._ids_in_context(start, prompt)
        self.examples, self.extractor = build_examples(problem, lm, start, self.fixed + prompt, cfg.extractor, self.fixed_prefix)
        self.in_context = True
        if not self.reencodes(prompt):
            self.in_context = False
            print(
                f"lm_eval_promptopt: {problem.task_name}: the initial instruction tokenises differently inside the rendered prompt "
                "(it merges with the text around it); candidates are checked for re-encoding on their own instead"
            )
        self.allowed = allowed_token_mask(tok, self.engine.embeddings.shape[0])
        self.placeholder = placeholder_token(tok)
        return prompt

    def _ids_in_context(self, start: str, prompt: list[int]) -> list[int]:
        """The initial prompt's ids as they tokenise inside the rendered prompt (a SentencePiece
        tokenizer writes "Use" at the start of a line without its word-start mark); `self.fixed`
        becomes the in-context ids of "Use". Where they cannot be told apart: the ids as given."""
        rendered = self.problem.render(self.first_doc, start)
        pieces = None if rendered.span is None else pieces_in_context(self.lm, rendered.text, rendered.span)
        if pieces is None or self.tok.decode(pieces[1], skip_special_tokens=True) != start:
            return prompt
        ids, fixed = pieces[1], self.tok.decode(self.fixed, skip_special_tokens=True).strip()
        for j in range(1, len(ids)):
            if self.tok.decode(ids[:j], skip_special_tokens=True).strip() == fixed:
                self.fixed = ids[:j]
                return ids[j:]
        return prompt

    # -- state helpers ---------------------------------------------------------------------
    def text(self, prompt: list[int]) -> str:
        """The instruction the harness gets for `prompt` (never the text of a special token)."""
        return self.tok.decode(self.fixed + prompt, skip_special_tokens=True)

    def reencodes(self, prompt: list[int]) -> bool:
        """Whether the text of `prompt`, rendered by lm-eval into the first train doc's prompt and
        encoded, gives exactly the ids the search uses (on its own where the initial one fails that)."""
        text = self.text(prompt)
        if not self.in_context:
            return self.tok.encode(text, add_special_tokens=False) == self.fixed + prompt
        rendered = self.problem.render(self.first_doc, text)
        ex = self.examples[0]
        return rendered.span is not None and self.lm.tok_encode(rendered.text) == ex.prefix + self.fixed + prompt + ex.rest

    def contexts(self, prompt: list[int]) -> list[list[int]]:
        return [ex.prefix + self.fixed + prompt + ex.rest for ex in self.examples]

    # -- the loop --------------------------------------------------------------------------
    def _search(self, problem: Problem, prompt: list[int], rng: random.Random) -> tuple[list, list, str]:
        cfg: GreaterConfig = self.config
        control = problem.log
        memo: dict[tuple[int, ...], Scored] = {}

        def remember(ids: list[int], scored: Scored) -> None:  # memoized, and journaled for a resume
            memo[tuple(ids)] = scored
            control.log({"ids": ids, **asdict(scored)})

        state: dict[str, Any] = {"step": 0, "prompt": prompt, "pos": 0, "top": [], "history": [], "skipped": 0}
        initial_length = len(prompt)
        if control.resumed:  # continue after the interrupted run's last completed step
            state = dict(control.resumed)
            version, internal, gauss = state.pop("rng")
            rng.setstate((version, tuple(internal), gauss))
            initial_length = state["initial_length"]
            self.engine.counters.update(state["counters"])
            for e in control.journal():
                memo[tuple(e["ids"])] = Scored(e["criterion"], e["error"], e["nll"], e["reasoning"])
        prompt, pos, skipped = list(state["prompt"]), state["pos"], state["skipped"]
        top = [(c, list(ids)) for c, ids in state["top"]]
        history = list(state["history"])
        reasoning, reasoning_for = (memo[tuple(prompt)].reasoning, list(prompt)) if tuple(prompt) in memo else (None, None)
        stop_reason = "steps"
        steps = tqdm(range(state["step"], cfg.steps), desc=f"greater {problem.task_name}", unit="step", leave=False)
        for step in steps:
            step_start, before, seconds_before = time.perf_counter(), dict(self.engine.counters), dict(self.engine.seconds)
            self.engine.rows, self.engine.shapes, self.engine.new_tokens = {}, [], 0
            if reasoning_for != prompt:
                reasoning = self.reasoning(prompt)
                reasoning_for = list(prompt)
            candidates = self.propose(prompt, pos, rng)
            gradient = self.gradient(prompt, pos, candidates, reasoning)
            order = [candidates[i] for i in torch.argsort(gradient).tolist()]
            chosen_ids = []
            for token in order:
                new = prompt[:pos] + [token] + prompt[pos + 1 :]
                if not self.reencodes(new):
                    skipped += 1
                    continue
                chosen_ids.append(new)
                if ends_sentence(self.tok.decode([token])) and pos >= 0.5 * initial_length:
                    chosen_ids = [new]  # the period rule takes it whatever the others score: score it alone
                    break
                if len(chosen_ids) == CANDIDATES_SCORED:
                    break
            todo = [ids for ids in chosen_ids if tuple(ids) not in memo]
            for ids, scored in zip(todo, self.score(todo)):
                remember(ids, scored)
            ranked = [(ids, memo[tuple(ids)].criterion, self.tok.decode([ids[pos]])) for ids in chosen_ids]
            best = select(ranked, pos, initial_length)
            if best is None:  # every candidate failed the re-encoding check: keep the prompt
                best = list(prompt)
                if tuple(best) not in memo:
                    remember(best, self.score([best])[0])
            scored = memo[tuple(best)]
            entry = {
                "step": step,
                "position": pos,
                "candidates": [self.tok.decode([t]) for t in candidates],
                "scored": {self.text(ids): round(c, 6) for ids, c, _ in ranked},
                "ranked": [{"instruction": self.text(ids), "token": t, "criterion": c} for ids, c, t in ranked],
                "chosen": self.text(best),
                "criterion": scored.criterion,
                "train_error": scored.error,
                "prompt_nll": scored.nll,
                "seconds": round(time.perf_counter() - step_start, 3),
                "counters": {k: v - before.get(k, 0) for k, v in self.engine.counters.items()},
                "phase_seconds": {k: round(v - seconds_before.get(k, 0), 3) for k, v in self.engine.seconds.items()},
                "batch_rows": dict(self.engine.rows),
                "regeneration_shapes": {"context_lengths": sorted(self.engine.shapes), "new_tokens": self.engine.new_tokens},
            }
            history.append(entry)
            problem.record({"kind": "greater_step", **entry})
            prompt, reasoning, reasoning_for = list(best), scored.reasoning, list(best)
            if all(ids != prompt for _, ids in top):
                top = sorted([*top, (scored.criterion, list(prompt))], key=lambda x: x[0])[:TOP_KEPT]
            prompt, pos = advance(prompt, pos, scored.criterion, self.placeholder, ends_sentence(self.tok.decode([prompt[-1]])))
            state = {
                "step": step + 1,
                "prompt": prompt,
                "pos": pos,
                "top": top,
                "history": history,
                "skipped": skipped,
                "initial_length": initial_length,
                "counters": dict(self.engine.counters),
                "rng": rng.getstate(),
            }
            stop = control.step_done(-scored.criterion, state)
            if stop and step + 1 < cfg.steps:
                stop_reason = stop
                break
        if skipped:
            history.append({"reencoding_skips": skipped})
        return top, history, stop_reason

    def reasoning(self, prompt: list[int]) -> list[list[int]]:
        if self.multiple_choice:
            return [[] for _ in self.examples]
        return self.engine.generate(self.contexts(prompt))

    def propose(self, prompt: list[int], pos: int, rng: random.Random) -> list[int]:
        """Candidate tokens for `pos`: per-example top-k, intersected over subsets, unioned; k grows."""
        cfg: GreaterConfig = self.config
        if cfg.proposal == "example":
            contexts = [ex.question + prompt[:pos] for ex in self.examples]
        else:
            ex = self.examples[0]
            contexts = [ex.prefix + self.fixed + prompt[:pos]]
        log_probs = self.engine.next_token_log_probs(contexts)
        mask = self.allowed[: log_probs.shape[1]].clone()
        mask[prompt[pos - 1]] = False  # no immediate repeat (pos 0: the last token, as in the reference)
        log_probs = log_probs.masked_fill(~mask, float("-inf"))
        limit = int(mask.sum())
        k = min(cfg.topk, limit)
        size = min(EXAMPLES_PER_INTERSECTION, len(contexts))
        draws = [rng.sample(range(len(contexts)), size) for _ in range(cfg.topq)]
        while True:
            top_sets = [set(row.tolist()) for row in torch.topk(log_probs, k, dim=1).indices]
            union: set[int] = set()
            for draw in draws:
                union |= set.intersection(*(top_sets[i] for i in draw))
            if len(union) >= MIN_CANDIDATES or k >= limit:
                break
            k = min(k + 2, limit)
        if prompt[pos] not in union:
            union.add(prompt[pos])
        return sorted(union)

    def _rows(self, prompt: list[int], reasoning: list[list[int]]) -> tuple[list[list[int]], list[range], list[range], list[int]]:
        """Full sequences, answer spans, prompt spans, and the example each row belongs to."""
        seqs, answers, prompts, owner = [], [], [], []
        for i, ex in enumerate(self.examples):
            head = ex.prefix + self.fixed + prompt + ex.rest + reasoning[i] + ex.extractor
            start = len(ex.prefix) + len(self.fixed)
            for piece in ex.choices if self.multiple_choice else [ex.answer]:
                seqs.append(head + piece)
                answers.append(range(len(head), len(head) + len(piece)))
                prompts.append(range(start, start + len(prompt)))
                owner.append(i)
        return seqs, answers, prompts, owner

    def _losses(self, hidden, seqs, answers, prompts, owner, batch_examples) -> tuple[list[torch.Tensor], list[float], list[torch.Tensor]]:
        """Per example: answer loss (CE with logits/T), error (0/1), prompt NLL."""
        logits, gold, nll = self.engine._sequence_terms(hidden, seqs, answers, prompts)
        losses, errors, nlls = [], [], []
        for i in batch_examples:
            rows = [r for r, o in enumerate(owner) if o == i]
            if self.multiple_choice:
                ll = torch.stack(
                    [torch.log_softmax(logits[r], dim=-1).gather(1, gold[r][:, None]).sum() for r in rows]
                )
                target = torch.tensor(self.examples[i].gold, device=ll.device)
                losses.append(torch.nn.functional.cross_entropy((ll / ANSWER_TEMPERATURE)[None], target[None]))
                errors.append(float(int(ll.argmax()) != self.examples[i].gold))
            else:
                (r,) = rows
                losses.append(torch.nn.functional.cross_entropy(logits[r] / ANSWER_TEMPERATURE, gold[r]))
                errors.append(float(bool((logits[r].argmax(-1) != gold[r]).any())))
            nlls.append(nll[rows[0]])
        return losses, errors, nlls

    def _example_batches(self, seqs: list[list[int]], backward: bool) -> list[list[int]]:
        """Examples per forward (all choices of one example together), as many as memory allows."""
        per = len(self.examples[0].choices) if self.multiple_choice else 1
        width = max(len(q) for q in seqs)
        rows = self.engine.fit("backward" if backward else "forward", width, len(seqs), backward)
        size = max(1, rows // per)
        return [list(range(s, min(s + size, len(self.examples)))) for s in range(0, len(self.examples), size)]

    def gradient(self, prompt: list[int], pos: int, candidates: list[int], reasoning: list[list[int]]) -> torch.Tensor:
        """d loss / d one-hot over the candidates at `pos`, summed over examples, L2-normalised."""
        engine = self.engine
        weight = engine.embeddings
        # the one-hot, the loss and the gradient stay in float32 whatever the model's dtype
        one_hot = torch.zeros(len(candidates), dtype=torch.float32, device=weight.device)
        one_hot[candidates.index(prompt[pos])] = 1.0
        one_hot.requires_grad_(True)
        rows_c = weight[candidates].detach().float()
        seqs, answers, prompts, owner = self._rows(prompt, reasoning)
        for batch in self._example_batches(seqs, backward=True):
            rows = [r for r, o in enumerate(owner) if o in batch]
            with engine.phase("forwards"):
                ids, mask = engine._batch([seqs[r] for r in rows])
                embeds = weight[ids].detach().clone()
                slot = (one_hot @ rows_c).to(weight.dtype)
                for j, r in enumerate(rows):
                    embeds[j, len(self.examples[owner[r]].prefix) + len(self.fixed) + pos] = slot
                hidden = engine._hidden(mask, embeds=embeds)
                sub = [seqs[r] for r in rows], [answers[r] for r in rows], [prompts[r] for r in rows], [owner[r] for r in rows]
                losses, _, nlls = self._losses(hidden, *sub, batch)
                total = sum(loss + GRADIENT_FLUENCY * n for loss, n in zip(losses, nlls))
            with engine.phase("backwards"):
                total.backward()
            engine.counters.add("backward_passes")
        grad = one_hot.grad.detach().float()
        return grad / grad.norm().clamp_min(1e-12)

    @torch.no_grad()
    def score(self, prompts: list[list[int]]) -> list[Scored]:
        """Selection criterion per prompt: regenerate reasoning (all prompts x examples, batched), score."""
        if not prompts:
            return []
        if self.multiple_choice:
            return [self._score_choices(prompt) for prompt in prompts]
        n, engine = len(self.examples), self.engine
        tails = [ex.extractor + ex.answer for _ in prompts for ex in self.examples]
        flat, hidden = engine.generate_and_read([c for p in prompts for c in self.contexts(p)], tails)
        results = []
        for k, prompt in enumerate(prompts):
            errors = []
            with engine.phase("forwards"):
                for i, ex in enumerate(self.examples):
                    logits = engine._logits(hidden[k * n + i][len(ex.extractor) : len(ex.extractor) + len(ex.answer)])
                    errors.append(float(logits.argmax(-1).tolist() != ex.answer))
            nlls = engine.prompt_nll([ex.prefix + self.fixed + prompt for ex in self.examples], len(prompt))
            error, nll = sum(errors) / n, sum(nlls) / n
            results.append(Scored(error + SELECTION_FLUENCY * nll, error, nll, flat[k * n : (k + 1) * n]))
        return results

    def _score_choices(self, prompt: list[int]) -> Scored:
        """Multiple choice: error and prompt NLL from full forwards over every choice."""
        seqs, answers, spans, owner = self._rows(prompt, [[] for _ in self.examples])
        errors, nlls = [], []
        with self.engine.phase("forwards"):
            for batch in self._example_batches(seqs, backward=False):
                rows = [r for r, o in enumerate(owner) if o in batch]
                ids, mask = self.engine._batch([seqs[r] for r in rows])
                hidden = self.engine._hidden(mask, ids=ids)
                sub = [seqs[r] for r in rows], [answers[r] for r in rows], [spans[r] for r in rows], [owner[r] for r in rows]
                _, batch_errors, batch_nlls = self._losses(hidden, *sub, batch)
                errors += batch_errors
                nlls += [float(n) for n in batch_nlls]
        error, nll = sum(errors) / len(errors), sum(nlls) / len(nlls)
        return Scored(error + SELECTION_FLUENCY * nll, error, nll, [[] for _ in self.examples])


def _peak_memory_mb(device: Any) -> float:
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS (Linux: KiB)
