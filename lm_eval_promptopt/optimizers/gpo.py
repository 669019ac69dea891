"""GPO (Tang et al., AAAI 2025, arXiv 2402.17564): an LLM writes instructions, guided like gradient descent.

Per step: retrieve k entries of the trajectory (the current instruction and the k-1 earlier
step-winners most similar to it), show them with their dev scores and a few train exemplars in a
meta-prompt that asks for a new instruction within a word budget that decays on a cosine schedule
(50 -> 10 words), sample 8 candidates, score each new one on optimize-dev with the harness, and
move to the best candidate not already in the trajectory (even if it scores below the current
one). The result is the trajectory entry with the best dev score.

Spec: shared/reference/gpo.md. Deviations from the reference code: see README (GPO).
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..errors import PromptOptError
from .llm import OpenAIChat, OptimizerLLM, OptimizerLLMError, SelfLM, redact_url
from .base import OptimizationResult, Optimizer, Problem, register_optimizer

INITIAL_INSTRUCTION = "Let's think step by step."
EMBEDDING_MODEL = "BAAI/bge-base-en-v1.5"
START, END = "<START>", "<END>"
PLACEHOLDER = "<Prompt>"
SELECTION_RULE = "best optimize-dev score in the trajectory, initial instruction included; ties to the earliest"
RETRIEVALS = ("relevance", "recency", "importance", "none")
UPDATES = ("generation", "editing")
SCHEDULES = ("cosine", "linear", "fixed", "none")
ORDERS = ("descending", "ascending")


def _have_sentence_transformers() -> bool:
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


@dataclass(frozen=True)
class GPOConfig:
    optimizer_model: str = "self"
    """`self`: the evaluated model writes the instructions (offline); else a model name at an
    OpenAI-compatible endpoint (e.g. gpt-3.5-turbo, the paper's)."""
    optimizer_base_url: str | None = None
    """Endpoint of `optimizer_model` (default: the OpenAI API, or $OPENAI_BASE_URL). Credentials in
    it (`http://user:key@host`) are used for the requests and stripped from the config, so that
    nothing written or hashed holds them."""
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
        for name, allowed in (("retrieval", RETRIEVALS), ("order", ORDERS), ("update", UPDATES), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("samples", "max_tokens", "epochs", "batch", "k", "concurrency", "budget_end"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1 (leave it out for the paper's count from epochs and batch), got {self.steps}")
        if self.max_optimizer_tokens is not None and self.max_optimizer_tokens < 1:
            raise ValueError(f"max_optimizer_tokens must be at least 1 (leave it out for no limit), got {self.max_optimizer_tokens}")
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
        hosted = self.optimizer_model != "self" and not (self.optimizer_base_url or os.environ.get("OPENAI_BASE_URL"))
        if hosted and not os.environ.get(self.api_key_env or "OPENAI_API_KEY"):
            raise ValueError(
                f"optimizer_model={self.optimizer_model} on the OpenAI API needs an API key in ${self.api_key_env or 'OPENAI_API_KEY'} "
                "(set it, or name another variable with api_key_env=NAME)"
            )
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ValueError(f"api_key_env={self.api_key_env} names an environment variable that is not set")
        # Keep the URL with its credentials for the requests only (not a field: never written or hashed).
        object.__setattr__(self, "_endpoint", self.optimizer_base_url)
        object.__setattr__(self, "optimizer_base_url", redact_url(self.optimizer_base_url))
        if self.retrieval == "relevance" and not _have_sentence_transformers():
            raise ValueError(
                "retrieval=relevance embeds instructions with sentence-transformers, which is not installed: "
                "pip install 'lm_eval_promptopt[gpo]' (or pip install sentence-transformers), "
                "or run without embeddings with retrieval=recency (or importance, none)"
            )


@dataclass(frozen=True)
class Entry:
    """A trajectory entry: the instruction chosen at `step` (0: the initial one) and its dev score."""

    instruction: str
    score: float
    step: int


# -- schedule, parsing, retrieval, meta-prompt: pure functions ---------------------------------


def total_steps(n_train: int, epochs: int, batch: int) -> int:
    """T = epochs x (floor(n/batch) + 1 if the remainder is at least half a batch)."""
    return epochs * (n_train // batch + (1 if 2 * (n_train % batch) >= batch else 0))


def word_budget(t: int, total: int, schedule: str, start: int, end: int, warmup: int = 0) -> int | None:
    """N_t, the words the optimizer may change at step t (1-based); None: no budget sentence."""
    if schedule == "none":
        return None
    if t < warmup:
        return int(start * t / warmup)
    if schedule == "fixed":
        return start
    progress = (t - warmup) / (total - warmup)
    if schedule == "linear":
        return int(start - (start - end) * progress)
    return int(end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_candidate(text: str) -> str:
    """The text between the first <START> and the next <END> (either may be missing), polished:
    stripped, `**` removed, first letter capitalised."""
    begin = text.find(START)
    body = text[begin + len(START) :] if begin >= 0 else text
    stop = body.find(END)
    body = (body[:stop] if stop >= 0 else body).strip().replace("**", "").strip()
    return body[:1].upper() + body[1:]


def word_edits(a: str, b: str) -> int:
    """Word-level Levenshtein distance (diagnostics only: the budget is a soft constraint)."""
    x, y = a.split(), b.split()
    row = list(range(len(y) + 1))
    for i, word in enumerate(x, 1):
        prev, row[0] = row[0], i
        for j, other in enumerate(y, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (word != other))
    return row[-1]


Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]


def retrieve(trajectory: Sequence[Entry], k: int, mode: str, embed: Embed | None = None) -> list[Entry]:
    """The k entries shown in the meta-prompt. Entries repeating an instruction count once.

    none: the current entry; recency: the current, then the newest earlier ones; relevance: the
    current, then the earlier ones most similar to it (cosine of normalised embeddings), most
    similar first, ties to the earlier; importance: the k best dev scores, ties to the earlier,
    the current not forced in.
    """
    current = trajectory[-1]
    distinct: dict[str, Entry] = {}
    for entry in trajectory:
        distinct.setdefault(entry.instruction, entry)
    if mode == "importance":
        return sorted(distinct.values(), key=lambda e: (-e.score, e.step))[:k]
    earlier = [e for e in distinct.values() if e.instruction != current.instruction]
    if mode == "none" or k == 1 or not earlier:
        return [current]
    if mode == "recency":
        return [current, *sorted(earlier, key=lambda e: -e.step)[: k - 1]]
    if embed is None:
        raise ValueError("retrieval=relevance needs an embedding function")
    vectors = embed([current.instruction, *(e.instruction for e in earlier)])
    similarity = [sum(p * q for p, q in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    ranked = sorted(range(len(earlier)), key=lambda i: (-similarity[i], earlier[i].step))
    return [current, *(earlier[i] for i in ranked[: k - 1])]


def meta_prompt(
    shown: Sequence[Entry],
    current: str,
    exemplars: Sequence[tuple[str, str]],
    update: str = "generation",
    budget: int | None = None,
) -> str:
    """The optimizer's user message: task, trajectory with scores (0-100), the current
    instruction, exemplars showing where it goes, the request, the word budget, the output format."""
    task = (
        f"Your task is to write a prompt that will take the place of {PLACEHOLDER} in the inputs shown below."
        if update == "generation"
        else f"Your task is to modify the current prompt, which takes the place of {PLACEHOLDER} in the inputs shown below."
    )
    history = "\n\n".join(f"Prompt: {e.instruction}\nScore: {round(100 * e.score)}" for e in shown)
    examples = "\n\n".join(f"Input:\n{PLACEHOLDER}\n{question}\nOutput:\n{answer}" for question, answer in exemplars)
    position = f"replaces {PLACEHOLDER} at the start of the input, before the question"
    ask = (
        f"Study the earlier prompts and their scores carefully, then write a new, improved prompt that {position}."
        if update == "generation"
        else f"Study the earlier prompts and their scores carefully, then modify the current prompt into a new, improved prompt that {position}."
    )
    parts = [
        task,
        "Here are earlier prompts, each followed by its score. Scores range from 0 to 100, and a higher score is better.\n\n" + history,
        f"The current prompt is:\n{current}",
    ]
    if exemplars:
        parts.append(
            f"In each input below your prompt replaces {PLACEHOLDER}. "
            "An output counts as correct only if it is exactly the output given.\n\n" + examples
        )
    closing = [ask]
    if budget is not None:
        closing.append(f"You may change at most {budget} words of the current prompt.")
    closing.append(f"Write the new prompt between {START} and {END}.")
    return "\n\n".join(parts) + "\n\n" + "\n".join(closing)


# -- embeddings ----------------------------------------------------------------------------------


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


# -- the optimizer -------------------------------------------------------------------------------


def _log_path(problem: Problem) -> str:
    """Where the problem's records go (the run's trajectory file), for error messages."""
    path = getattr(getattr(problem.objective.record, "__self__", None), "path", None)
    return str(path) if path else f"trajectories/{problem.task_name}.jsonl in the run directory"


@register_optimizer("gpo")
class GPO(Optimizer):
    """GPO: LLM-proposed instructions with trajectory retrieval and a decaying word budget."""

    config_class = GPOConfig
    default_instruction = INITIAL_INSTRUCTION

    def optimizer_llm(self, problem: Problem) -> OptimizerLLM:
        cfg: GPOConfig = self.config
        if cfg.optimizer_model == "self":
            chat = problem.chat_template
            return SelfLM(problem.model, chat_template=chat, log=problem.record, replay=problem.log.replayed_calls())
        # A key goes to the OpenAI API, or to another endpoint only when api_key_env names it for it.
        key_env = cfg.api_key_env or (None if cfg.optimizer_base_url else "OPENAI_API_KEY")
        return OpenAIChat(
            cfg.optimizer_model,
            base_url=getattr(cfg, "_endpoint", cfg.optimizer_base_url),
            api_key=os.environ.get(key_env) if key_env else None,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
            log=problem.record,
            replay=problem.log.replayed_calls(),
            usable=lambda text: bool(parse_candidate(text)),
        )

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        cfg: GPOConfig = self.config
        steps = cfg.steps or total_steps(n_train, cfg.epochs, cfg.batch)
        evals = 1 + steps * cfg.samples  # the initial instruction, then each new candidate once
        optimizer = steps * cfg.samples
        return {
            "harness_evaluations": evals,
            "model_calls": evals * n_dev + (optimizer if cfg.optimizer_model == "self" else 0),
            "optimizer_calls": 0 if cfg.optimizer_model == "self" else optimizer,
        }

    def preflight(self) -> None:
        """Load the embedding model now (once per process): a bad one fails before the model loads."""
        if self.config.retrieval == "relevance":
            Embedder(self.config.embedding_model)

    def optimize(self, problem: Problem) -> OptimizationResult:
        cfg: GPOConfig = self.config
        started = time.perf_counter()
        train = problem.docs("train")
        steps = cfg.steps or total_steps(len(train), cfg.epochs, cfg.batch)
        if steps < 1:
            raise PromptOptError(
                f"{problem.task_name}: gpo runs epochs x (train docs / batch, rounded) steps; {len(train)} train docs "
                f"with batch={cfg.batch} give 0 steps (raise train_size to at least {(cfg.batch + 1) // 2})"
            )
        if cfg.schedule not in ("none", "fixed") and cfg.warmup >= steps:
            raise PromptOptError(f"{problem.task_name}: warmup={cfg.warmup} must be below the number of steps ({steps})")
        embed = Embedder(cfg.embedding_model) if cfg.retrieval == "relevance" else None  # fail before paying
        llm = self.optimizer_llm(problem)
        rng = random.Random(f"gpo:{problem.seed}:{problem.task_name}")
        positions = rng.sample(range(len(train)), min(cfg.exemplars, len(train)))
        exemplars = [problem.exemplar(train[i]) for i in positions]

        initial = problem.initial_instruction
        trajectory = [Entry(initial, problem.score(initial, "dev"), 0)]
        seen = {initial}
        budgets: list[int | None] = []
        proposing = 0  # steps that got at least one usable candidate
        if problem.log.resumed:  # continue after the interrupted run's last completed step
            state = problem.log.resumed
            trajectory = [Entry(**e) for e in state["trajectory"]]
            seen, budgets = set(state["seen"]), list(state["budgets"])
            proposing = state.get("proposing_steps", len(trajectory) - 1)
            for name, value in state["usage"].items():
                setattr(llm.usage, name, value)
        stop_reason = "completed"
        try:
            bar = tqdm(range(len(trajectory), steps + 1), desc=f"gpo {problem.task_name}", unit="step", leave=False)
            for t in bar:
                budget, proposed = self.step(problem, llm, embed, trajectory, seen, exemplars, t, steps)
                budgets.append(budget)
                proposing += proposed > 0
                if not proposing:  # a broken optimizer must not pass for a search that kept the start
                    trajectory.pop()
                    where = "" if llm.backend == "self" else f" at {getattr(llm, 'base_url', None) or 'the OpenAI API'}"
                    retried = "" if llm.backend == "self" else f" (after {cfg.max_retries} retries)"
                    raise OptimizerLLMError(
                        f"optimizer model {llm.model!r}{where} gave no usable proposal: every answer was empty "
                        f"or had no text between {START} and {END}{retried}"
                    )
                used = llm.usage.prompt_tokens + llm.usage.completion_tokens
                over = cfg.max_optimizer_tokens is not None and used >= cfg.max_optimizer_tokens
                state = {
                    "trajectory": [asdict(e) for e in trajectory],
                    "seen": sorted(seen),
                    "budgets": budgets,
                    "usage": llm.usage.as_dict(),
                    "proposing_steps": proposing,
                }
                best_score = max(e.score for e in trajectory)
                reason = "no_proposals" if not proposed else "max_optimizer_tokens" if over else None
                stop = problem.log.step_done(best_score, state, reason)
                if stop and (t < steps or stop == "no_proposals"):
                    stop_reason = stop
                    break
            else:
                stop_reason = "steps" if cfg.steps else "completed"
        except OptimizerLLMError as err:
            problem.record({"kind": "gpo_stopped", "step": len(trajectory), "error": err.detail})
            raise OptimizerLLMError(
                f"{problem.task_name}: {err.detail}. Stopped at step {len(trajectory)} of {steps}; every optimizer call, "
                f"scored instruction and step so far is in {_log_path(problem)}"
            ) from None

        best = max(trajectory, key=lambda e: (e.score, -e.step))
        return OptimizationResult(
            best.instruction,
            stop_reason,
            details={
                "steps": steps,
                "retrieval": cfg.retrieval,
                "embedding_model": cfg.embedding_model if cfg.retrieval == "relevance" else None,
                "order": cfg.order,
                "update": cfg.update,
                "schedule": cfg.schedule,
                "budgets": budgets,
                "optimizer": {
                    "backend": llm.backend,
                    "model": llm.model,
                    "base_url": cfg.optimizer_base_url,
                    "usage": llm.usage.as_dict(),
                },
                "exemplar_train_positions": positions,
                "trajectory": [{"step": e.step, "instruction": e.instruction, "dev_score": e.score} for e in trajectory],
                "selection": SELECTION_RULE,
                "best_step": best.step,
                "search_seconds": round(time.perf_counter() - started, 3),
            },
        )

    def step(
        self,
        problem: Problem,
        llm: OptimizerLLM,
        embed: Embed | None,
        trajectory: list[Entry],
        seen: set[str],
        exemplars: list[tuple[str, str]],
        t: int,
        steps: int,
    ) -> tuple[int | None, int]:
        """One GPO step: propose, score new candidates, move to the best one not yet chosen.
        Returns the word budget and the number of distinct candidates parsed."""
        cfg: GPOConfig = self.config
        start = time.perf_counter()
        current = trajectory[-1]
        shown = retrieve(trajectory, cfg.k, cfg.retrieval, embed)
        if cfg.order == "ascending":
            shown.reverse()
        budget = word_budget(t, steps, cfg.schedule, cfg.budget_start, cfg.budget_end, cfg.warmup)
        prompt = meta_prompt(shown, current.instruction, exemplars, cfg.update, budget)
        seed = zlib.crc32(f"gpo:{problem.seed}:{problem.task_name}:{t}".encode())
        before, sampling_start = llm.usage.as_dict(), time.perf_counter()
        texts = llm.sample(prompt, cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
        # this step's optimizer calls: wall seconds and what they cost (retries included)
        sampling = {"seconds": round(time.perf_counter() - sampling_start, 3)}
        sampling.update((name, value - before[name]) for name, value in llm.usage.as_dict().items())

        candidates = list(dict.fromkeys(c for c in map(parse_candidate, texts) if c))
        scored = []
        for text in candidates:
            scored.append(
                {
                    "instruction": text,
                    "dev_score": problem.score(text, "dev"),
                    "new": text not in seen,
                    "word_edits": word_edits(current.instruction, text),
                }
            )
            seen.add(text)
        chosen = self.choose(scored, {e.instruction for e in trajectory})
        entry = Entry(chosen["instruction"], chosen["dev_score"], t) if chosen else Entry(current.instruction, current.score, t)
        trajectory.append(entry)
        problem.record(
            {
                "kind": "gpo_step",
                "step": t,
                "budget": budget,
                "shown": [{"instruction": e.instruction, "dev_score": e.score, "step": e.step} for e in shown],
                "samples": len(texts),
                "sampling": sampling,
                "unparsed": sum(1 for x in texts if not parse_candidate(x)),
                "candidates": scored,
                "chosen": entry.instruction,
                "dev_score": entry.score,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        return budget, len(candidates)

    @staticmethod
    def choose(scored: list[dict[str, Any]], in_trajectory: set[str]) -> dict[str, Any] | None:
        """The best-dev candidate not already in the trajectory (ties: earlier sampled); if all
        are, the best candidate; None if nothing was parsed (the current instruction stays)."""
        pool = [c for c in scored if c["instruction"] not in in_trajectory] or scored
        return max(pool, key=lambda c: c["dev_score"]) if pool else None
