"""The papers' tables as `lm_eval` commands: print them (--dry-run), or run them and compare.

    python scripts/reproduce.py greater --table 1 --dry-run
    python scripts/reproduce.py gpo --table 5 --optimizer-model gpt-3.5-turbo --dry-run
    python scripts/reproduce.py greater --table 1              # run (GPU, model weights), then compare
    python scripts/reproduce.py greater --table 1 --compare-only

GReaTer Table 1 (shared/reference/greater.md §8): Llama-3-8B-Instruct and Gemma-2-9B-it, each the
optimizer of its own prompts, on 21 BBH tasks, GSM8k and FOLIO; plus the ZS-CoT row as
`--optimize none` on the same rows. GPO Table 5 (gpo.md §14): Llama-2-7b-chat as task model, the
optimizer LLM at an endpoint, on BBH (27 tasks), GSM8k and MMLU; the CoT row is the baseline
(`compare_baseline=true`, the initial "Let's think step by step."). Every command uses
`split=paper` (each paper's split sizes). Before the commands, each one's projected cost
(the optimizer's own upper bounds, from the paper's split sizes) and expected wall time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from lm_eval_promptopt.harness.splits import SplitPlan, plan_splits, resolve_split
from lm_eval_promptopt.optimizers import get_optimizer
from lm_eval_promptopt.options import parse_optimize_args
from lm_eval_promptopt.report.leaderboard import load_run
from lm_eval_promptopt.report.run_report import projected_cost_table


GREATER_BBH = (
    "boolean_expressions causal_judgement date_understanding disambiguation_qa formal_fallacies geometric_shapes "
    "hyperbaton logical_deduction_five_objects movie_recommendation multistep_arithmetic_two navigate object_counting "
    "penguins_in_a_table reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks "
    "sports_understanding temporal_sequences tracking_shuffled_objects_five_objects web_of_lies"
).split()  # greater.md §7: the 21 tasks of the paper's BBH average
ALL_BBH = sorted(GREATER_BBH + ["dyck_languages", "word_sorting", "logical_deduction_three_objects",
                                "logical_deduction_seven_objects", "tracking_shuffled_objects_three_objects",
                                "tracking_shuffled_objects_seven_objects"])  # fmt: skip
BBH_SIZES = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}  # all others 250
# Docs per split of the datasets lm-eval loads, and the split names of their task configs: enough
# for the plugin's own `plan_splits` to choose the paper's plan without loading a task. MMLU's
# validation split has up to 20 docs per subject that GPO's plan uses (fewer in some subjects).
SPLITS = {
    "bbh": ({"test_split": "test"}, {"test": 250}),
    "gsm8k": (
        {"training_split": "train", "fewshot_split": "train", "test_split": "test"},
        {"train": 7473, "test": 1319},
    ),
    "folio": ({"training_split": "train", "validation_split": "validation"}, {"train": 1001, "validation": 203}),
    "mmlu": (
        {"validation_split": "validation", "fewshot_split": "dev", "test_split": "test"},
        {"dev": 5, "validation": 20, "test": 100},
    ),
}
MMLU_SUBJECTS = 57

# The papers' numbers (accuracy %): {model: {column: (method, baseline)}}.
GREATER_TABLE_1 = {
    "google/gemma-2-9b-it": {"GSM8K": (89.4, 88.6), "BBH": (76.6, 71.7), "FOLIO": (69.1, 65.0)},
    "meta-llama/Meta-Llama-3-8B-Instruct": {"GSM8K": (82.6, 79.6), "BBH": (68.7, 62.2), "FOLIO": (62.6, 58.6)},
}
GPO_TABLE_5 = {
    "meta-llama/Llama-2-7b-chat-hf": {
        "BBH": (35.43, 29.91), "GSM8K": (28.33, 24.00), "MMLU STEM": (35.00, 32.53), "MMLU Hum.": (38.84, 37.05),
        "MMLU Social": (46.61, 41.05), "MMLU Other": (38.60, 36.94), "MMLU avg": (39.14, 36.36),
    }
}  # fmt: skip
# GReaTer's own logs (greater.md §6.2): median seconds per step at 50 train docs, on 2 x 80 GB
# GPUs. Divided by our projected model calls per step at 50 train docs, they give seconds per
# model call. GPO has no logged timings: 1 s per call is our guess (--seconds-per-call).
GREATER_SECONDS_PER_STEP = {"meta-llama/Meta-Llama-3-8B-Instruct": 266, "google/gemma-2-9b-it": 209}
DEFAULT_SECONDS_PER_CALL = 1.0


@dataclass
class Job:
    """One `lm_eval` command: a model on one dataset of the table."""

    paper: str
    model: str
    dataset: str
    tasks: list[str]
    optimize: str
    optimize_args: str
    leaves: list[str]
    """The leaf tasks (one per MMLU subject), for the projected cost."""
    out: Path
    chat: bool = True

    def command(self) -> list[str]:
        return [
            "lm_eval", "--model", "hf", "--model_args", f"pretrained={self.model},dtype=bfloat16",
            "--tasks", ",".join(self.tasks), *(["--apply_chat_template"] if self.chat else []), "--batch_size", "auto",
            "--optimize", self.optimize, "--optimize_args", self.optimize_args, "--output_path", str(self.out),
        ]  # fmt: skip


def jobs(paper: str, table: int, args: argparse.Namespace) -> list[Job]:
    out = Path(args.out) / f"{paper}_table{table}"
    seeds = [int(s) for s in str(args.seeds).split(",")]
    result = []
    if paper == "greater":
        if table != 1:
            raise SystemExit("reproduce.py: greater has Table 1 (main results); see greater.md §8")
        datasets = {
            "BBH": [f"bbh_cot_zeroshot_{t}" for t in GREATER_BBH],
            "GSM8K": ["gsm8k_cot_zeroshot"],
            "FOLIO": ["folio_cot_zeroshot"],
        }
        for model in GREATER_TABLE_1:
            for dataset, leaves in datasets.items():
                for seed in seeds:
                    where = out / model.split("/")[-1] / dataset / f"seed{seed}"
                    result.append(Job(paper, model, dataset, leaves, "greater",
                                      f"split=paper,seed={seed},keep_initial=false,compare_baseline=true", leaves, where / "greater"))  # fmt: skip
                    result.append(
                        Job(
                            paper,
                            model,
                            dataset,
                            leaves,
                            "none",
                            f"split=greater,seed={seed}",
                            leaves,
                            where / "zs_cot",
                        )
                    )
        return result
    if table != 5:
        raise SystemExit("reproduce.py: gpo has Table 5 (main results); see gpo.md §14")
    endpoint = f"optimizer_model={args.optimizer_model}" + (
        f",optimizer_base_url={args.optimizer_base_url}" if args.optimizer_base_url else ""
    )
    datasets = {
        "BBH": [f"bbh_cot_zeroshot_{t}" for t in ALL_BBH],
        "GSM8K": ["gsm8k_cot_zeroshot"],
        "MMLU": [f"mmlu_subject_{i}" for i in range(MMLU_SUBJECTS)],
    }
    tasks = {"BBH": ["bbh_cot_zeroshot"], "GSM8K": ["gsm8k_cot_zeroshot"], "MMLU": ["mmlu"]}
    for model in GPO_TABLE_5:
        for dataset, leaves in datasets.items():
            for seed in seeds:
                where = out / model.split("/")[-1] / dataset / f"seed{seed}" / "gpo"
                result.append(Job(paper, model, dataset, tasks[dataset], "gpo",
                                  f"split=paper,seed={seed},compare_baseline=true,{endpoint}", leaves, where))  # fmt: skip
    return result


def paper_plan(task: str, options) -> SplitPlan:
    """The plan `lm_eval` will choose for `task` under `options` (zero-shot: no exemplars to exclude)."""
    family = next(f for f in SPLITS if task.startswith(f"{f}_"))
    names, sizes = SPLITS[family]
    if family == "bbh":
        sizes = {"test": BBH_SIZES.get(task.removeprefix("bbh_cot_zeroshot_"), 250)}
    splits = {k: None for k in ("training_split", "validation_split", "test_split", "fewshot_split")} | names
    config = SimpleNamespace(**splits, dataset_path=None)
    return plan_splits(task, config, options, sizes.get, lambda split: set())


def projected(job: Job) -> tuple[str, dict[str, int]]:
    """The optimizer's own projected-cost table for the paper's plans (no model or data is loaded)."""
    optimizer_cls = get_optimizer(job.optimize)
    text = job.optimize_args
    if job.optimize == "gpo" and "optimizer_base_url=" not in text and "optimizer_model=self" not in text:
        text += ",optimizer_base_url=http://cost.invalid/v1"  # the endpoint changes no cost; no API key needed to count
    options, config = parse_optimize_args(text, optimizer_cls.name, optimizer_cls.config_class)
    options = resolve_split(options, optimizer_cls.name)
    optimizer = optimizer_cls(config)
    plans = {task: paper_plan(task, options) for task in job.leaves}
    total = {"harness_evaluations": 0, "model_calls": 0, "optimizer_calls": 0}
    for plan in plans.values():
        cost = optimizer.projected_cost(len(plan.train.indices), len(plan.dev.indices))
        total = {k: total[k] + cost[k] for k in total}
    return projected_cost_table(optimizer, plans), total


def wall_hours(job: Job, total: dict[str, int], args: argparse.Namespace) -> float:
    per_call = args.seconds_per_call or DEFAULT_SECONDS_PER_CALL
    if args.seconds_per_call is None and job.model in GREATER_SECONDS_PER_STEP:
        greater = get_optimizer("greater")(get_optimizer("greater").config_class())
        calls_per_step = greater.projected_cost(50, 0)["model_calls"] / greater.config.steps
        per_call = GREATER_SECONDS_PER_STEP[job.model] / calls_per_step
    return (total["model_calls"] * per_call + total["optimizer_calls"] * args.seconds_per_optimizer_call) / 3600


def ours(job: Job) -> dict[str, tuple[float | None, float | None]]:
    """dataset column -> (optimized, baseline) in %, from the job's newest results JSON."""
    files = sorted(job.out.rglob("results_*.json"))
    if not files:
        return {}
    run = load_run(files[-1])

    def pct(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return 100 * sum(present) / len(present) if present else None

    leaves = [c for name, c in run.cells.items() if name not in run.groups]
    if job.dataset == "BBH":  # the papers' BBH is the unweighted mean over the tasks
        return {"BBH": (pct([c.score for c in leaves]), pct([c.baseline for c in leaves]))}
    if job.dataset == "MMLU":
        names = {
            "MMLU STEM": "mmlu_stem",
            "MMLU Hum.": "mmlu_humanities",
            "MMLU Social": "mmlu_social_sciences",
            "MMLU Other": "mmlu_other",
            "MMLU avg": "mmlu",
        }
        return {
            col: (pct([run.cells[g].score]), pct([run.cells[g].baseline])) for col, g in names.items() if g in run.cells
        }
    return {job.dataset: (pct([c.score for c in leaves]), pct([c.baseline for c in leaves]))}


def compare(paper: str, all_jobs: list[Job]) -> str:
    """Paper vs ours, per model and reported column (ours: mean over seeds)."""
    table = GREATER_TABLE_1 if paper == "greater" else GPO_TABLE_5
    method, base = ("GReaTer", "ZS-CoT") if paper == "greater" else ("GPO", "CoT")
    lines = [
        f"| model | column | paper {method} | ours {method} | paper {base} | ours {base} | ours gain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, columns in table.items():
        found: dict[str, list[tuple[float | None, float | None]]] = {}
        for job in all_jobs:
            if job.model != model:
                continue
            for column, (score, baseline) in ours(job).items():
                if job.optimize == "none":  # the ZS-CoT run: its score is the baseline column
                    score, baseline = None, score
                elif job.optimize == "greater":  # its own baseline is GReaTer's initial prompt, not ZS-CoT
                    baseline = None
                found.setdefault(column, []).append((score, baseline))
        for column, (paper_method, paper_base) in columns.items():
            values = found.get(column, [])
            mine = [_mean([v[0] for v in values]), _mean([v[1] for v in values])]
            gain = None if None in mine else mine[0] - mine[1]
            lines.append(
                f"| {model} | {column} | {paper_method:.2f} | {_pct(mine[0])} | {paper_base:.2f} | {_pct(mine[1])} | {_pct(gain, signed=True)} |"
            )
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _pct(value: float | None, signed: bool = False) -> str:
    return "not run" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paper", choices=["greater", "gpo"])
    parser.add_argument("--table", type=int, required=True, help="greater: 1; gpo: 5 (the main tables)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and their projected cost; run nothing"
    )
    parser.add_argument(
        "--compare-only", action="store_true", help="run nothing; compare the results already under --out"
    )
    parser.add_argument("--out", default="runs/reproduce", help="results go under OUT/<paper>_table<N>/")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds (GPO's table: the mean of 3 runs, e.g. 0,1,2)"
    )
    parser.add_argument(
        "--optimizer-model",
        default="gpt-3.5-turbo",
        help="gpo: the optimizer LLM (the paper's gpt-3.5-turbo; `self` for the task model)",
    )
    parser.add_argument(
        "--optimizer-base-url", default=None, help="gpo: an OpenAI-compatible endpoint (default: the OpenAI API)"
    )
    parser.add_argument(
        "--seconds-per-call",
        type=float,
        default=None,
        help="for the wall-time estimate (default: from GReaTer's logged seconds per step; 1.0 otherwise)",
    )
    parser.add_argument(
        "--seconds-per-optimizer-call", type=float, default=3.0, help="for the wall-time estimate of endpoint calls"
    )
    args = parser.parse_args(argv)
    all_jobs = jobs(args.paper, args.table, args)

    if not args.compare_only:
        total_hours = 0.0
        for job in all_jobs:
            table, total = projected(job)
            hours = wall_hours(job, total, args)
            total_hours += hours
            print(f"# {job.paper} table {args.table}: {job.model} on {job.dataset} ({job.optimize}); expected wall time "
                  f"~{hours:.1f} h ({hours / len(job.leaves):.2f} h per task, {total['model_calls']} model calls, {total['optimizer_calls']} optimizer calls)")  # fmt: skip
            print("\n".join(f"#   {line}" for line in table.splitlines()[1:] if line.startswith("| total")))
            print(shlex.join(job.command()))
        print(
            f"# {len(all_jobs)} commands, expected search wall time ~{total_hours:.0f} h in all, one after another on one GPU"
        )
    if args.dry_run:
        print("\nPaper numbers to compare (accuracy %):")
        print(compare(args.paper, []))
        return
    if not args.compare_only:
        for job in all_jobs:
            print(f"$ {shlex.join(job.command())}", flush=True)
            started = time.time()
            code = subprocess.run(job.command(), check=False).returncode
            print(
                f"# {job.dataset} ({job.optimize}) finished in {(time.time() - started) / 3600:.2f} h, exit {code}",
                flush=True,
            )
            if code != 0:
                sys.exit(code)
    print(compare(args.paper, all_jobs))
    summary = Path(args.out) / f"{args.paper}_table{args.table}" / "paper_vs_ours.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"table": compare(args.paper, all_jobs)}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
