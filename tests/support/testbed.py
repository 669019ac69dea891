"""Offline test bed: a tiny random chat model and local-data overrides of lm-eval tasks.

Nothing here needs network access. ``build_tiny_model`` writes a Hugging Face model directory
that lm-eval's ``hf`` model type loads on CPU in about a second; ``write_local_task_overrides``
writes task YAMLs that, passed as ``--include_path``, make lm-eval's own BBH, MMLU and GSM8k
task definitions read local JSONL files instead of the hub. The tests, scripts/bench_greater.py and
the other scripts that need a tiny model import it from here (a checkout, not the installed package).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import yaml
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from benchmarks.tiny_llama import CHAT_TEMPLATE, CHAT_TEMPLATE_NO_SYSTEM, init_llama


SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

BUILTIN_CORPUS = """\
Q: Evaluate the result of a random Boolean expression. not ( True ) and ( True ) is
A: Let's think step by step. Remember that expressions inside brackets are evaluated first.
So the answer is False. The answer is True. Options: (A) (B) (C) (D) (E) Yes No valid invalid
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips
in May. How many clips did Natalia sell altogether in April and May?
Answer: Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether. #### 72
The following are multiple choice questions (with answers) about abstract algebra.
Find the degree of the given field extension over the rationals. A. 0 B. 4 C. 2 D. 6 Answer: B
Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY? Sort the following words
alphabetically: List: oven costume counterpart. Complete the rest of the sequence, making sure
that the parentheses are closed properly: [ { < > } ] ( ). Alice, Bob, and Claire are playing a
game. At the start of the game, they are each holding a ball. If you follow these instructions,
do you return to the starting point? Take 1 step. Turn left. Take 2 steps. Is the following
sentence plausible? The penguins in the table are Louis, Bernard, Vincent and Gwen.
Premises: All people who regularly drink coffee are dependent on caffeine. Conclusion: True,
False or Uncertain? You are a helpful assistant. Think carefully and answer the question.
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = % $ . , ; : ! ? ' " ( ) [ ] { } < >
"""

# Hub dataset -> (sub-folder of the data dir, file name pattern, the splits the hub dataset has).
_LOCAL_FILES = {
    "SaylorTwift/bbh": ("bbh", "{name}.jsonl", ("test",)),
    "cais/mmlu": ("mmlu", "{name}.{split}.jsonl", ("dev", "validation", "test")),
    "openai/gsm8k": ("gsm8k", "{split}.jsonl", ("train", "test")),
}
OVERRIDDEN = (
    "bbh_cot_zeroshot",
    "bbh_zeroshot",
    "bbh",
    "bbh_fewshot",
    "leaderboard_bbh",
    "mmlu",
    "mmlu_generative",
    "mmlu_flan_cot_zeroshot",
    "gsm8k",
    "gsm8k_cot",
    "gsm8k_cot_zeroshot",
)


def _corpus(data_dir: Path | None) -> Iterator[str]:
    yield BUILTIN_CORPUS
    if data_dir is None:
        return
    for path in sorted(data_dir.glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line, _ in zip(fh, range(20)):
                yield "\n".join(str(v) for v in json.loads(line).values())


TOKENIZERS = ("bpe", "wordlevel", "metaspace", "llama3")

LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# Llama-3's layout: "<|begin_of_text|>", then per message a role header, a blank line and the text.
LLAMA3_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _train_tokenizer(kind: str, corpus: list[str]) -> Tokenizer:
    """A tokenizer of one of four pipelines users bring (trained on `corpus`).

    `bpe`: byte-level BPE (GPT-2 style); `llama3`: byte-level BPE of up to 3.6k tokens with
    Llama-3's five special tokens, adding `<|begin_of_text|>` in front of every encoding;
    `wordlevel`: a lowercasing, whitespace-split word vocabulary with `<unk>` (lossy);
    `metaspace`: SentencePiece-style BPE on `▁`-marked words with byte fallback (Llama-2 /
    Mistral style).
    """
    if kind in ("bpe", "llama3"):
        specials, size = (SPECIAL_TOKENS, 2048) if kind == "bpe" else (LLAMA3_SPECIAL_TOKENS, 3600)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        if kind == "llama3":
            bos = specials[0]
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
            )
        return tokenizer
    if kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=1024, min_frequency=2, special_tokens=SPECIAL_TOKENS, show_progress=False
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        return tokenizer
    if kind != "metaspace":
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    draft = Tokenizer(models.BPE())
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1536, special_tokens=SPECIAL_TOKENS, show_progress=False)
    draft.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(draft.to_str())["model"]
    vocab = dict(state["vocab"])
    for byte in range(256):  # byte fallback: characters outside the vocabulary become <0xNN>
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    system_role: bool = True,
    data_dir: str | Path | None = None,
    tokenizer: str = "bpe",
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 4,
) -> Path:
    """Build and save a tiny random ``LlamaForCausalLM`` with a chat tokenizer.

    The tokenizer (`tokenizer`: one of ``TOKENIZERS``, default byte-level BPE, vocab up to 2048)
    is trained on a built-in corpus plus, if given, the first rows of each ``*/*.jsonl`` file
    under ``data_dir`` (about 2.8 rather than 1.7 characters per token). The context is 8192
    tokens so that BBH CoT few-shot prompts (up to ~7k characters) are not truncated. With
    ``system_role=False`` the chat template raises on system messages, like Gemma-2's.
    `tokenizer="llama3"` gives Llama-3's special tokens and chat template (BOS on every encoding,
    eos ``<|eot_id|>``, pad ``<|end_of_text|>``, an untied output head; `system_role` does not
    apply). The shape arguments size the model (256 / 512 / 4 / 4 with llama3: 4.46 M
    parameters). Deterministic for fixed inputs; takes about a second after imports.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trained = _train_tokenizer(tokenizer, list(_corpus(Path(data_dir) if data_dir else None)))
    llama3 = tokenizer == "llama3"
    if llama3:
        names = dict(
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
            additional_special_tokens=LLAMA3_SPECIAL_TOKENS[2:4],
        )
        template = LLAMA3_CHAT_TEMPLATE
    else:
        names = dict(
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=SPECIAL_TOKENS[4:],
        )
        template = CHAT_TEMPLATE if system_role else CHAT_TEMPLATE_NO_SYSTEM
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=trained, model_max_length=8192, chat_template=template, **names
    )
    tokenizer.save_pretrained(out)

    model = init_llama(
        tokenizer,
        seed,
        tie_word_embeddings=not llama3,  # Llama-3 has its own output head
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=8192,
    )
    model.save_pretrained(out)
    return out


def _leaf_tasks(name: str, index: dict) -> list[str]:
    """Names of the leaf tasks under a task, tag or group in lm-eval's task index."""
    entry = index[name]
    if entry.kind.name == "TAG":
        return sorted(entry.tags)
    if entry.kind.name != "GROUP":
        return [name]
    leaves: list[str] = []
    stack = list(entry.cfg["task"])
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):  # inline subgroup, e.g. mmlu_generative's "stem"
            stack[:0] = item["task"]
        else:
            leaves += _leaf_tasks(item, index)
    return leaves


def bench_model(model: str | Path, data_dir: str | Path) -> Path:
    """The GReaTer benches' tiny Llama-3-shaped model (byte-level BPE, hidden 256, 4 layers) at
    `model`, built there once (scripts/bench_greater.py, scripts/bench_decode.py)."""
    model = Path(model)
    if not (model / "config.json").is_file():
        build_tiny_model(
            model,
            seed=0,
            data_dir=data_dir,
            tokenizer="llama3",
            hidden_size=256,
            intermediate_size=512,
            layers=4,
            heads=4,
        )
    return model


def write_local_task_overrides(dest_dir: str | Path, data_dir: str | Path, names: tuple[str, ...] = OVERRIDDEN) -> Path:
    """Write ``<task>.yaml`` overrides pointing lm-eval's BBH/MMLU/GSM8k tasks at local files.

    `names` are groups or tasks (default: every BBH, MMLU and GSM8k variant the data serves).
    Each file ``include:``s lm-eval's own leaf YAML by absolute path (so its relative includes
    and ``!function`` references still resolve next to the original) and replaces only the
    dataset source with ``json`` files from ``data_dir``, one per split the hub dataset has. Pass
    ``dest_dir`` as ``--include_path``: lm-eval's groups (``bbh``, ``mmlu``, ...) then run the
    overridden leaves, because a later include path overrides same-named index entries.
    """

    dest, data = Path(dest_dir), Path(data_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    index = TaskManager().task_index
    leaves = [leaf for name in names if name in index for leaf in _leaf_tasks(name, index)]
    for name in dict.fromkeys(leaves):
        entry = index[name]
        cfg = entry.cfg
        folder, pattern, splits = _LOCAL_FILES[cfg["dataset_path"]]
        files = {s: data / folder / pattern.format(name=cfg.get("dataset_name"), split=s) for s in splits}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{name}: missing local data {missing}")
        override = {
            "include": str(Path(entry.yaml_path).resolve()),
            "task": name,
            # The hub config name (e.g. `boolean_expressions`) is kept: the json builder accepts
            # it as a mere label, and task code reading `config.dataset_name` sees the same value.
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}},
            # Tags are indexed per include path, and a tag registered here would replace the
            # built-in tag of that name wholesale, losing its members we do not override (e.g.
            # gsm8k's `math_word_problems`). Without them, built-in tags and groups keep their
            # member names, which now resolve to these overrides.
            "tag": [],
        }
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
    return dest


def main(argv: list[str] | None = None) -> None:
    """CLI, from the repository root: ``python -m tests.support.testbed {model,tasks} OUT_DIR [--data DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="build the tiny random chat model")
    model.add_argument("out_dir")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--no-system-role", action="store_true", help="template rejects system messages")
    model.add_argument("--data", help="also train the tokenizer on this data dir's */*.jsonl")
    tasks = sub.add_parser("tasks", help="write local-data task overrides for --include_path")
    tasks.add_argument("out_dir")
    tasks.add_argument("--data", required=True, help="local benchmark data dir (bbh/, mmlu/, gsm8k/)")
    args = parser.parse_args(argv)
    if args.command == "model":
        path = build_tiny_model(args.out_dir, args.seed, system_role=not args.no_system_role, data_dir=args.data)
    else:
        path = write_local_task_overrides(args.out_dir, args.data)
    print(path)


if __name__ == "__main__":
    main()
