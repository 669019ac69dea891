"""Why GReaTer does not find the planted keyword: its gradient ranking vs the true loss change.

For a neutral instruction on a planted task, at every instruction position, rank all allowed
tokens by GReaTer's gradient (as `Scorer.gradient` computes it, over the model's own reasoning),
and compare with the true answer loss after substituting a few tokens (the op's keywords, another
op's keyword, the gradient's favourite). Prints one block per position.

    python scripts/greater_planted_ranks.py [--op largest] [--instruction "Use please answer the question."]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from lm_eval_promptopt.harness.objective import Objective, TaskSplits, primary_metric
from lm_eval_promptopt.harness.prompting import Placement
from lm_eval_promptopt.harness.splits import plan_splits
from lm_eval_promptopt.optimizers.base import Problem
from lm_eval_promptopt.optimizers.greater import GreaterConfig, Search
from lm_eval_promptopt.options import RunOptions


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is in the checkout, not the package
from benchmarks import planted  # noqa: E402


def build(op: str, instruction: str, train: int, model: str | None) -> Search:
    name = f"planted_{op}"
    lm = HFLM(pretrained=model or str(planted.planted_model()), device="cpu", batch_size=16)
    task = TaskManager(include_path=str(planted.TASK_DIR)).load([name])["tasks"][name]
    splits = TaskSplits(task)
    plan = plan_splits(name, task.config, RunOptions(train_size=train, dev_size=20), splits.size, lambda s: set())
    objective = Objective(
        task_name=name, splits=splits, plan=plan, lm=lm, placement=Placement(chat_template=False),
        metric=primary_metric(name, task, {}), fewshot_seed=1234, record=lambda e: None,
        eval_kwargs={"apply_chat_template": False, "fewshot_as_multiturn": False, "confirm_run_unsafe_code": False},
    )  # fmt: skip
    config = GreaterConfig(proposal="rendered", extractor="task")  # the planted language's own phrase
    search = Search(config, Problem(name, lm, plan, objective, instruction, 0))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return search


@torch.no_grad()
def true_loss(g: Search, prompt: list[int], reasoning: list[list[int]]) -> tuple[float, float]:
    """Summed answer loss (CE of logits/0.2) and error rate, teacher-forced over `reasoning`."""
    seqs, answers, spans, owner = g.scorer.rows(prompt, reasoning)
    ids, mask = g.engine.batch(seqs)
    losses, errors, _ = g.scorer.losses(
        g.engine.hidden(mask, ids=ids), seqs, answers, spans, owner, list(range(len(g.examples)))
    )
    return float(sum(losses)), sum(errors) / len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", default="largest", choices=planted.OPS)
    parser.add_argument("--instruction", default="Use please answer the question.")
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--model", default=None, help="planted model dir (default: the cached one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    g = build(args.op, args.instruction, args.train, args.model)
    prompt = g.initial
    tok, reasoning = g.tok, g.scorer.reasoning(prompt)
    allowed = torch.nonzero(g.scorer.allowed).flatten().tolist()
    keyword_op = {w: op for op, words in planted.KEYWORDS.items() for w in words}
    base = true_loss(g, prompt, reasoning)
    print(f"instruction {g.text(prompt)!r}, {len(g.examples)} train docs; reasoning e.g. {tok.decode(reasoning[0])!r}")
    print(f"teacher-forced answer loss {base[0]:.1f}, train error {base[1]:.2f}")
    other = next(op for op in planted.OPS if op != args.op)
    for pos in range(len(prompt)):
        candidates = sorted(set(allowed) | {prompt[pos]})
        order = [candidates[i] for i in torch.argsort(g.scorer.gradient(prompt, pos, candidates, reasoning)).tolist()]
        words = [tok.decode([t]).strip().lower() for t in order]
        ranks: dict[str, int] = {}
        for i, w in enumerate(words):  # the best-ranked token for each keyword (" largest" or "largest")
            if keyword_op.get(w) == args.op:
                ranks.setdefault(w, i)
        print(f"\nposition {pos} ({tok.decode([prompt[pos]])!r}): gradient top 5 {words[:5]}; "
              f"rank of the op's keywords among {len(words)}: {dict(sorted(ranks.items(), key=lambda x: x[1]))}")  # fmt: skip
        for word in (*planted.KEYWORDS[args.op][:2], planted.KEYWORDS[other][0], words[0]):
            ids = tok.encode(" " + word, add_special_tokens=False)
            if len(ids) == 1:
                loss, error = true_loss(g, prompt[:pos] + ids + prompt[pos + 1 :], reasoning)
                print(
                    f"  substitute {word!r:>12}: true loss {loss:7.1f} ({loss - base[0]:+7.1f}), train error {error:.2f}"
                )


if __name__ == "__main__":
    main()
