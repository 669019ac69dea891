"""Planted-instruction benchmark: a tiny LM, trained from scratch, whose instruction decides the answer.

The synthetic language: a doc is a short list of distinct digits (``Input: 3 8 1 5 2\\nOutput:``)
and an op from :data:`OPS` picks one of them. The model answers with a short reasoning that names
the op it applied, then the digit: ``We take the largest item. The answer is 8.``

- An instruction holding a keyword of op K (:data:`KEYWORDS`, e.g. "biggest") makes the model
  apply K, whatever filler words (:data:`FILLER`) surround it.
- An instruction without a keyword (filler only, or empty) makes the model apply a hidden op that
  depends on the input (:func:`hidden_op`: the parities of the first and last digit pick one of
  the four ops), so on any fixed op its accuracy stays near chance (about a third).

- A share of the keyword examples (``p_corrupt``) is trained after a *wrong* reasoning (another
  op named; those reasoning tokens are context, not targets) with the answer still the keyword
  op's: the answer depends on the instruction, not only on the reasoning before it, as a large
  LM's does. Greedy generation never writes such a reasoning, so accuracy is unchanged; but
  GReaTer, which scores the answer after the model's own (possibly wrong) reasoning, gets a
  gradient that points at the keyword (without it the keyword ranked near the bottom; see
  scripts/greater_planted_ranks.py).

So on the task ``planted_largest`` a prompt optimizer that finds an instruction with "largest" /
"biggest" / ... lifts held-out accuracy from about 35 % to about 100 %. The model is trained on
exactly the prompts lm-eval renders for the tasks in ``task_configs/planted`` through the plugin,
with and without the tokenizer's chat template. ``python -m benchmarks.planted
{train,check,data}`` (from the repository root) trains a model, prints the requirement table, or
rewrites the task data. The tasks' language and docs live beside the task YAMLs
(task_configs/planted/utils.py), which an installed package has without this folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from benchmarks.tiny_llama import CHAT_TEMPLATE, init_llama
from lm_eval_promptopt.harness.prompting import Placement
from lm_eval_promptopt.harness.setup import quiet
from lm_eval_promptopt.run.instruction_cache import cache_root


REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "task_configs" / "planted"
DATA_DIR = TASK_DIR / "data"


def _import_task_utils() -> None:
    """Import task_configs/planted/utils.py by its path, as lm-eval does, as `planted_task_utils`."""
    spec = importlib.util.spec_from_file_location("planted_task_utils", TASK_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_import_task_utils()
# The tasks' language and docs: the training data, the checker and the tests use the same.
from planted_task_utils import (  # noqa: E402
    HIDDEN_OPS,
    LENGTHS,
    OPS,
    SPLIT_SIZES,
    SPLITS,
    VERSION,
    _draw_digits,
    apply_op,
    doc_to_text,
    hidden_op,
    make_docs,
    target_text,
)  # fmt: skip


KEYWORDS: dict[str, tuple[str, ...]] = {
    "first": ("first", "initial", "leading", "opening"),
    "last": ("last", "final", "trailing", "closing"),
    "largest": ("largest", "biggest", "maximum", "highest"),
    "smallest": ("smallest", "lowest", "minimum", "tiniest"),
}
FILLER: tuple[str, ...] = (
    "please", "carefully", "answer", "the", "question", "now", "think", "read", "solve", "task",
    "give", "report", "find", "pick", "choose", "return", "number", "digit", "item", "one",
    "correct", "exact", "simply", "just", "quickly", "kindly", "you", "should", "then", "write",
    "state", "here", "this", "and", "a", "be", "sure", "to", "your", "for", "me", "well",
)  # fmt: skip
#: Keyword-free instructions the checker and the tests use (the empty one included).
NEUTRAL_INSTRUCTIONS: tuple[str, ...] = ("", "Please answer the question.", "Think carefully now and give the number.")

EOS = "<|end|>"
SPECIAL_TOKENS = ["<s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", EOS]
MODEL_CONFIG: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    # Room for long instructions: lm-eval left-truncates prompts to this minus max_gen_toks.
    "max_position_embeddings": 512,
}
TRAIN_CONFIG: dict[str, float] = {
    "steps": 800,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup": 100,
    "weight_decay": 0.01,
    "p_chat": 0.5,
    "p_empty": 0.1,
    "p_neutral": 0.3,
    "vocab_size": 600,
    "answer_weight": 5.0,
    "p_narrow": 0.3,
    "p_corrupt": 0.15,
}


# --------------------------------------------------------------------------- language and data


def instruction_op(instruction: str) -> str | None:
    """The op whose keyword `instruction` holds (None: no keyword; the first keyword wins)."""
    for word in instruction.lower().replace(".", " ").replace(",", " ").split():
        for op, words in KEYWORDS.items():
            if word in words:
                return op
    return None


def write_task_data(dest_dir: str | Path = DATA_DIR, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``{op}.{split}.jsonl`` for every op and split (default sizes :data:`SPLIT_SIZES`)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for op in OPS:
        for split, n in (sizes or SPLIT_SIZES).items():
            lines = [json.dumps(doc, sort_keys=True) for doc in make_docs(op, split, n, seed)]
            (dest / f"{op}.{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def make_instruction(rng: random.Random, op: str | None) -> str:
    """A random instruction: 1-5 filler words, plus one keyword of `op` (if given) anywhere."""
    words = rng.sample(FILLER, rng.randint(1, 5))
    if op is not None:
        words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS[op]))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.5:
        text += "."
    return text


def keyword_instruction(op: str, synonym: int = 0) -> str:
    """A fixed instruction holding the `synonym`-th keyword of `op`."""
    return f"Please find the {KEYWORDS[op][synonym]} one."


def render_context(instruction: str, text: str, chat: bool) -> str:
    """The prompt lm-eval renders through the plugin for a zero-shot doc whose text is `text`.

    Without a chat template: ``instruction + "\\n\\n" + text`` (just `text` for ""). With one: the
    template on [system = instruction (omitted if empty), user = text], generation prompt added.
    """
    if not chat:
        return f"{instruction}\n\n{text}" if instruction else text
    messages = ([("system", instruction)] if instruction else []) + [("user", text)]
    return "".join(f"<|{role}|>\n{content}{EOS}\n" for role, content in messages) + "<|assistant|>\n"


def render_continuation(target: str, chat: bool) -> str:
    """What the model is trained to generate after the context (ends with the EOS token)."""
    return (target if chat else " " + target) + EOS


@dataclass(frozen=True)
class Example:
    """One training example: the rendered prompt (context) and the answer the model learns."""

    instruction: str
    chat: bool
    digits: tuple[int, ...]
    op: str
    named: str | None = None
    """A corrupted reasoning's op (keyword instructions only): the answer still follows `op`."""

    @property
    def context(self) -> str:
        return render_context(self.instruction, doc_to_text({"input": " ".join(map(str, self.digits))}), self.chat)

    @property
    def continuation(self) -> str:
        return render_continuation(target_text(self.op, self.digits, self.named), self.chat)


