"""Why a GReaTer search did or did not help: its criterion beside the harness's own train score,
and whether the gold answer is reachable at all after the extractor."""

from __future__ import annotations

from typing import Any

from ...logs import get_logger


logger = get_logger(__name__)

MOST = 0.5
"""A warning when the gold answer is near zero on more than this share of train docs."""


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), from 1."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation; None for fewer than 3 pairs or a constant side."""
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def diagnose(task: str, history: list[dict[str, Any]], extractor: str) -> dict[str, Any]:
    """The run's diagnosis for `details`, printing one warning line where the gold answer after
    the extractor is near zero on most train docs (mean over the steps' chosen prompts)."""
    steps = [h for h in history if "criterion" in h]
    pairs = [(-h["criterion"], h["harness_train_score"]) for h in steps if h.get("harness_train_score") is not None]
    near = [h["gold_near_zero"] for h in steps if h.get("gold_near_zero") is not None]
    share = sum(near) / len(near) if near else None
    if share is not None and share > MOST:
        fix = "try extractor=task" if extractor != "task" else "the model's answers rarely contain the gold at all"
        logger.warning(
            f"lm_eval_promptopt: {task}: greater: the gold answer has probability below 0.01 after the extractor on "
            f"{share:.0%} of train docs (the extractor frame does not match how the model answers, so the criterion "
            f"cannot see an instruction help); {fix}"
        )
    return {
        "gold_near_zero": share,
        "criterion_vs_harness_train": [
            {"step": h["step"], "criterion": h["criterion"], "harness_train_score": h.get("harness_train_score")}
            for h in steps
        ],
        "spearman_criterion_harness": spearman([a for a, _ in pairs], [b for _, b in pairs]),
    }
