"""A deterministic stand-in model for tests: it answers right only when the instruction names the task.

It knows the gold answers of the shared BBH, MMLU and GSM8k data. A prompt containing
"focus on <key>" (key: the BBH subtask, the MMLU subject, or "arithmetic" for GSM8k) gets the
gold answer; any other prompt gets a wrong one (BBH, GSM8k) or always "A" (MMLU). So held-out
accuracy moves only through the instruction, and every number can be predicted from the data.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lm_eval.models  # noqa: F401  (register the built-in models first: lm-eval registry gotcha)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lm_eval_promptopt.optimizers import OptimizationResult, Optimizer, Problem, register_optimizer


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(path: Path):
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_gold(data: Path = DATA) -> dict[str, tuple[str, str]]:
    """question text -> (key, gold answer as the task's target)."""
    gold: dict[str, tuple[str, str]] = {}
    for path in sorted((data / "bbh").glob("*.jsonl")):
        for row in _rows(path):
            gold[row["input"].strip()] = (path.stem, row["target"])
    for path in sorted((data / "mmlu").glob("*.jsonl")):
        subject = path.name.split(".")[0]
        for row in _rows(path):
            # Questions recur across subjects and splits: key on the subject and the options too.
            options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"]))
            key = f"{subject.replace('_', ' ')}|{row['question'].strip()}{options}".strip()
            gold[key] = (subject, "ABCD"[row["answer"]])
    for path in sorted((data / "gsm8k").glob("*.jsonl")):
        for row in _rows(path):
            gold[row["question"].strip()] = ("arithmetic", row["answer"].split("####")[-1].strip())
    return gold


def question_of(context: str) -> str:
    """The evaluated doc's question: the last one in the prompt (after any few-shot turns)."""
    for marker, end in (("Q: ", "\nA:"), ("Question: ", "\nAnswer:")):
        if marker in context:
            return context.rsplit(marker, 1)[1].split(end)[0].strip()
    # MMLU: "...(with answers) about <subject>.\n\n<question>\nA. ..\nB. ..\nD. ..\nAnswer:"
    subject, block = context.split("(with answers) about ", 1)[-1].split(".\n\n", 1)
    return f"{subject}|{block.rsplit(chr(10) + 'Answer:', 1)[0].strip()}"


@register_model("oracle")
class Oracle(LM):
    def __init__(self, **_: object) -> None:
        super().__init__()
        self.gold = load_gold()

    def _lookup(self, context: str) -> tuple[str, str] | None:
        found = self.gold.get(question_of(context))
        if found and f"focus on {found[0]}" in context.lower():
            return found
        return None

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            found = self._lookup(request.args[0])
            if found is None:
                out.append("So the answer is nothing.")
            elif found[0] == "arithmetic":
                out.append(f"The answer is {found[1]}.\n#### {found[1]}")
            else:
                out.append(f"So the answer is {found[1]}.")
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            found = self._lookup(context)
            choice = continuation.strip()
            best = found[1] if found else "A"
            out.append((0.0 if choice == best else -1.0, choice == best))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [-1.0 for _ in requests]


@register_optimizer("flaky")
class Flaky(Optimizer):
    """Test optimizer: keeps the initial instruction, but crashes on the task named by $FLAKY_FAIL_ON."""

    def optimize(self, problem: Problem) -> OptimizationResult:
        if problem.task_name == os.environ.get("FLAKY_FAIL_ON"):
            raise RuntimeError(f"search crashed on {problem.task_name}")
        return OptimizationResult(problem.initial_instruction)


@register_optimizer("gate")
class Gate(Optimizer):
    """Test optimizer: one checkpointed step, then, while $GATE_DIR is set, it writes $GATE_DIR/waiting
    and waits for $GATE_DIR/open: a live search to interrupt or to start a second command against."""

    def optimize(self, problem: Problem) -> OptimizationResult:
        if problem.log.resumed is None:
            problem.record({"kind": "gate_step"})
            problem.log.step_done(problem.score(problem.initial_instruction), {"step": 1})
        gate = os.environ.get("GATE_DIR")
        if gate:
            Path(gate, "waiting").write_text(str(os.getpid()))
            while not Path(gate, "open").exists():
                time.sleep(0.05)
        return OptimizationResult(problem.initial_instruction)