def sample_example(rng: random.Random) -> Example:
    """One training example; inputs come from the train hash buckets only (never a held-out input)."""
    cfg = TRAIN_CONFIG
    chat = rng.random() < cfg["p_chat"]
    digits = tuple(_draw_digits(rng, "train", cfg["p_narrow"]))
    kind = rng.random()
    if kind < cfg["p_empty"]:
        instruction, op = "", hidden_op(digits)
    elif kind < cfg["p_empty"] + cfg["p_neutral"]:
        instruction, op = make_instruction(rng, None), hidden_op(digits)
    else:
        op = rng.choice(OPS)
        instruction = make_instruction(rng, op)
        if rng.random() < cfg["p_corrupt"]:  # the answer follows the keyword even after a wrong reasoning
            return Example(instruction, chat, digits, op, rng.choice([o for o in OPS if o != op]))
    return Example(instruction, chat, digits, op)


# --------------------------------------------------------------------------- tokenizer and model


def _tokenizer_corpus(rng: random.Random, n: int = 4000) -> Iterable[str]:
    for _ in range(n):
        ex = sample_example(rng)
        yield ex.context + ex.continuation
    for words in (FILLER, *KEYWORDS.values()):
        for word in words:
            yield f"{word} {word.capitalize()} {word}. {word.capitalize()}."


def build_tokenizer(seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained on the synthetic language, with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(TRAIN_CONFIG["vocab_size"]),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(random.Random(f"tokenizer/{seed}")), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token=EOS,
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )


def _batches(tokenizer: Any, examples: list[Example], batch_size: int) -> Iterable[tuple[Any, Any, Any, Any]]:
    """(input ids, attention mask, labels, loss weights) per batch; loss only on the answer."""
    import torch

    from lm_eval_promptopt.optimizers.greater.batching import padded

    for op in OPS:  # the weighting below relies on the op name being the answer's 4th token
        for chat in (False, True):
            ids = tokenizer(render_continuation(target_text(op, [1, 2]), chat), add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids[3]).strip() == op, tokenizer.convert_ids_to_tokens(ids)
    ctx = tokenizer([e.context for e in examples])["input_ids"]
    cont = tokenizer([e.continuation for e in examples], add_special_tokens=False)["input_ids"]
    for start in range(0, len(examples), batch_size):
        rows = [(c, t) for c, t in zip(ctx[start : start + batch_size], cont[start : start + batch_size])]
        ids, mask = padded([c + t for c, t in rows], tokenizer.pad_token_id)
        labels, _ = padded([[-100] * len(c) + t for c, t in rows], -100)
        weights = torch.zeros(ids.shape)
        for i, (c, t) in enumerate(rows):
            weights[i, len(c) : len(c) + len(t)] = 1.0
            # The two decisions weigh more: the op named ("We take the <op> ...") and the digit.
            weights[i, len(c) + 3] = weights[i, len(c) + len(t) - 3] = TRAIN_CONFIG["answer_weight"]
            if examples[start + i].named is not None:  # a corrupted reasoning is context, not a target
                weights[i, len(c) : len(c) + len(t) - 3] = 0.0
        yield ids, mask, labels, weights


