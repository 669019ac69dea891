"""Run `lm_eval --optimize greater` end to end on tiny models of each tokenizer pipeline.

Byte-level BPE, WordLevel (lowercasing, `<unk>`) and SentencePiece-style (metaspace, byte
fallback) tokenizers, each with and without `--apply_chat_template` (the BPE model also in
bfloat16), on BBH boolean_expressions and GSM8k from ../shared/data; prints one row per run.

    python scripts/check_greater_tokenizers.py [--out DIR] [--steps 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/support/ is in the checkout, not the package
from tests.support.testbed import TOKENIZERS, build_tiny_model, write_local_task_overrides  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
TASKS = ("bbh_cot_zeroshot_boolean_expressions", "gsm8k_cot_zeroshot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="greater_tokenizers_"))
    tasks = write_local_task_overrides(out / "tasks", args.data, names=TASKS)
    runs = [(kind, chat, "float32") for kind in TOKENIZERS for chat in (False, True)] + [("bpe", True, "bfloat16")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print("| tokenizer | chat template | dtype | exit | placement | re-encoding check | initial as seen | seconds |")
    print("|---|---|---|---:|---|---|---|---:|")
    failed = 0
    for kind, chat, dtype in runs:
        model = out / f"model_{kind}"
        if not (model / "config.json").is_file():
            build_tiny_model(model, tokenizer=kind, data_dir=args.data)
        result_dir = out / f"results_{kind}_{int(chat)}_{dtype}"
        command = [
            str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
            "--model_args", f"pretrained={model},dtype={dtype}", "--device", "cpu", "--include_path", str(tasks),
            "--tasks", ",".join(TASKS), *(["--apply_chat_template"] if chat else []),
            "--optimize", "greater", "--optimize_args", f"steps={args.steps},train_size=3,dev_size=3",
            "--gen_kwargs", "max_gen_toks=6", "--limit", "2", "--output_path", str(result_dir),
        ]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        files = glob.glob(str(result_dir / "**" / "results_*.json"), recursive=True)
        if proc.returncode or not files:
            failed += 1
            print(
                f"| {kind} | {chat} | {dtype} | {proc.returncode} | | | {proc.stderr.strip().splitlines()[-1:]} | {seconds:.0f} |"
            )
            continue
        section = json.loads(Path(files[0]).read_text())["prompt_optimization"]["tasks"]
        first = section[TASKS[0]]
        seen = first["details"]["initial_as_seen"]
        print(
            f"| {kind} | {chat} | {dtype} | 0 | {first['placement']} | {first['details']['reencoding_check']} | {seen!r} | {seconds:.0f} |"
        )
    print(f"{len(runs) - failed} of {len(runs)} runs passed ({out})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
