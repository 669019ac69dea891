"""The real-model study: SmolLM2-135M-Instruct (offline) on real BBH, GSM8k, FOLIO and MMLU tasks,
every optimizer against the model's default prompt on the same held-out docs.

    python scripts/real_study.py                 # run (resumable: finished units are kept), then write the page
    python scripts/real_study.py --page-only     # rewrite docs/real_study.md from the finished units
    python scripts/real_study.py --dry-run       # print the lm_eval commands

One unit is one `lm_eval --optimize ...` run of one optimizer on every task (one process: lm-eval's
start-up costs about a minute on a loaded machine), with `--log_samples`, under OUT/units/<optimizer>/;
a killed unit resumes in its run folder, its finished tasks reused. Every optimizer gets the same seeded split plan (same seed and
sizes), so the held-out docs (the first `--heldout` of them, `--limit`) are the same docs; the
baseline is `--optimize none` with no instruction: lm-eval's own prompt, the chat template's own
system message included. The page (docs/real_study.md, a plot, the leaderboard HTML) has per task
and optimizer: held-out score with a 95 % Wilson interval, the paired difference against the
baseline with a 95 % paired-bootstrap interval and McNemar's exact test, the optimized and the
reported metric, the chosen instruction, search and run seconds, generated tokens, and per GReaTer
run its diagnosis (criterion vs the harness's train score). The budgets are for a 2-core CPU;
`--print-gpu-command` prints the paper-scale command for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/support is in the checkout, not the package
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The top three of the 27-task screen (`--screen`, on the page) by flexible-extract, ties by strict-match.
BBH = [
    "bbh_cot_zeroshot_logical_deduction_seven_objects",
    "bbh_cot_zeroshot_sports_understanding",
    "bbh_cot_zeroshot_penguins_in_a_table",
]
TASKS = [*BBH, "gsm8k_cot_zeroshot", "folio_mc", "mmlu_marketing"]
OPTIMIZERS = ["none", "candidates", "gpo", "greater"]
CANDIDATES = [
    "Think step by step, then give the final answer.",
    "Answer briefly. End with: So the answer is <answer>.",
]
SIZES = "seed=0,train_size=4,dev_size=6"
SETTINGS = {
    "none": SIZES,
    "candidates": f"{SIZES},candidates='{'|'.join(CANDIDATES)}'",
    "gpo": f"{SIZES},optimizer_model=self,steps=1,samples=2,max_tokens=64,retrieval=recency",
    "greater": f"{SIZES},steps=3,max_evals=5,harness_train=true",  # max_evals: initial on dev, 3 harness train scores, 1 final dev
}
GEN_TOKENS = 32
HELDOUT = 100
# Paper scale, for a GPU: the papers' own plans and budgets, held-out as large as the data gives.
GPU_SETTINGS = {  # one plan for all (GReaTer's Table 1 rows; MMLU: the seeded default), so the differences stay paired
    "none": "split=greater",
    "candidates": f"split=greater,candidates='{'|'.join(CANDIDATES)}'",
    "gpo": "split=greater,optimizer_model=self",
    "greater": "split=greater,harness_train=true",
}
# Relative cost of a unit in held-out-doc evaluations (for the progress bar's first estimate).
WEIGHT = {"none": 1.0, "candidates": 1.9, "gpo": 2.4, "greater": 3.2}
SCREEN_LIMIT = 8  # real_study_page.SCREEN_DOCS


def env() -> dict[str, str]:
    folio = REPO.parent / "shared" / "data" / "folio"
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FOLIO_DATA_DIR": str(folio),
    }


def command(
    model: Path, tasks_dir: Path, task: str, optimizer: str, out: Path, heldout: int, gpu: bool = False
) -> list[str]:
    """`task`: one task or a comma-separated list."""
    if gpu:
        return ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cuda", "--batch_size", "auto", "--apply_chat_template", "--tasks", task,
                "--optimize", optimizer, "--optimize_args", GPU_SETTINGS[optimizer], "--log_samples", "--output_path", str(out)]  # fmt: skip
    base = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args", f"pretrained={model}"]
    return [
        *base, "--device", "cpu", "--batch_size", "32", "--include_path", str(tasks_dir), "--apply_chat_template",
        "--tasks", task, "--gen_kwargs", f"max_gen_toks={GEN_TOKENS}", "--limit", str(heldout),
        "--optimize", optimizer, "--optimize_args", SETTINGS[optimizer], "--log_samples", "--output_path", str(out),
    ]  # fmt: skip


def part(tasks: list[str]) -> str:
    """The unit folder's suffix for a subset of the tasks (several processes may share the work)."""
    return "" if tasks == TASKS else "_" + "+".join(t.replace("bbh_cot_zeroshot_", "") for t in tasks)


def done(unit: Path) -> bool:
    return any(unit.rglob("results_*.json"))