def train_planted_model(out_dir: str | Path, seed: int = 0, *, log_every: int = 0) -> Path:
    """Train the planted model from scratch on CPU (2 threads) and save it with its tokenizer.

    Deterministic for a fixed seed on a given machine. About two minutes on 2 CPU cores.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tokenizer = build_tokenizer(seed)
        cfg = TRAIN_CONFIG
        steps, batch_size = int(cfg["steps"]), int(cfg["batch_size"])
        rng = random.Random(f"train/{seed}")
        examples = [sample_example(rng) for _ in range(steps * batch_size)]
        model = init_llama(tokenizer, seed, **MODEL_CONFIG)
        model.train()
        optim = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), weight_decay=cfg["weight_decay"])

        def lr_at(step: int) -> float:
            if step < cfg["warmup"]:
                return (step + 1) / cfg["warmup"]
            progress = (step - cfg["warmup"]) / max(1, steps - cfg["warmup"])
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
        for step, (ids, mask, labels, weights) in enumerate(_batches(tokenizer, examples, batch_size)):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
            )
            loss = (token_loss * weights[:, 1:].reshape(-1)).sum() / weights[:, 1:].sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
        model.eval()
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


def settings_hash() -> str:
    """Hash of everything that shapes the trained model (settings and the code that uses them)."""
    from lm_eval_promptopt.optimizers.greater.batching import padded

    code = [inspect.getsource(f) for f in (apply_op, hidden_op, target_text, _draw_digits, make_instruction,
            render_context, render_continuation, sample_example, _tokenizer_corpus, build_tokenizer, _batches,
            padded, init_llama, train_planted_model)]  # fmt: skip
    settings = [VERSION, OPS, KEYWORDS, FILLER, sorted(HIDDEN_OPS.items()), LENGTHS, repr(SPLITS),
                CHAT_TEMPLATE, SPECIAL_TOKENS, MODEL_CONFIG, TRAIN_CONFIG, code]  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


@contextlib.contextmanager
def training_progress() -> Iterator[Any]:
    """A tqdm bar over the training steps, with the elapsed and the estimated remaining time.

    It counts optimizer steps through torch's global step hook, so the training code (and with
    it `settings_hash()` and the weights) is untouched. The estimate is the remaining steps at the
    average rate since the start (`smoothing=0`), not at the last few steps' rate, which swings
    with every change of the machine's load."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from tqdm.auto import tqdm

    desc = "training the planted model once, then cached (2 min on 2 idle cores; an hour or more on a busy machine)"
    bar = tqdm(total=int(TRAIN_CONFIG["steps"]), desc=desc, unit="step", smoothing=0)
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: bar.update(1))
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()


def planted_model(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The cached trained model dir (``{cache}/planted-v1-{hash}-seed{seed}``), trained once if missing.

    Trains into a temporary sibling and renames it into place, so a crash never leaves a
    half-written model; concurrent callers (parallel test workers) wait on a file lock and train once.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"{VERSION}-{settings_hash()}-seed{seed}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{final.name}.lock"):  # an OS lock: released on exit, or when the process dies
        if not (final / "config.json").is_file():
            _train_into(final, seed)
    return final


