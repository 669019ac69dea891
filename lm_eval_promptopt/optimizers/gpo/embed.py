"""Embeddings for `retrieval=relevance`: a sentence-transformers model, loaded once per process.

sentence-transformers is an optional dependency (`pip install 'lm_eval_promptopt[gpo]'`); the
other retrievals (recency, importance, none) run without it. Whether it is installed, and whether
the model loads, is checked by `GPO.preflight`, before the evaluated model loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, ClassVar

from ...errors import PromptOptError


NOT_INSTALLED = (
    "retrieval=relevance embeds instructions with sentence-transformers, which is not installed: "
    "pip install 'lm_eval_promptopt[gpo]' (or pip install sentence-transformers), "
    "or run without embeddings with retrieval=recency (or importance, none)"
)


def have_sentence_transformers() -> bool:
    try:
        return importlib.util.find_spec("sentence_transformers") is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _embedding_fixes(model: str) -> str:
    return (
        f"download it once where there is network (`hf download {model}`), or pass "
        "embedding_model=/path/to/a/local/sentence-transformers/model, "
        "or run without embeddings with retrieval=recency (or importance, none)"
    )


class Embedder:
    """A sentence-transformers model, loaded once per process; one normalised embedding per text."""

    _loaded: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.cache: dict[str, list[float]] = {}
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        self.model = self._loaded[name]

    @staticmethod
    def _load(name: str) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise PromptOptError(
                f"retrieval=relevance needs sentence-transformers ({err}): pip install 'lm_eval_promptopt[gpo]' "
                "(or pip install sentence-transformers), or run without embeddings with retrieval=recency (or importance, none)"
            ) from None
        try:
            return SentenceTransformer(name)
        except Exception as err:  # noqa: BLE001 (offline, missing files, bad path: one clear message)
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise PromptOptError(
                f"retrieval=relevance: cannot load the embedding model {name!r} ({reason}). Fix: {_embedding_fixes(name)}"
            ) from None

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            vectors = self.model.encode(missing, normalize_embeddings=True, show_progress_bar=False)
            self.cache.update({t: [float(x) for x in v] for t, v in zip(missing, vectors, strict=True)})
        return [self.cache[t] for t in texts]
