"""GPO's settings (`--optimize_args` keys), validated as data.

Constructing a config reads nothing from the environment: whether the optimizer's API key is set
and whether sentence-transformers is installed are checked by `GPO.preflight`, before the model
loads. Credentials written into `optimizer_base_url` (`http://user:key@host`, or a query string
such as `?api_key=k`) are split off at
construction: the field keeps the URL without them (what results, caches and hashes hold), and
`endpoint` the URL the requests go to.
"""

from __future__ import annotations

from dataclasses import dataclass

from .llm import redact_url


EMBEDDING_MODEL = "BAAI/bge-base-en-v1.5"
RETRIEVALS = ("relevance", "recency", "importance", "none")
UPDATES = ("generation", "editing")
SCHEDULES = ("cosine", "linear", "fixed", "none")
ORDERS = ("descending", "ascending")


@dataclass(frozen=True)
class GPOConfig:
    """GPO's settings; the defaults are the released GPO.sh's, except `optimizer_model` (offline)."""

    optimizer_model: str = "self"
    """`self`: the evaluated model writes the instructions (offline); else a model name at an
    OpenAI-compatible endpoint (e.g. gpt-3.5-turbo, the paper's)."""
    optimizer_base_url: str | None = None
    """Endpoint of `optimizer_model` (default: the OpenAI API, or $OPENAI_BASE_URL). Credentials in
    it (`http://user:key@host`, its query string) are used for the requests and stripped from the
    config, so that nothing written or hashed holds them."""
    api_key_env: str | None = None
    """Environment variable that holds the endpoint's API key (the key is never logged). Default:
    $OPENAI_API_KEY for the OpenAI API (or $OPENAI_BASE_URL), and no key for an
    `optimizer_base_url`: a key goes to another host only when named for it."""
    temperature: float = 1.0
    """Sampling temperature of the optimizer."""
    samples: int = 8
    """Candidates sampled per step."""
    max_tokens: int = 512
    """New tokens per optimizer completion."""
    steps: int | None = None
    """Number of steps (default: set by `epochs` and `batch`, as in the paper)."""
    max_optimizer_tokens: int | None = None
    """Stop the search once the optimizer LLM has used this many tokens (prompt + completion)."""
    epochs: int = 3
    """Passes over optimize-train; with `batch` they set the number of steps."""
    batch: int = 8
    """Mini-batch size: steps per epoch = floor(n/batch) + (1 if n mod batch >= batch/2)."""
    k: int = 3
    """Trajectory entries shown in the meta-prompt (the current one included)."""
    retrieval: str = "relevance"
    """Which entries: relevance (embedding similarity to the current), recency, importance (best
    dev scores), none (the current only)."""
    order: str = "descending"
    """How the shown entries are listed: descending (the current one first, then by relevance,
    recency or score: as the released GPO.sh ran for the paper's numbers) or ascending (the
    reverse, the current one last: as the paper's text describes it)."""
    update: str = "generation"
    """generation (write a new instruction) or editing (modify the current one)."""
    schedule: str = "cosine"
    """Word-budget decay: cosine, linear, fixed, none (no budget sentence)."""
    budget_start: int = 50
    """Word budget at the start of the decay."""
    budget_end: int = 10
    """Word budget at the last step."""
    warmup: int = 0
    """Steps of linear warm-up of the word budget (0: none)."""
    exemplars: int = 3
    """Optimize-train docs shown in the meta-prompt, drawn once with the seed."""
    embedding_model: str = EMBEDDING_MODEL
    """sentence-transformers model (name or local path) for retrieval=relevance."""
    timeout: float = 120.0
    """Seconds per optimizer request."""
    max_retries: int = 5
    """Retries of a request on rate limits (429), server errors (5xx) and timeouts."""
    concurrency: int = 8
    """Parallel requests when an endpoint needs one request per sample."""

    def __post_init__(self) -> None:
        for name, allowed in (
            ("retrieval", RETRIEVALS),
            ("order", ORDERS),
            ("update", UPDATES),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("samples", "max_tokens", "epochs", "batch", "k", "concurrency", "budget_end"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(
                f"steps must be at least 1 (leave it out for the paper's count from epochs and batch), got {self.steps}"
            )
        if self.max_optimizer_tokens is not None and self.max_optimizer_tokens < 1:
            raise ValueError(
                f"max_optimizer_tokens must be at least 1 (leave it out for no limit), got {self.max_optimizer_tokens}"
            )
        for name in ("warmup", "exemplars", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.budget_start < self.budget_end:
            raise ValueError(f"budget_start ({self.budget_start}) must be at least budget_end ({self.budget_end})")
        if self.temperature < 0 or self.timeout <= 0:
            raise ValueError("temperature must be 0 or more and timeout above 0")
        if not self.optimizer_model.strip():
            raise ValueError("optimizer_model must name a model, or be `self`")
        if self.optimizer_model == "self" and self.optimizer_base_url:
            raise ValueError("optimizer_base_url needs optimizer_model=<the model name at that endpoint>")
        object.__setattr__(self, "_endpoint", self.optimizer_base_url)  # not a field: never written or hashed
        object.__setattr__(self, "optimizer_base_url", redact_url(self.optimizer_base_url))

    @property
    def endpoint(self) -> str | None:
        """The URL the requests go to: `optimizer_base_url` with the credentials it was given with."""
        return self._endpoint

    @property
    def key_env(self) -> str | None:
        """The environment variable whose key the requests carry: `api_key_env`, else
        $OPENAI_API_KEY for the OpenAI API only (a key goes to another host only when named for it)."""
        return self.api_key_env or (None if self.optimizer_base_url else "OPENAI_API_KEY")