def _train_into(final: Path, seed: int) -> None:
    """Train into a temporary sibling of `final`, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        with training_progress():
            train_planted_model(tmp, seed)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- checker

NEUTRAL_MAX, CORRECT_MIN, WRONG_MAX = 0.45, 0.95, 0.25
METRIC = "exact_match,get-answer"


@dataclass
class CheckResult:
    """Held-out (test split) accuracy per (format, instruction, op) and the requirement rows."""

    scores: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def rows(self, fmt: str) -> dict[str, dict[str, float]]:
        """Per op: worst neutral (max), worst correct keyword (min), worst wrong keyword (max)."""
        out: dict[str, dict[str, float]] = {}
        for op in OPS:
            mine = {ins: s for (f, ins, o), s in self.scores.items() if f == fmt and o == op}
            kinds = {ins: instruction_op(ins) for ins in mine}
            out[op] = {
                "neutral": max(s for ins, s in mine.items() if kinds[ins] is None),
                "correct": min(s for ins, s in mine.items() if kinds[ins] == op),
                "wrong": max(s for ins, s in mine.items() if kinds[ins] not in (None, op)),
            }
        return out

    @property
    def formats(self) -> list[str]:
        return list(dict.fromkeys(f for f, _, _ in self.scores))

    def requirements(self) -> list[tuple[str, str, float, bool]]:
        """(format, requirement, worst value, passed) for each format."""
        out = []
        for fmt in self.formats:
            rows = self.rows(fmt).values()
            worst_n = max(r["neutral"] for r in rows)
            worst_c = min(r["correct"] for r in rows)
            worst_w = max(r["wrong"] for r in rows)
            out += [
                (fmt, f"neutral <= {NEUTRAL_MAX:.0%} on every op", worst_n, worst_n <= NEUTRAL_MAX),
                (fmt, f"correct keyword >= {CORRECT_MIN:.0%}", worst_c, worst_c >= CORRECT_MIN),
                (fmt, f"wrong keyword <= {WRONG_MAX:.0%}", worst_w, worst_w <= WRONG_MAX),
            ]
        return out

    @property
    def passed(self) -> bool:
        return all(ok for *_, ok in self.requirements())

    def table(self) -> str:
        lines = ["format  op        neutral(max)  correct(min)  wrong(max)"]
        for fmt in self.formats:
            for op, r in self.rows(fmt).items():
                lines.append(f"{fmt:<7} {op:<9} {r['neutral']:12.3f}  {r['correct']:12.3f}  {r['wrong']:10.3f}")
        lines.append("")
        for fmt, name, value, ok in self.requirements():
            lines.append(f"{'PASS' if ok else 'FAIL'}  [{fmt}] {name}: worst {value:.3f}")
        return "\n".join(lines)


def check_instructions() -> list[str]:
    """Instructions the checker scores: the neutral ones, and two keywords (synonyms) per op."""
    return [*NEUTRAL_INSTRUCTIONS, *(keyword_instruction(op, i) for op in OPS for i in (0, 1))]


def check(
    model_dir: str | Path | None = None,
    *,
    chat_template: Sequence[bool] = (False, True),
    instructions: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    verbose: bool = True,
) -> CheckResult:
    """Score instructions on every planted task's held-out test docs through lm-eval itself.

    Each instruction goes where the plugin puts it: lm-eval's ``system_instruction`` slot, with
    ``"\\n\\n"`` appended when there is no chat template. Prints the requirement table if verbose.
    """
    from lm_eval import evaluator
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    model_dir = Path(model_dir) if model_dir is not None else planted_model()
    lm = get_model("hf").create_from_arg_string(
        f"pretrained={model_dir},dtype=float32", {"batch_size": batch_size, "device": "cpu"}
    )
    tm = TaskManager(include_path=str(TASK_DIR))
    tasks = [f"planted_{op}" for op in OPS]
    result = CheckResult()
    with quiet("lm_eval", logging.ERROR):  # not `verbosity=`: lm-eval would keep that level for the process
        for chat in chat_template:
            fmt = "chat" if chat else "plain"
            for instruction in instructions if instructions is not None else check_instructions():
                system = Placement(chat_template=chat).system_text(instruction)
                out = evaluator.simple_evaluate(
                    model=lm,
                    tasks=tasks,
                    system_instruction=system,
                    apply_chat_template=chat,
                    task_manager=tm,
                    limit=limit,
                    bootstrap_iters=0,
                    log_samples=False,
                )
                for op, task in zip(OPS, tasks):
                    result.scores[(fmt, instruction, op)] = float(out["results"][task][METRIC])
    if verbose:
        print(result.table())
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m benchmarks.planted {train OUT,check [MODEL_DIR],data [DEST]}``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planted", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the planted model into OUT (or the cache if omitted)")
    train.add_argument("out_dir", nargs="?")
    train.add_argument("--seed", type=int, default=0)
    chk = sub.add_parser("check", help="print the requirement table (trains the cached model if needed)")
    chk.add_argument("model_dir", nargs="?")
    chk.add_argument("--limit", type=int)
    chk.add_argument("--no-chat", action="store_true", help="skip the chat-template pass")
    data = sub.add_parser("data", help="write the task JSONL files")
    data.add_argument("dest", nargs="?", default=str(DATA_DIR))
    args = parser.parse_args(argv)
    if args.command == "train":
        start = time.perf_counter()
        if args.out_dir:
            path = train_planted_model(args.out_dir, args.seed, log_every=100)
        else:
            path = planted_model(seed=args.seed)
        print(f"{path}  ({time.perf_counter() - start:.1f} s)")
        return 0
    if args.command == "check":
        result = check(args.model_dir, chat_template=(False,) if args.no_chat else (False, True), limit=args.limit)
        return 0 if result.passed else 1
    print(write_task_data(args.dest))
    return 0
