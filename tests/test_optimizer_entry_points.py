"""A third-party optimizer, declared by an installed package's entry point, reaches `lm_eval --optimize`."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import run_lm_eval


MODULE = '''
from lm_eval_promptopt.optimizers import OptimizationResult, Optimizer


class Mirror(Optimizer):
    """Keeps the initial instruction."""

    def optimize(self, problem):
        return OptimizationResult(problem.initial_instruction)
'''


def install_third_party(site: Path) -> None:
    """A package installed as pip would: its module and a dist-info with its entry points (one names a missing module)."""
    (site / "mirror_optimizer.py").write_text(MODULE, encoding="utf-8")
    info = site / "mirror_optimizer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mirror-optimizer\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[lm_eval_promptopt.optimizers]\nmirror = mirror_optimizer:Mirror\nghost = no_such_module:Ghost\n",
        encoding="utf-8",
    )


def test_an_entry_point_optimizer_is_listed_and_loaded(tmp_path: Path) -> None:
    install_third_party(tmp_path)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    listed = run_lm_eval(["--optimize", "bogus"], check=False, PYTHONPATH=path)
    assert "unknown optimizer 'bogus'; available: candidates, ghost, gpo, greater, mirror, none" in listed.stderr, (
        listed.stderr[-3000:]
    )
    # its (empty) config is checked, which needs the class itself
    loaded = run_lm_eval(["--optimize", "mirror", "--optimize_args", "stepz=3"], check=False, PYTHONPATH=path)
    assert loaded.returncode == 2 and "unknown key(s) stepz" in loaded.stderr, loaded.stderr[-3000:]
    assert "Traceback" not in loaded.stderr
    # an entry point that does not load: one clear line
    broken = run_lm_eval(["--optimize", "ghost"], check=False, PYTHONPATH=path)
    assert (
        broken.returncode == 2
        and "--optimize ghost: cannot load the optimizer (ModuleNotFoundError: No module named 'no_such_module')"
        in broken.stderr
    )
    assert "Traceback" not in broken.stderr
