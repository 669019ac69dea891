"""GReaTer's settings (`--optimize_args`) and the paper's fixed constants (shared/reference/greater.md)."""

from __future__ import annotations

from dataclasses import dataclass


INITIAL_PROMPT = "proper logical reasoning and think step by step. Finally give the actual correct answer."
FIXED_PREFIX = "Use"
"""The paper's fixed first word: the search optimizes the text after it."""
ANSWER_TEMPERATURE = 0.2  # logits / 0.2 in the answer cross-entropy
GRADIENT_FLUENCY = 0.2  # weight of the prompt NLL in the gradient loss
SELECTION_FLUENCY = 0.02  # weight of the prompt NLL in the selection criterion
CANDIDATES_SCORED = 3
MIN_CANDIDATES = 6
EXAMPLES_PER_INTERSECTION = 5
RESTART_BELOW = 0.12
TOP_KEPT = 10


@dataclass(frozen=True)
class GreaterConfig:
    steps: int = 125
    """Optimization steps (one instruction position each)."""
    topk: int = 5
    """Initial per-example top-k of the proposal (grown by 2 until 6 candidates remain)."""
    topq: int = 3
    """Random example subsets intersected per proposal; their intersections are unioned."""
    max_reasoning_tokens: int = 256
    """Cap on generated reasoning tokens (also capped by the task's max_gen_toks)."""
    extractor: str = "paper"
    """Text between the reasoning and the bare gold answer: `paper` (the paper's frame per answer
    type: "Therefore, the final answer (use exact format: ...) is $"), `task` (the task's own
    answer phrase, e.g. "So the answer is (" for BBH), or any other text, used as is."""
    proposal: str = "example"
    """`example`: propose from "{question}. Use {prompt prefix}" per example (the paper's layout);
    `rendered`: from the rendered prompt prefix (one distribution shared by all examples)."""
    harness_train: bool = False
    """Also score each step's chosen instruction on optimize-train with the harness (one harness
    evaluation per new instruction), recorded beside the criterion with their rank correlation."""
    batch_size: int | None = None
    """Cap on the sequences per forward/backward/generation batch; None: lm-eval's integer
    `--batch_size` where it is above 1, else none. Batches are sized to memory below it."""

    compile: bool = False
    """Run the greedy decoder's one-token steps through `torch.compile` (dynamic shapes, compiled
    once per process; uncompiled, with one logged line, where compiling fails). Off: on CPU it
    gave the same tokens, a tenth less generation time on a 4.5 M-parameter model and 14 % more
    on SmolLM2-135M (`scripts/bench_decode.py`); it is there for GPUs, where a decode step's
    kernel launches, not its FLOPs, can be the cost (`scripts/gpu_check.sh`)."""

    def __post_init__(self) -> None:
        for name in ("steps", "topk", "topq", "max_reasoning_tokens", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.proposal not in ("example", "rendered"):
            raise ValueError(f"proposal must be 'example' or 'rendered', got {self.proposal!r}")
