"""Dataset loading and document normalisation for the FOLIO task configs.

FOLIO is not part of lm-evaluation-harness, so these configs bring their own
loader (``custom_dataset: !function utils.load_folio``) and ``process_docs``.

Two dataset shapes are accepted:

* FOLIO v1 (``Yale-LILY/FOLIO`` ``data/v0.0``; files ``train.jsonl`` /
  ``validation.jsonl``): ``premises`` is a list of strings.
* FOLIO v2 (the gated hub dataset ``yale-nlp/FOLIO``; files
  ``folio_v2_train.jsonl`` / ``folio_v2_validation.jsonl``): ``premises`` is one
  newline-joined string, and there are extra ``story_id`` / ``example_id``
  columns.

Some releases spell the third label ``Unknown`` instead of ``Uncertain``;
``process_docs`` maps it to ``Uncertain``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


HUB_DATASET_ID = "yale-nlp/FOLIO"
HUB_PAGE = f"https://huggingface.co/datasets/{HUB_DATASET_ID}"

#: Environment variable naming a directory with local FOLIO jsonl files.
ENV_DATA_DIR = "FOLIO_DATA_DIR"
#: ``--metadata`` key naming the same directory (takes precedence over the env var).
METADATA_DATA_DIR = "folio_data_dir"

#: Accepted (train, validation) file-name pairs inside a local data directory.
LOCAL_FILE_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("train.jsonl", "validation.jsonl"),  # FOLIO v1 names
    ("folio_v2_train.jsonl", "folio_v2_validation.jsonl"),  # FOLIO v2 names
)

#: Answer options, in the order used by the multiple-choice task.
LABELS: tuple[str, str, str] = ("True", "False", "Uncertain")

_LABEL_ALIASES = {
    "true": "True",
    "false": "False",
    "uncertain": "Uncertain",
    "unknown": "Uncertain",
}

#: Columns produced by :func:`process_docs`, whatever the input shape.
NORMALIZED_COLUMNS: tuple[str, ...] = ("premises", "conclusion", "label", "label_index")


def _access_help() -> str:
    layouts = " or ".join(f"{a} + {b}" for a, b in LOCAL_FILE_LAYOUTS)
    return (
        f"FOLIO v2 on the Hugging Face Hub ({HUB_DATASET_ID}) is gated. Either:\n"
        f"  (1) accept the dataset terms at {HUB_PAGE} with your Hugging Face account, "
        "then export HF_TOKEN=<your access token> (or run `huggingface-cli login`); or\n"
        f"  (2) use local files: export {ENV_DATA_DIR}=/path/to/folio, or pass "
        f'--metadata \'{{"{METADATA_DATA_DIR}": "/path/to/folio"}}\' to lm_eval, '
        f"where the directory holds {layouts}."
    )


# --------------------------------------------------------------------------- #
# Normalisation
# --------------------------------------------------------------------------- #
def normalize_label(label: Any) -> str:
    """Map a raw FOLIO label to one of ``True`` / ``False`` / ``Uncertain``."""
    key = str(label).strip().lower()
    if key not in _LABEL_ALIASES:
        raise ValueError(f"Unexpected FOLIO label {label!r}; expected one of True, False, Uncertain (or Unknown).")
    return _LABEL_ALIASES[key]


def normalize_premises(premises: Any) -> str:
    """Return the premises as one newline-joined string, one premise per line."""
    if premises is None:
        return ""
    if isinstance(premises, str):
        lines = premises.splitlines()
    else:
        lines = []
        for item in premises:
            lines.extend(str(item).splitlines())
    return "\n".join(line.strip() for line in lines if line.strip())


def normalize_doc(doc: dict) -> dict:
    """Normalise one raw FOLIO record (v1 or v2) to :data:`NORMALIZED_COLUMNS`."""
    label = normalize_label(doc["label"])
    return {
        "premises": normalize_premises(doc.get("premises")),
        "conclusion": str(doc.get("conclusion") or "").strip(),
        "label": label,
        "label_index": LABELS.index(label),
    }


def process_docs(dataset):
    """lm-eval ``process_docs`` hook: normalise a FOLIO split of either version.

    Output columns are exactly :data:`NORMALIZED_COLUMNS`: ``premises`` (str,
    one premise per line), ``conclusion`` (str), ``label`` (``True`` /
    ``False`` / ``Uncertain``) and ``label_index`` (0 / 1 / 2). lm-eval applies
    this hook to the evaluated split and to the few-shot split alike.
    """
    normalized = dataset.map(normalize_doc, remove_columns=list(dataset.column_names))
    # same column order whatever the input order was
    return normalized.select_columns(list(NORMALIZED_COLUMNS))


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def find_local_files(data_dir: str | os.PathLike) -> dict[str, str]:
    """Return ``{"train": path, "validation": path}`` for a local FOLIO directory."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"FOLIO data directory {str(root)!r} does not exist "
            f"(set via {ENV_DATA_DIR} or --metadata {METADATA_DATA_DIR})."
        )
    for train_name, validation_name in LOCAL_FILE_LAYOUTS:
        train, validation = root / train_name, root / validation_name
        if train.is_file() and validation.is_file():
            return {"train": str(train), "validation": str(validation)}
    layouts = " or ".join(f"{a} + {b}" for a, b in LOCAL_FILE_LAYOUTS)
    raise FileNotFoundError(
        f"FOLIO data directory {str(root)!r} must contain {layouts}; found: {sorted(p.name for p in root.iterdir())}"
    )


