"""The optimizer seam: the `Problem` an optimizer receives, its result, and the `Optimizer` interface.

An optimizer sees one leaf task as a sealed `Problem`: scores through the harness (`score`),
the optimize-train/dev docs (`docs`), the exact prompts lm-eval renders (`render`), gold targets
(`target`, `exemplar`, `choices`), the task facts it needs (`family`, `question`, `output_type`,
`generation_kwargs`, `target_delimiter`, `chat_template`), the model (`model`) and the `RunLog`
(`log`: records, per-step state, resume, replay, stop conditions). It touches no CLI argument,
file or lm-eval internal directly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..harness.setup import unwrap
from ..harness.task_facts import exemplar, gold_choice, raw_question
from ..run.log import RunLog


if TYPE_CHECKING:
    from ..harness.objective import Objective
    from ..harness.prompting import Rendered
    from ..harness.splits import SplitPlan

Split = Literal["train", "dev"]


@dataclass(frozen=True)
class NoConfig:
    """For optimizers without hyperparameters."""


@dataclass(frozen=True)
class Problem:
    """One leaf task to optimize: its docs, the harness-backed objective, the model, the run log.

    Not sealed: `lm`, `plan` and `objective` are the constructor's inputs, and optimizers use the
    methods and properties below. The one reach past them is `model`, the evaluated lm-eval model
    itself: GReaTer needs its Hugging Face model and tokenizer (`model.model`, `model.tokenizer`)
    for gradients, and GPO's `optimizer_model=self` generates with it.
    """

    task_name: str
    lm: Any
    plan: SplitPlan
    objective: Objective
    initial_instruction: str
    seed: int
    log: RunLog = field(default_factory=RunLog)
    """Records, per-step state and stop conditions (see `run/log.py`)."""

    def score(self, instruction: str, split: Split = "dev") -> float:
        """The task's primary metric for `instruction` on `split`, through lm-eval (memoized)."""
        return self.objective.score(instruction, split)

    def docs(self, split: Split) -> list[dict]:
        return self.objective.docs(split)

    def render(self, doc: dict, instruction: str) -> Rendered:
        """The exact prompt lm-eval sends for `doc`, with the instruction's character span."""
        return self.objective.render(doc, instruction)

    def target(self, doc: dict) -> str:
        return self.objective.target(doc)

    def exemplar(self, doc: dict) -> tuple[str, str]:
        """(question, gold answer) of `doc` as the task renders them."""
        return exemplar(self._task, doc)

    def question(self, doc: dict) -> str:
        """The question of `doc` alone, without the task's prompt frame."""
        return raw_question(self._task, doc, self.family)

    def choices(self, doc: dict) -> tuple[list[str], int]:
        """A multiple-choice doc's choices as text and the index of the gold one."""
        return gold_choice(self._task, doc)

    def record(self, entry: dict[str, Any]) -> None:
        """Append an entry (a scored candidate, a step) to this task's trajectory file."""
        self.objective.record(entry)

    @property
    def model(self) -> Any:
        """The evaluated lm-eval model, unwrapped from `--use_cache`'s `CachingLM`."""
        return unwrap(self.lm)

    @property
    def family(self) -> str:
        """The task family (bbh, mmlu, gsm8k, folio, other) of the split plan."""
        return self.plan.family

    @property
    def chat_template(self) -> bool:
        """Whether prompts go through the model's chat template."""
        return self.objective.placement.chat_template

    @property
    def output_type(self) -> str:
        """lm-eval's output type: generate_until, multiple_choice, loglikelihood, ..."""
        return self._task.get_config("output_type")

    @property
    def generation_kwargs(self) -> dict[str, Any]:
        """The task's generation settings (empty for other output types)."""
        return self._task.get_config("generation_kwargs") or {}

    @property
    def target_delimiter(self) -> str:
        """What lm-eval puts between the prompt and a multiple-choice continuation."""
        return self._task.config.target_delimiter

    @property
    def _task(self) -> Any:
        return self.objective.splits.task


@dataclass
class OptimizationResult:
    instruction: str
    stop_reason: str = "completed"
    details: dict[str, Any] = field(default_factory=dict)


class Optimizer(abc.ABC):
    """Searches an instruction for one `Problem`; touches no CLI, file or lm-eval internals."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoConfig
    default_instruction: ClassVar[str] = ""
    dev_scored: ClassVar[str] = "then each instruction the search scored, in search order"
    """What its optimize-dev evaluations after the initial instruction's are (the dev-score plot says it)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def optimize(self, problem: Problem) -> OptimizationResult: ...

    def check_model(self, model: Any) -> None:
        """Raise a PromptOptError if this optimizer cannot work with `model` (the `--model` name,
        or an lm-eval LM object); called before the model loads."""

    def preflight(self) -> None:
        """Load or check what the search will need (raising a PromptOptError), before the model
        loads and before any paid call."""

    def projected_cost(self, n_train: int, n_dev: int) -> dict[str, int]:
        """Upper bounds of the search's cost before it starts: `harness_evaluations` (each over
        `n_dev` docs), `model_calls` (requests to the evaluated model, harness ones included) and
        `optimizer_calls` (completions from a separate optimizer LLM)."""
        return {"harness_evaluations": 1, "model_calls": n_dev, "optimizer_calls": 0}
