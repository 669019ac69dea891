"""`--optimized_prompts`: no held-out doc may be a doc the given instructions were optimized on.

An earlier run's results JSON and `prompt_optimization.json` record each task's split plan with
its indices; an `optimized_prompts.json` is checked against the `prompt_optimization.json` beside
it. Where the source's optimize-train/dev docs overlap this run's held-out docs, the run is
refused with the settings that give the source's plan, or, with `exclude_source_docs=true`,
evaluates held-out minus those docs. A file that records no plan cannot be checked (one line).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PromptOptError
from ..harness.splits import SplitPlan, Subset
from ..logs import get_logger
from ..options import RunOptions


logger = get_logger(__name__)

PLAN_OPTIONS = ("seed", "split", "train_size", "dev_size")
"""The run options that choose a plan; the hint for the source's plan names those it changed."""


@dataclass(frozen=True)
class Source:
    """What a prompts file records about where its instructions were optimized."""

    file: Path
    plans_from: Path | None
    """The file holding the plans (`file`, or the prompt_optimization.json beside it); None: none."""
    tasks: dict[str, dict[str, Any]]
    """task -> its recorded outcome (`plan`, `source`, `final_instruction`)."""
    options: dict[str, Any]


def _section(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    section = data.get("prompt_optimization", data) if isinstance(data, dict) else None
    return section if isinstance(section, dict) and isinstance(section.get("tasks"), dict) else None


def read_source(file: Path) -> Source:
    """The plans recorded in `file`, or beside it for a run's own `optimized_prompts.json`."""
    candidates = [file] + (
        [file.with_name("prompt_optimization.json")] if file.name == "optimized_prompts.json" else []
    )
    for candidate in candidates:
        section = _section(candidate)
        if section is not None:
            return Source(file, candidate, section["tasks"], section.get("options") or {})
    return Source(file, None, {}, {})


def _optimize_docs(recorded: dict[str, Any], split: str) -> set[int]:
    """The recorded plan's optimize-train and -dev docs that belong to `split`."""
    return {
        i
        for role in ("train", "dev")
        if (recorded.get(role) or {}).get("split") == split
        for i in recorded[role].get("indices", [])
    }


def check_transfer(
    source: Source, given: dict[str, str], plans: dict[str, SplitPlan], exclude: bool
) -> dict[str, dict[str, Any]]:
    """Per task, what the check found (for the task's record). Refuses a run whose held-out docs
    include source optimize docs; with `exclude`, replaces those plans' held-out docs instead."""
    records: dict[str, dict[str, Any]] = {}
    unchecked, leaks = [], []
    for name, plan in plans.items():
        entry = source.tasks.get(name) or {}
        recorded = entry.get("plan")
        record: dict[str, Any] = {
            "file": str(source.file),
            "plans_from": str(source.plans_from) if source.plans_from else None,
        }
        # a plan counts only for the instruction its search chose (not an edited or a given one)
        if (
            not isinstance(recorded, dict)
            or entry.get("source") == "given"
            or entry.get("final_instruction") != given.get(name)
        ):
            records[name] = {**record, "check": "unchecked"}
            unchecked.append(name)
            continue
        heldout = plan.heldout
        used = _optimize_docs(recorded, heldout.split)
        overlap = used & set(heldout.indices)
        if not overlap:
            same = all(
                (recorded.get(r) or {}).get("indices") == list(plan.subset(r).indices)
                for r in ("train", "dev", "heldout")
            )
            records[name] = {**record, "check": "same_plan" if same else "no_overlap"}
        elif not exclude:
            leaks.append(f"{name}: {len(overlap)} of its {len(heldout.indices)} held-out docs")
        else:
            kept = tuple(i for i in heldout.indices if i not in used)
            if not kept:
                raise PromptOptError(
                    f"{name}: every held-out doc is a doc {source.file} was optimized on; nothing is left to evaluate"
                )
            rule = f"{plan.rule}; minus {len(overlap)} held-out docs the given instruction was optimized on (exclude_source_docs=true)"
            plans[name] = dataclasses.replace(
                plan, rule=rule, heldout=Subset(heldout.split, kept), heldout_is_whole_split=False
            )
            records[name] = {**record, "check": "excluded", "excluded_docs": len(overlap)}
            logger.info(
                f"lm_eval_promptopt: {name}: evaluating {len(kept)} held-out docs: left out the {len(overlap)} that {source.file} was optimized on"
            )
    if leaks:
        defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
        shown = [
            k
            for k in PLAN_OPTIONS
            if k == "seed" or source.options.get(k, defaults.get(k)) not in (None, defaults.get(k))
        ]
        same = ",".join(f"{k}={source.options[k]}" for k in shown if k in source.options)
        how = f"--optimize_args {same}" if same else "the source run's seed and sizes"
        raise PromptOptError(
            f"--optimized_prompts: {source.file} was optimized on docs held out here ({'; '.join(leaks)}); "
            f"for its plan rerun with {how} (same seed and sizes), or evaluate held-out minus those docs with "
            "--optimize_args exclude_source_docs=true"
        )
    if unchecked:
        which = (
            "records no split plan"
            if source.plans_from is None
            else f"records no plan for the instruction of {', '.join(unchecked)}"
        )
        logger.info(
            f"lm_eval_promptopt: {source.file} {which}, so whether it was optimized on this run's held-out docs cannot be "
            "checked (an earlier run's results JSON or prompt_optimization.json records the plan)"
        )
    return records