def run_units(model: Path, tasks_dir: Path, out: Path, tasks: list[str], heldout: int, optimizers: list[str]) -> None:
    """Run every unfinished unit, with a bar over their relative costs whose estimate comes from
    the units finished in this process."""
    from tqdm.auto import tqdm

    todo = [
        o
        for o in optimizers
        if not done(out / "units" / o / part(tasks).lstrip("_") if part(tasks) else out / "units" / o)
    ]
    bar = tqdm(
        total=sum(WEIGHT[o] for o in todo),
        desc="real study",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} [{elapsed}<{remaining}]",
    )
    for optimizer in todo:
        log = out / f"units_{optimizer}{part(tasks)}.log"
        unit = out / "units" / optimizer / part(tasks).lstrip("_") if part(tasks) else out / "units" / optimizer
        unit.mkdir(parents=True, exist_ok=True)
        cmd = command(model, tasks_dir, ",".join(tasks), optimizer, unit, heldout)
        bar.set_postfix_str(optimizer)
        started = time.time()
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
            fh.flush()
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env(), check=False).returncode
        seconds = time.time() - started
        (unit / "unit.json").write_text(
            json.dumps({"command": cmd, "exit_code": code, "wall_s": round(seconds, 1), "load": os.getloadavg()}),
            encoding="utf-8",
        )
        if code != 0:
            tqdm.write(f"real study: {optimizer} failed (exit {code}); see {log}")
        bar.update(WEIGHT[optimizer])
    bar.close()


def run_screen(model: Path, tasks_dir: Path, out: Path) -> None:
    """The baseline of all 27 BBH CoT zero-shot tasks on `SCREEN_LIMIT` docs each (stock lm-eval)."""
    target = out / "screen"
    if done(target):
        return
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
           "--batch_size", "16", "--include_path", str(tasks_dir), "--apply_chat_template", "--tasks", "bbh_cot_zeroshot",
           "--gen_kwargs", f"max_gen_toks={GEN_TOKENS}", "--limit", str(SCREEN_LIMIT), "--output_path", str(target)]  # fmt: skip
    print("real study: screen:", shlex.join(cmd), flush=True)
    with open(out / "units_screen.log", "a", encoding="utf-8") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env(), check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "real_study_output"), help="where the units go")
    parser.add_argument("--page", default=str(REPO / "docs" / "real_study.md"), help="the markdown page to write")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help="comma-separated units to run (several studies with disjoint lists may run at once)",
    )
    parser.add_argument("--heldout", type=int, default=HELDOUT, help="held-out docs per task (--limit)")
    parser.add_argument(
        "--screen",
        action="store_true",
        help="first run the 27-task BBH baseline screen (what the BBH tasks were chosen by)",
    )
    parser.add_argument("--page-only", action="store_true", help="write the page from the finished units, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--print-gpu-command", action="store_true", help="print the paper-scale GPU commands")
    args = parser.parse_args()
    out, tasks = Path(args.out).resolve(), [t.strip() for t in args.tasks.split(",") if t.strip()]
    regenerate = shlex.join(["python", "scripts/real_study.py", *sys.argv[1:]]) if not args.page_only else None
    if args.print_gpu_command or args.dry_run:
        for o in OPTIMIZERS:
            model = Path("HuggingFaceTB/SmolLM2-135M-Instruct" if args.print_gpu_command else "MODEL")
            print(
                shlex.join(
                    command(
                        model,
                        Path("TASKS"),
                        ",".join(tasks),
                        o,
                        out / "units" / o,
                        args.heldout,
                        gpu=args.print_gpu_command,
                    )
                )
            )
        return
    from lm_eval_promptopt.models.smollm2 import smollm2_model
    from tests.support.testbed import write_local_task_overrides

    model = smollm2_model()
    tasks_dir = out / "local_tasks"
    if not tasks_dir.is_dir():
        write_local_task_overrides(tasks_dir, REPO.parent / "shared" / "data")
    if not args.page_only:
        out.mkdir(parents=True, exist_ok=True)
        start = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load": list(os.getloadavg()),
            "command": regenerate,
        }
        meta_path = out / "study.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"runs": []}
        meta["runs"].append(start)
        meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        began = time.time()
        if args.screen:  # first: it is what the BBH tasks were chosen by
            run_screen(model, tasks_dir, out)
        run_units(
            model,
            tasks_dir,
            out,
            tasks,
            args.heldout,
            [o.strip() for o in args.optimizers.split(",") if o.strip() in OPTIMIZERS],
        )
        meta = json.loads(meta_path.read_text())  # other studies (other --optimizers) may have written it since
        meta["runs"] = [
            r | {"wall_s": round(time.time() - began, 1), "end_load": os.getloadavg(), "command": regenerate}
            if r == start
            else r
            for r in meta["runs"]
        ]
        meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    from real_study_page import write_page

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )
    gpu = [
        shlex.join(
            command(
                Path("HuggingFaceTB/SmolLM2-135M-Instruct"),
                Path(),
                ",".join(tasks),
                o,
                Path(f"runs/real_study_gpu/{o}"),
                0,
                gpu=True,
            )
        )
        for o in OPTIMIZERS
    ]
    write_page(
        out,
        Path(args.page),
        tasks,
        OPTIMIZERS,
        model,
        machine,
        gpu,
        settings={
            "gen_tokens": GEN_TOKENS,
            "heldout": args.heldout,
            "optimize_args": SETTINGS,
            "candidates": CANDIDATES,
        },
    )


if __name__ == "__main__":
    main()
