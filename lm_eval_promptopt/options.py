"""`--optimize_args`: parsing `k=v,...` and validating it into typed dataclasses."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import PromptOptError


SPLIT_PRESETS = ("seeded", "paper", "greater", "gpo")


@dataclass(frozen=True)
class RunOptions:
    """Options of the optimize-then-evaluate stage itself, shared by every optimizer."""

    seed: int = 0
    """Seeds the split plan and the optimizer."""
    train_size: int | None = None
    """Optimize-train docs per task (default: the task family's rule)."""
    dev_size: int | None = None
    """Optimize-dev docs per task (default: the task family's rule)."""
    split: str = "seeded"
    """seeded: the task family's seeded plan; paper: the plan of the optimizer's paper (GReaTer's
    rows for greater, GPO's sizes for gpo); greater / gpo: that paper's plan with any optimizer."""
    instruction: str | None = None
    """Initial instruction (default: the optimizer's own, e.g. empty for `none`)."""
    compare_baseline: bool = False
    """Also evaluate the held-out docs with the initial instruction and print the difference."""
    metric: str | None = None
    """Objective as `metric,filter` (default: the metric the task's group aggregates)."""
    refresh: bool = False
    """Search again even if the instruction cache or an interrupted run has this search."""
    max_evals: int | None = None
    """Stop a task's search after this many harness evaluations (checked between steps)."""
    time_limit: float | None = None
    """Stop a task's search after this many seconds (checked between steps)."""
    patience: int | None = None
    """Stop a task's search after this many steps in a row without a better step score."""
    keep_initial: bool = True
    """Keep the initial instruction where it scores better on optimize-dev than the search's
    choice (false: the search's own choice, as the papers pick it)."""
    exclude_source_docs: bool = False
    """With --optimized_prompts: evaluate held-out minus the docs the given instructions were
    optimized on (their file's recorded plan), instead of refusing a run whose held-out docs
    include them."""

    def __post_init__(self) -> None:
        if self.train_size is not None and self.train_size < 0:
            raise ValueError(f"train_size must be 0 or more, got {self.train_size}")
        if self.dev_size is not None and self.dev_size < 1:
            raise ValueError(f"dev_size must be at least 1, got {self.dev_size}")
        for name in ("max_evals", "time_limit", "patience"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0 (leave it out for no limit), got {getattr(self, name)}")
        if self.split not in SPLIT_PRESETS:
            raise ValueError(f"split must be one of {', '.join(SPLIT_PRESETS)}; got {self.split!r}")
        if self.split != "seeded" and (self.train_size is not None or self.dev_size is not None):
            raise ValueError(
                f"split={self.split} sets the sizes itself: leave out train_size and dev_size (or use split=seeded)"
            )
        if self.metric is not None and "," not in self.metric:
            raise ValueError(
                f"metric must read `metric,filter` (e.g. exact_match,flexible-extract), got {self.metric!r}"
            )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (JSON would keep the last)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise PromptOptError(f"--optimize_args: {key!r} is given twice")
        seen[key] = value
    return seen


def split_pairs(text: str) -> dict[str, Any]:
    """Parse `k=v,k2="a, b"` (quotes protect commas; values are strings) or a JSON object (values
    keep their JSON types, checked against the fields by `build`)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise PromptOptError(f"--optimize_args is not valid JSON: {err}") from None
    parts, current, quote = [], [], None
    for char in text:
        if quote:
            if char == quote:
                quote = None
            current.append(char)
        elif char in "\"'" and (not current or current[-1] == "="):
            quote = char
            current.append(char)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote:
        raise PromptOptError(f"--optimize_args has an unclosed {quote} quote: {text!r}")
    parts.append("".join(current))
    pairs: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PromptOptError(
                f"--optimize_args: {part!r} is not of the form key=value "
                "(write e.g. --optimize_args steps=10,seed=1; quote values that contain commas)"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key in pairs:
            raise PromptOptError(f"--optimize_args: {key!r} is given twice")
        pairs[key] = value
    return pairs


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _kind(annotation: Any) -> str:
    """How an error names what a field takes."""
    if typing.get_origin(annotation) is tuple:
        return "a list of strings"
    return _KINDS[annotation]


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Convert one value (a `k=v` string, or a JSON value) to the field's type, or raise a one-line
    message naming the key: a JSON value of another type is refused, never turned into text."""
    args = typing.get_args(annotation)
    kinds = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if type(None) in args and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))):
            return None
        kinds = [a for a in args if a is not type(None)]
    for kind in kinds:
        try:
            return _convert(raw, kind)
        except ValueError:
            continue
    shown = repr(raw) if isinstance(raw, str) else json.dumps(raw)
    raise PromptOptError(f"--optimize_args: {name}={shown} must be {' or '.join(_kind(k) for k in kinds)}") from None


def _convert(raw: Any, kind: Any) -> Any:
    """`raw` as `kind` (bool, int, float, str, or tuple[str, ...] from a JSON list); ValueError if it is not one."""
    if typing.get_origin(kind) is tuple:
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise ValueError
    if isinstance(raw, str) and kind is not str:
        lowered = raw.lower()
        if kind is bool and lowered in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return lowered in ("true", "1", "yes", "on")
        if kind is bool:
            raise ValueError
        raw = int(raw) if kind is int else float(raw)
    if kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            raise ValueError
        return float(raw)
    if type(raw) is kind:  # (bool is not an int here)
        return raw
    raise ValueError


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from parsed values, naming `where` in every error."""
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise PromptOptError(f"--optimize_args ({where}): {err}") from None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def parse_optimize_args(text: str | None, optimizer_name: str, config_class: type) -> tuple[RunOptions, Any]:
    """Split `--optimize_args` between the run options and the optimizer's own config."""
    pairs = split_pairs(text or "")
    run_keys, opt_keys = set(field_names(RunOptions)), set(field_names(config_class))
    unknown = sorted(set(pairs) - run_keys - opt_keys)
    if unknown:
        raise PromptOptError(
            f"--optimize_args: unknown key(s) {', '.join(unknown)} for optimizer {optimizer_name!r}; "
            f"valid keys: {', '.join(sorted(run_keys | opt_keys))}"
        )
    options = build(RunOptions, {k: v for k, v in pairs.items() if k in run_keys}, "run options")
    config = build(config_class, {k: v for k, v in pairs.items() if k in opt_keys}, optimizer_name)
    return options, config