def load_local(data_dir: str | os.PathLike):
    """Load local FOLIO jsonl files into a ``DatasetDict`` (train, validation)."""
    import datasets

    files = find_local_files(data_dir)
    # One load per split: v1 train and validation files do not share the same
    # columns, which a single multi-split json load would reject.
    return datasets.DatasetDict(
        {split: datasets.load_dataset("json", data_files=path, split="train") for split, path in files.items()}
    )


def load_hub(**load_kwargs):
    """Load ``yale-nlp/FOLIO`` from the hub; explain how to get access on failure."""
    import datasets

    try:
        ds = datasets.load_dataset(HUB_DATASET_ID, **load_kwargs)
    except Exception as exc:  # gated / no token / offline / no network
        raise RuntimeError(
            f"Could not load the FOLIO dataset {HUB_DATASET_ID!r} from the Hugging "
            f"Face Hub ({type(exc).__name__}: {exc}).\n{_access_help()}"
        ) from exc
    missing = {"train", "validation"} - set(ds.keys())
    if missing:
        raise RuntimeError(
            f"{HUB_DATASET_ID} has splits {sorted(ds.keys())}; expected train and validation.\n{_access_help()}"
        )
    return datasets.DatasetDict({"train": ds["train"], "validation": ds["validation"]})


def resolve_data_dir(**kwargs) -> str | None:
    """The local FOLIO directory: ``folio_data_dir`` metadata, else ``$FOLIO_DATA_DIR``."""
    value = kwargs.get(METADATA_DATA_DIR) or os.environ.get(ENV_DATA_DIR)
    return str(value) if value else None


def load_folio(**kwargs):
    """lm-eval ``custom_dataset`` hook.

    lm-eval calls it as ``custom_dataset(**metadata, **dataset_kwargs)``; the
    metadata also carries ``--model_args`` keys (``pretrained``, ``device``...)
    and the task's own ``version``, so unknown keys are ignored.

    Returns a ``DatasetDict`` with ``train`` and ``validation`` holding the raw
    records; the task's ``process_docs`` normalises them.
    """
    data_dir = resolve_data_dir(**kwargs)
    if data_dir:
        return load_local(data_dir)
    hub_kwargs = {}
    if kwargs.get("folio_revision"):
        hub_kwargs["revision"] = kwargs["folio_revision"]
    return load_hub(**hub_kwargs)
