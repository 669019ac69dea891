"""lm-eval's `simple_evaluate` arguments as one typed object, built once at the door.

Both ways in build it: the Python API (`lm_eval_promptopt.simple_evaluate`) from its keyword
arguments, and the `lm_eval --optimize` command from the arguments lm-eval's CLI passes to
`simple_evaluate`. The fields are the arguments the optimize-then-evaluate stage reads; the others
(`bootstrap_iters`, `log_samples`, `write_out`, ...) ride along in `passthrough`, untouched, to
lm-eval's own `simple_evaluate` for the held-out evaluation.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PromptOptError


def check_names(kwargs: dict[str, Any]) -> Any:
    """Refuse an argument that lm-eval's `simple_evaluate` does not take (naming the ones it does);
    its parameters otherwise."""
    from lm_eval.evaluator import simple_evaluate

    params = inspect.signature(simple_evaluate).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise PromptOptError(
            f"unknown lm-eval argument(s) {', '.join(unknown)}: lm_eval.simple_evaluate takes {', '.join(params)}"
        )
    return params


RUN_KEY_ARGS = ("model", "model_args", "tasks", "num_fewshot", "gen_kwargs", "limit", "apply_chat_template",
                "fewshot_as_multiturn", "system_instruction", "random_seed", "numpy_random_seed",
                "torch_random_seed", "fewshot_random_seed")  # fmt: skip
"""The settings that make a rerun "the same command" (it resumes)."""


@dataclass(frozen=True)
class EvalSettings:
    """The lm-eval arguments of one run (defaults: `lm_eval.evaluator.simple_evaluate`'s)."""

    model: Any
    """A registered model name (`hf`, `local-completions`, ...) or a built lm-eval `LM`."""
    tasks: list[Any]
    task_manager: Any
    """lm-eval's `TaskManager`, knowing our task folder and any `include_path`."""
    model_args: str | dict[str, Any] | None = None
    num_fewshot: int | None = None
    batch_size: int | str | None = None
    max_batch_size: int | None = None
    device: str | None = None
    use_cache: str | None = None
    limit: int | float | None = None
    gen_kwargs: str | dict[str, Any] | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    random_seed: int | None = None
    numpy_random_seed: int | None = None
    torch_random_seed: int | None = None
    fewshot_random_seed: int | None = None
    confirm_run_unsafe_code: bool = False
    predict_only: bool = False
    verbosity: str | int | None = None
    """lm-eval's log level where given (`--verbosity`); our loggers follow it."""
    evaluation_tracker: Any = None
    """lm-eval's tracker on the command line (it saves the results JSON); None from the API."""
    output_path: Path | None = None
    """Where run folders go (None: the default, ./lm_eval_promptopt_runs)."""
    passthrough: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_lm_eval(cls, kwargs: dict[str, Any], output_path: str | Path | None = None) -> EvalSettings:
        """From `simple_evaluate`'s keyword arguments; `output_path` defaults to the tracker's."""
        params = check_names(kwargs)
        values = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
        values.update(kwargs)
        tracker = values.get("evaluation_tracker")
        if output_path is None and tracker is not None and tracker.output_path:
            output_path = tracker.output_path
        typed = {f.name for f in dataclasses.fields(cls)} - {"output_path", "passthrough"}
        mine = {key: values.pop(key) for key in list(values) if key in typed}
        tasks = mine.get("tasks")
        mine["tasks"] = [tasks] if isinstance(tasks, str) else list(tasks or [])
        return cls(**mine, output_path=Path(output_path) if output_path else None, passthrough=values)

    def command_identity(self) -> dict[str, Any]:
        """The values of `RUN_KEY_ARGS`."""
        return {name: getattr(self, name) for name in RUN_KEY_ARGS}

    def seeds(self) -> dict[str, int | None]:
        """The four seeds, named as the run records name them."""
        return {
            "random": self.random_seed,
            "numpy": self.numpy_random_seed,
            "torch": self.torch_random_seed,
            "fewshot": self.fewshot_random_seed,
        }

    def lm_eval_kwargs(self, **changes: Any) -> dict[str, Any]:
        """Keyword arguments for lm-eval's `simple_evaluate`: these settings with `changes`."""
        own = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("output_path", "passthrough")
        }
        return {**own, **self.passthrough, **changes}

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The arguments that lm-eval's bare `evaluate()` takes as they are."""
        return {"apply_chat_template": self.apply_chat_template, "fewshot_as_multiturn": self.fewshot_as_multiturn,
                "confirm_run_unsafe_code": self.confirm_run_unsafe_code}  # fmt: skip
