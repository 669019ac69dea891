"""What a plain `--optimize` run records and prints, and the leaderboard's gates, inputs and chart, on
real runs of the tiny model on two planted tasks (issue 21: --limit, output noise, --output_path
NAME.json, gate tolerance and missing baselines, wrong-shape JSON, a prompts file copied away from its
run, what the dev-score plot and the chart say, the demo's file list after cached searches)."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import OFFLINE, REPO, lm_eval_command, squeezed

from lm_eval_promptopt.cli import main
from lm_eval_promptopt.report.board import UNCHECKED_MARK
from lm_eval_promptopt.report.leaderboard import leaderboard, render, scores_table
from lm_eval_promptopt.report.run_report import dev_plot_labels


TASKS = "planted_largest,planted_first"
METRIC = "exact_match,get-answer"


def lm_eval(args: list[str], cwd: Path, cache: Path) -> str:
    """One real `lm_eval` run in `cwd` (not a git checkout), stdout and stderr as one stream, unbuffered:
    what a terminal shows, in order."""
    env = {
        **os.environ,
        **OFFLINE,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "LM_EVAL_PROMPTOPT_CACHE": str(cache),
    }
    proc = subprocess.run(
        [*lm_eval_command(), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A candidates search on two planted tasks with --limit 0.05 and --output_path out/run.json, the
    same command again (cached searches), and the chosen prompts given back from a copy of
    optimized_prompts.json that left its run folder."""
    root = tmp_path_factory.mktemp("records")
    common = ["--model", "hf", "--model_args", f"pretrained={tiny_model}", "--device", "cpu", "--batch_size", "32",
              "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", TASKS]  # fmt: skip
    search = [*common, "--limit", "0.05", "--optimize", "candidates",
              "--optimize_args", "candidates=Please answer.|Find it.,train_size=2,dev_size=4,compare_baseline=true"]  # fmt: skip
    first = lm_eval([*search, "--output_path", str(root / "out" / "run.json")], root, root / "cache")
    cached = lm_eval([*search, "--output_path", str(root / "again")], root, root / "cache")
    (results,) = (root / "out").glob("run_*.json")
    run_dir = Path(json.loads(results.read_text())["prompt_optimization"]["run_dir"])
    copy = root / "copied" / "optimized_prompts.json"
    copy.parent.mkdir()
    shutil.copy(run_dir / "optimized_prompts.json", copy)
    lm_eval(
        [*common, "--limit", "5", "--optimized_prompts", str(copy), "--output_path", str(root / "given")],
        root,
        root / "cache",
    )
    return {"root": root, "first": first, "cached": cached, "results": results, "given": root / "given"}


def cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", *map(str, args)])
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_limit_is_recorded_with_the_docs_evaluated(runs: dict):
    data = json.loads(runs["results"].read_text())
    assert data["config"]["limit"] == 0.05
    for task in TASKS.split(","):
        heldout = data["prompt_optimization"]["tasks"][task]["plan"]["heldout"]
        assert heldout["limit"] == 0.05 and heldout["planned_size"] == 200
        assert heldout["size"] == len(heldout["indices"]) == data["n-samples"][task]["effective"] == 10, (
            "ceil(0.05 x 200), as lm-eval counts"
        )
        assert (
            "--limit 0.05: the first 10 of its 200 held-out docs"
            in data["prompt_optimization"]["tasks"][task]["plan"]["rule"]
        )


def test_a_plain_run_prints_no_noise(runs: dict):
    first, cached = runs["first"], runs["cached"]
    assert first.count("Custom kwargs can be passed to `--metadata`") == 1, "lm-eval's per-task hint, once (it was 6)"
    assert "fatal: not a git repository" not in first + cached
    lines = [
        part for text in (first, cached) for part in re.split(r"[\r\n]", text) if "lm_eval_promptopt: planted" in part
    ]
    assert any("reusing the cached search" in line for line in lines)
    assert all(line.startswith("lm_eval_promptopt: ") for line in lines), "no line glued onto a progress bar"


def test_leaderboard_finds_results_of_output_path_json(runs: dict, capsys):
    out = runs["results"].parent
    for given in (out / "run.json", out):  # the path given to --output_path, and its folder
        code, md, err = cli([given], capsys)
        assert code == 0 and str(runs["results"]) in md, err


