"""`lm-eval-promptopt`: the companion command group (`run`, `show`, `leaderboard`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import PromptOptError


def main(argv: list[str] | None = None) -> None:
    """`lm-eval-promptopt`: the companion command group."""
    import click

    @click.group(help="Optimize-then-evaluate prompt optimization for lm-evaluation-harness.")
    @click.version_option(package_name="lm_eval_promptopt")
    def group() -> None:
        pass

    @group.command(
        "run",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
        help="`lm_eval run` with the prompt optimization flags: takes every lm-eval flag (see `run --help`).",
    )
    @click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
    def run(lm_eval_args: tuple[str, ...]) -> None:
        from . import hook
        from .harness.lm_eval_compat import run_command

        hook.require_compatible()
        run_command(list(lm_eval_args))

    @group.command("show", help="Print per-task instructions, scores, stop reasons and cost of a run; write its plot.")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    def show(run_dir: Path) -> None:
        from .report.run_report import describe, plot_dev_scores
        from .run.folder import unfinished

        path, status = run_dir / "prompt_optimization.json", unfinished(run_dir)
        if status:
            click.echo(status)
        if not path.is_file():
            if status:  # an unfinished run before its first finished search
                click.echo(
                    "no task's search has finished yet; each unfinished search is saved up to its last completed step"
                )
                return
            raise click.ClickException(
                f"{run_dir} has no prompt_optimization.json: pass a run's prompt_optimization_<date> folder"
            )
        try:
            section = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise click.ClickException(f"{path} is not valid JSON ({err}): a partial or edited file") from None
        if not isinstance(section, dict) or not isinstance(section.get("tasks"), dict):
            raise click.ClickException(
                f"{path} is not a prompt_optimization.json (no tasks): pass a run's prompt_optimization_<date> folder"
            )
        click.echo(describe(section))
        plot = plot_dev_scores(section, run_dir / "dev_scores.png")
        click.echo(f"plot: {plot}" if plot else "plot: none (no optimize-dev scores: given prompts are not scored)")

    @group.command(
        "leaderboard", help="One models x tasks table over results JSONs (or folders of them); exit 1 on a failed gate."
    )
    @click.argument(
        "paths", nargs=-1, required=True, type=click.Path(path_type=Path)
    )  # NAME.json: lm-eval wrote NAME_<date>.json
    @click.option("--format", "form", type=click.Choice(["md", "csv", "html", "json"]), default="md", show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of printing.")
    @click.option(
        "--fail-under",
        multiple=True,
        metavar="TASK=VALUE",
        help="Exit 1 if a row scores under VALUE on TASK (repeatable).",
    )
    @click.option("--fail-on-regression", is_flag=True,
                  help="Exit 1 if an optimized score is below its baseline by more than --regression-tolerance; "
                       "rows without a baseline are listed (not failed).")  # fmt: skip
    @click.option("--regression-tolerance", default="1se", show_default=True, metavar="Nse|POINTS",
                  help="How far below its baseline a score may be: N times the optimized score's stderr (as lm-eval "
                       "reports it; none reported: 0), or score points (e.g. 0.01).")  # fmt: skip
    @click.option(
        "--require-baseline", is_flag=True, help="Exit 1 if an optimized row has no baseline (compare_baseline=true)."
    )
    def leaderboard_command(paths: tuple[Path, ...], form: str, out: Path | None, fail_under: tuple[str, ...],
                            fail_on_regression: bool, regression_tolerance: str, require_baseline: bool) -> None:  # fmt: skip
        from .report.leaderboard import gate, leaderboard, parse_threshold, parse_tolerance, render

        try:
            thresholds = [parse_threshold(t) for t in fail_under]
            tolerance = parse_tolerance(regression_tolerance)
            board = leaderboard(list(paths))
        except PromptOptError as err:  # one line, exit 2 (1 is a failed gate)
            failure = click.ClickException(str(err))
            failure.exit_code = err.exit_code
            raise failure from None
        text = render(board, form)
        if out is None:
            click.echo(text, nl=False)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            click.echo(f"leaderboard: {len(board.rows)} rows x {len(board.columns)} columns -> {out}", err=True)
        for flag in board.flags:
            click.echo(f"leaderboard: flag: {flag}", err=True)
        problems, notes = gate(board, thresholds, fail_on_regression, tolerance, require_baseline)
        for note in notes:
            click.echo(f"leaderboard: note: {note}", err=True)
        for problem in problems:
            click.echo(f"leaderboard: FAIL: {problem}", err=True)
        if problems:
            sys.exit(1)

    group.main(args=argv, prog_name="lm-eval-promptopt")
