"""`lm-eval-promptopt leaderboard` over real results JSONs: planted and tiny model, every format, flags, gates."""

from __future__ import annotations

import csv
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import CI_TASK, CI_TASKS, REPO, run_lm_eval, squeezed

from lm_eval_promptopt.cli import main
from lm_eval_promptopt.report.leaderboard import leaderboard, render, scores_table
from lm_eval_promptopt.report.leaderboard_html import chart_points


pytestmark = pytest.mark.xdist_group("ci_run")  # one worker builds the shared CI run

PLANTED_TASKS = str(REPO / "task_configs" / "planted")
METRIC = "exact_match,get-answer"


@pytest.fixture(scope="module")
def runs(ci_run: dict, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CI example's results (planted and tiny model, the planted group, seed 0), plus two more runs on planted_largest:
    a plain lm-eval run of the tiny model (a baseline-only row) and a planted run with another
    seed that picks a wrong keyword (keep_initial=false): a mixed split plan and a regression."""
    root = tmp_path_factory.mktemp("leaderboard")
    planted_model = ci_run["models"][0]
    common = [
        "--device",
        "cpu",
        "--batch_size",
        "32",
        "--include_path",
        PLANTED_TASKS,
        "--tasks",
        CI_TASK,
        "--limit",
        "10",
    ]
    wrong = "instruction=Please find the largest one.,candidates=Please find the smallest one.,keep_initial=false,seed=1,train_size=0,dev_size=10,compare_baseline=true"
    commands = [
        ["--model", "hf", "--model_args", f"pretrained={tiny_model}", *common, "--output_path", str(root / "plain")],
        ["--model", "hf", "--model_args", f"pretrained={planted_model}", *common, "--optimize", "candidates",
         "--optimize_args", wrong, "--output_path", str(root / "regressed")],
    ]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # side by side: most of each run is start-up on one core
        list(pool.map(run_lm_eval, commands))
    return {"ci": ci_run["out"] / "results", "plain": root / "plain", "regressed": root / "regressed"}


def results_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results_*.json"))]


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", *map(str, args)])
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_cells_are_the_results_jsons_numbers(runs: dict[str, Path]):
    board = leaderboard([runs["ci"], runs["plain"]])
    assert board.columns == [*CI_TASKS, "planted"] and board.groups == {"planted"}
    assert [(r.optimizer, r.sources) for r in board.rows].count(("candidates", {"search": 4})) == 2
    assert sum(r.optimizer == "baseline" for r in board.rows) == 1 and len(board.rows) == 3
    for data in results_of(runs["ci"]):
        row = next(r for r in board.rows if r.model == data["model_name"] and r.optimizer == "candidates")
        compared = {c["name"]: c for c in data["prompt_optimization"]["baseline_vs_optimized"]}
        for name in [*CI_TASKS, "planted"]:
            cell = row.cells[name]
            assert cell.score == data["results"][name][METRIC] == compared[name]["optimized"]
            assert cell.stderr == data["results"][name]["exact_match_stderr,get-answer"]
            assert cell.baseline == compared[name]["baseline"] and cell.delta == compared[name]["delta"]
            assert cell.docs == (40 if name == "planted" else 10)
        assert row.cells[CI_TASK].instruction == data["prompt_optimization"]["tasks"][CI_TASK]["final_instruction"]
    planted_row = next(r for r in board.rows if "planted-v1" in r.model)
    assert planted_row.cells[CI_TASK].score >= 0.9 and planted_row.cells[CI_TASK].baseline <= 0.6, (
        "the planted keyword wins"
    )
    (plain,) = results_of(runs["plain"])
    baseline_row = next(r for r in board.rows if r.optimizer == "baseline")
    assert (
        baseline_row.cells[CI_TASK].score == baseline_row.cells[CI_TASK].baseline == plain["results"][CI_TASK][METRIC]
    )
    assert baseline_row.cells[CI_TASK].delta is None and "planted" not in baseline_row.cells


def test_markdown_csv_and_json(runs: dict[str, Path], capsys):
    code, md, _ = cli([runs["ci"]], capsys)
    assert code == 0
    header, rule, *rows = squeezed(scores_table(md)).splitlines()
    assert header == f"| model | optimizer | settings | {' | '.join(CI_TASKS)} | planted (group) |" and len(rows) == 2
    assert all("candidates" in r and " ± " in r and "(base " in r for r in rows)
    assert "| source | results |" in squeezed(md) and "Flags:" not in md

    code, text, _ = cli([runs["ci"], "--format", "csv"], capsys)
    records = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and len(records) == 10 and {r["task"] for r in records} == {*CI_TASKS, "planted"}
    board = leaderboard([runs["ci"]])
    for record in records:
        row = next(r for r in board.rows if r.model == record["model"])
        cell = row.cells[record["task"]]
        assert float(record["score"]) == cell.score and float(record["baseline"]) == cell.baseline
        assert record["metric"] == METRIC and record["source"] == "search" and record["flagged"] == ""
        assert record["group"] == str(record["task"] == "planted")

    out = runs["ci"].parent / "board.json"
    code, _, err = cli([runs["ci"], "--format", "json", "--out", out], capsys)
    data = json.loads(out.read_text())
    assert code == 0 and "2 rows x 5 columns" in err
    assert data["columns"] == [*CI_TASKS, "planted"] and data["groups"] == ["planted"] and data["flags"] == []
    assert {row["optimizer"] for row in data["rows"]} == {"candidates"} and all(
        r["sources"] == {"search": 4} for r in data["rows"]
    )
    assert all(
        row["cells"][CI_TASK]["score"] == board.rows[i].cells[CI_TASK].score for i, row in enumerate(data["rows"])
    )


def test_runs_under_other_plans_seeds_or_metrics_are_flagged(runs: dict[str, Path], capsys):
    code, md, err = cli([runs["ci"], runs["plain"], runs["regressed"]], capsys)
    assert code == 0, "flags alone do not fail"
    board = leaderboard([runs["ci"], runs["plain"], runs["regressed"]])
    assert board.mixed[CI_TASK] == ["split plan", "seeds"] and len(board.rows) == 4
    assert f"| {CI_TASK} ⚠ |" in squeezed(md.splitlines()[0]) and "| planted_first |" in squeezed(md.splitlines()[0]), (
        "only the mixed column"
    )
    flags = [line for line in md.splitlines() if line.startswith(f"- {CI_TASK}: rows differ in split plan")]
    assert len(flags) == 1 and "seed=1" in flags[0] and "/ baseline" in flags[0]
    assert "flag:" in err
    same = leaderboard([runs["ci"]])
    assert same.mixed == {} and same.flags == []

    # the same run read twice (a copy of its JSON, newer): the row keeps one cell, and says so
    copy_dir = runs["ci"].parent / "copy"
    source = next(runs["regressed"].rglob("results_*.json"))
    data = json.loads(source.read_text())
    data["date"] += 1
    copy_dir.mkdir(exist_ok=True)
    (copy_dir / "results_copy.json").write_text(json.dumps(data))
    board = leaderboard([runs["regressed"], copy_dir])
    assert len(board.rows) == 1 and any("superseded" in f for f in board.flags)

    # another objective metric (a copy of a CI run that says it optimized and reports another one)
    data = json.loads(next(runs["ci"].rglob("results_*.json")).read_text())
    data["model_name"] += "-copy"
    data["prompt_optimization"]["tasks"][CI_TASK]["metric"] = "exact_match,none"
    data["results"][CI_TASK]["exact_match,none"] = data["results"][CI_TASK][METRIC]
    (copy_dir / "results_copy.json").write_text(json.dumps(data))
    board = leaderboard([runs["ci"], copy_dir])
    assert board.mixed == {CI_TASK: ["metric"]}
    shutil.rmtree(copy_dir)


def test_ci_gates_set_the_exit_code(runs: dict[str, Path], capsys):
    assert cli([runs["ci"], "--fail-on-regression", "--fail-under", f"{CI_TASK}=0.0"], capsys)[0] == 0
    code, _, err = cli([runs["regressed"], "--fail-on-regression"], capsys)
    assert code == 1 and f"FAIL: {CI_TASK}:" in err and "regressed" in err
    code, _, err = cli([runs["ci"], "--fail-under", f"{CI_TASK}=0.95"], capsys)
    assert code == 1 and "under 0.95" in err, "the tiny model scores under 0.95"
    code, _, err = cli([runs["ci"], "--fail-under", "bbh=0.5"], capsys)
    assert code == 1 and "no run has 'bbh'" in err
    code, _, err = cli([runs["ci"], "--fail-under", "oops"], capsys)
    assert code == 2 and "TASK=VALUE" in err
    code, _, err = cli([runs["ci"].parent], capsys)  # a folder without results JSONs directly is searched recursively
    assert code == 0
    empty = runs["ci"].parent / "empty"
    empty.mkdir(exist_ok=True)
    code, _, err = cli([empty], capsys)
    assert code == 2 and "no results JSON (results_<date>.json" in err


class Page(HTMLParser):
    """What the page holds: header texts, body rows of cells, SVG bars, and any external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.headers, self.rows, self.bars, self.external, self.scripts = [], [], [], [], 0
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.external.append(attrs[key])
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and not self._in_head:
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "rect" and "bar" in (attrs.get("class") or ""):
            self.bars.append(attrs)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.headers if self._in_head else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def page(runs: dict[str, Path]) -> Path:
    path = runs["ci"].parent / "leaderboard.html"
    path.write_text(render(leaderboard([runs["ci"], runs["plain"], runs["regressed"]]), "html"), encoding="utf-8")
    return path


def test_html_page_is_self_contained_with_table_and_chart(page: Path, runs: dict[str, Path]):
    parsed = Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert parsed.external == [] and "http" not in page.read_text().replace("http://www.w3.org/2000/svg", "")
    tasks = [f"{t} ⚠" if t == CI_TASK else t for t in CI_TASKS]
    assert parsed.headers == ["model", "optimizer", "settings", "source", *tasks, "planted (group)"]
    assert len(parsed.rows) == 4 and all(len(r) == 9 for r in parsed.rows)
    board = leaderboard([runs["ci"], runs["plain"], runs["regressed"]])
    for row, cells in zip(board.rows, parsed.rows):
        assert cells[1] == row.optimizer and cells[6].startswith(f"{row.cells[CI_TASK].score:.4f}")
        assert (cells[8] != "") == ("planted" in row.cells), "the group cell is empty for the runs without the group"
    bars = [(b["data-row"], b["class"].split()[1], float(b["data-value"])) for b in parsed.bars]
    assert sum(k == "baseline" for _, k, _ in bars) == 4 and sum(k == "optimized" for _, k, _ in bars) == 3
    points = chart_points(board)  # per row: the mean over the leaf tasks it has
    for label, baseline, optimized in points:
        assert (label, "baseline", round(baseline, 6)) in bars
        assert optimized is None or (label, "optimized", round(optimized, 6)) in bars
    ci_row = next(
        r for r in board.rows if "planted-v1" in r.model and r.settings.startswith("candidates=Please answer the")
    )
    assert dict((p[0], p[2]) for p in points)[ci_row.label] == pytest.approx(
        sum(ci_row.cells[t].score for t in CI_TASKS) / 4
    )
    assert parsed.scripts == 1 and "rows differ in split plan" in page.read_text()


def test_html_page_renders_in_a_headless_browser(page: Path, runs: dict[str, Path]):
    """Chromium through Selenium: the table and the chart are drawn, and a header click sorts."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="no browser test: selenium is not installed")
    if not browser or not driver_path:
        pytest.skip("no browser test: no chromium/chromedriver installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        shot = runs["ci"].parent / "leaderboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5000
        table = driver.find_element("id", "leaderboard")
        assert table.size["width"] > 300 and table.size["height"] > 50
        assert len(driver.find_elements("css selector", "#leaderboard tbody tr")) == 4
        bars = driver.find_elements("css selector", "#chart rect.bar")
        assert len(bars) == 7
        drawn = [b for b in bars if float(b.get_attribute("data-value")) > 0]
        assert drawn and all(b.size["width"] > 1 and b.size["height"] > 1 for b in drawn)
        column = 6  # planted_largest, which every row has: click sorts descending by score, again ascending
        header = driver.find_elements("css selector", "#leaderboard th")[column]

        def values() -> list[float]:
            cells = driver.find_elements("css selector", f"#leaderboard tbody td:nth-child({column + 1})")
            return [float(td.get_attribute("data-value")) for td in cells]

        header.click()
        assert values() == sorted(values(), reverse=True)
        header.click()
        assert values() == sorted(values())
        from PIL import Image

        pixels = Image.open(shot).convert("L").getextrema()
        assert pixels[0] < 100 and pixels[1] > 200, "the screenshot shows drawn content"
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