def _variant(runs: dict, name: str, stderr: float | None, delta: float | None) -> Path:
    """A copy of the first run's results with planted_largest at 0.5 ± `stderr`, `delta` from its
    baseline (None: no baseline measured)."""
    data = json.loads(runs["results"].read_text())
    data["results"] = {
        "planted_largest": {METRIC: 0.5, "exact_match_stderr,get-answer": "N/A" if stderr is None else stderr}
    }
    section = data["prompt_optimization"]
    section["tasks"] = {"planted_largest": section["tasks"]["planted_largest"]}
    section["baseline_vs_optimized"] = (
        []
        if delta is None
        else [{"name": "planted_largest", "metric": METRIC, "baseline": 0.5 - delta, "optimized": 0.5, "delta": delta}]
    )
    path = runs["root"] / "variants" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_regression_gate_has_a_tolerance_and_reports_missing_baselines(runs: dict, capsys):
    noise = _variant(runs, "noise", stderr=None, delta=-1e-10)
    assert cli([noise, "--fail-on-regression"], capsys)[0] == 0, "float noise is no regression"
    within = _variant(runs, "within", stderr=0.05, delta=-0.04)
    assert cli([within, "--fail-on-regression"], capsys)[0] == 0, "within one stderr (the default)"
    code, _, err = cli([within, "--fail-on-regression", "--regression-tolerance", "0.5se"], capsys)
    assert code == 1 and "regressed" in err and "beyond the tolerance 0.5 stderr = 0.0250" in err
    assert cli([within, "--fail-on-regression", "--regression-tolerance", "0.01"], capsys)[0] == 1
    beyond = _variant(runs, "beyond", stderr=None, delta=-0.04)
    assert cli([beyond, "--fail-on-regression"], capsys)[0] == 1, "no stderr reported: tolerance 0"

    missing = _variant(runs, "missing", stderr=0.05, delta=None)
    code, _, err = cli([missing, "--fail-on-regression"], capsys)
    assert code == 0 and "note:" in err and "has no baseline for planted_largest: not checked for regression" in err
    code, _, err = cli([missing, "--require-baseline"], capsys)
    assert code == 1 and "FAIL:" in err and "has no baseline for planted_largest" in err

    for bad in ("planted_largest=nan", "planted_largest=inf"):
        code, _, err = cli([runs["results"], "--fail-under", bad], capsys)
        assert code == 2 and "give a finite VALUE" in err and "Traceback" not in err
    code, _, err = cli([runs["results"], "--regression-tolerance", "-1se"], capsys)
    assert code == 2 and "--regression-tolerance takes Nse" in err
    _, help_text, _ = cli(["--help"], capsys)
    assert "stderr" in help_text and "default: 1se" in help_text


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ({"results": []}, "its `results` is not an object of task -> metrics"),
        ([], "it holds a JSON list, not an object"),
        ("no optimizer", "its `prompt_optimization` section names no `optimizer`"),
        ({"results": {}, "n-samples": {"x": 5}}, "not an lm-eval results JSON of the usual shape"),
    ],
)
def test_valid_json_of_the_wrong_shape_is_one_line_exit_2(runs: dict, content, says: str, capsys):
    if content == "no optimizer":
        content = json.loads(runs["results"].read_text())
        del content["prompt_optimization"]["optimizer"]
    path = runs["root"] / "shapes" / "results_wrong.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(content))
    code, _, err = cli([path], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_prompts_copied_away_from_their_run_are_flagged(runs: dict, capsys):
    (results,) = runs["given"].rglob("results_*.json")
    tasks = json.loads(results.read_text())["prompt_optimization"]["tasks"]
    assert all(t["details"]["transfer_check"]["check"] == "unchecked" for t in tasks.values())
    code, md, err = cli([runs["given"], runs["results"]], capsys)
    assert code == 0, "a flag, not a failure"
    rows = squeezed(scores_table(md)).splitlines()[2:]
    (given_row,) = [r for r in rows if "| none |" in r]  # --optimized_prompts runs as optimizer none
    (search_row,) = [r for r in rows if "| candidates |" in r]
    assert given_row.count(UNCHECKED_MARK) == 2 and UNCHECKED_MARK not in search_row
    flags = [line for line in md.splitlines() if line.startswith("- ") and "records no split plan" in line]
    assert sorted(f.split(":")[0] for f in flags) == ["- planted_first", "- planted_largest"] and "flag:" in err
    code, text, _ = cli([runs["given"], "--format", "csv"], capsys)
    assert all("unchecked source" in line for line in text.splitlines()[1:])


def test_dev_plot_says_what_is_plotted():
    greater = dev_plot_labels("greater")
    assert "per step" not in greater["title"] and "top-10 prompts, scored at the end" in greater["title"]
    assert "initial instruction first" in greater["title"] and greater["xlabel"].startswith(
        "harness evaluation on optimize-dev"
    )
    assert (
        "each candidate" in dev_plot_labels("candidates")["title"]
        and "each step's new candidates" in dev_plot_labels("gpo")["title"]
    )


def test_leaderboard_chart_keeps_labels_whole_and_says_when_task_counts_differ(runs: dict):
    one_task = _variant(runs, "one_task", stderr=0.05, delta=0.1)
    data = json.loads(one_task.read_text())
    data["model_name"] += "-one-task"  # a row of its own
    one_task.write_text(json.dumps(data))
    board = leaderboard([one_task, runs["results"]])
    page = render(board, "html")
    svg = page[page.index('<svg id="chart"') : page.index("</svg>")]
    assert 'style="overflow: visible"' in svg.split(">")[0]
    labels = re.findall(r'<text class="label" x="(\d+)"[^>]*>([^<]*)</text>', svg)
    assert [x for x, _ in labels] == ["0", "0"], "left-aligned at the chart's edge: nothing to their left to cut"
    for row, (_, text) in zip(board.rows, labels):
        assert text.startswith(html.escape(row.label)) and "…" not in text, "the whole label"
    assert sorted(text.rsplit("(", 1)[1] for _, text in labels) == ["mean of 1 task)", "mean of 2 tasks)"]
    assert "rows have different numbers of tasks" in page
    assert "different numbers" not in render(leaderboard([runs["results"]]), "html")


def test_demo_names_the_plot_only_where_the_run_wrote_one(runs: dict):
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    searched = Path(json.loads(runs["results"].read_text())["prompt_optimization"]["run_dir"])
    (again,) = (runs["root"] / "again").rglob("results_*.json")
    cached = Path(json.loads(again.read_text())["prompt_optimization"]["run_dir"])
    assert f"demo: optimize-dev scores plot: {searched / 'dev_scores.png'}" in demo.output_lines(searched)
    assert not (cached / "dev_scores.png").exists()
    assert not any("dev_scores.png" in line for line in demo.output_lines(cached))
    assert any(
        "no optimize-dev scores plot: the searches came from the cache" in line for line in demo.output_lines(cached)
    )
