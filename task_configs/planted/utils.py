"""Dataset loader for the planted_* tasks: the JSONL files in ``data/`` next to this file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "validation", "test")


def load(op: str, planted_data_dir: str | None = None, **_: Any):
    """lm-eval ``custom_dataset`` hook, called as ``load(**metadata, **dataset_kwargs)``.

    Returns a ``DatasetDict`` with the train / validation / test docs of op `op`, read from
    ``data/{op}.{split}.jsonl`` (or the folder `planted_data_dir`, settable with ``--metadata``).
    Where the default files are absent (an install without them), the same docs are generated
    by ``lm_eval_promptopt.planted.make_docs``. Other keys (``--model_args`` entries, the task
    version) are ignored.
    """
    import datasets

    root = Path(planted_data_dir) if planted_data_dir else DATA_DIR
    splits = {}
    for split in SPLITS:
        path = root / f"{op}.{split}.jsonl"
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                docs = [json.loads(line) for line in fh if line.strip()]
        elif planted_data_dir:
            raise FileNotFoundError(f"{path} missing (write it with `python -m lm_eval_promptopt.planted data DIR`)")
        else:
            from lm_eval_promptopt.planted import SPLIT_SIZES, make_docs

            docs = make_docs(op, split, SPLIT_SIZES[split])
        splits[split] = datasets.Dataset.from_list(docs)
    return datasets.DatasetDict(splits)
