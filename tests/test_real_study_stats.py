"""The real study's statistics (scripts/real_study_page.py): Wilson interval, McNemar, paired bootstrap."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from real_study_page import mcnemar, paired_bootstrap, wilson  # noqa: E402


def test_wilson_interval_matches_the_closed_form():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)


def test_mcnemar_exact_counts_only_discordant_pairs():
    base, opt = [0] * 6 + [1] * 10, [1] * 6 + [1] * 10  # 6 wins, no losses, 10 ties
    assert mcnemar(base, opt) == pytest.approx(2 / 64)
    assert mcnemar(opt, base) == pytest.approx(2 / 64)
    assert mcnemar([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0 and mcnemar([1, 1], [1, 1]) == 1.0


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    a, b = [0, 1, 0, 1, 1, 0, 0, 1] * 3, [1, 1, 0, 1, 1, 1, 0, 1] * 3
    lo, hi = paired_bootstrap(a, b)
    assert (lo, hi) == paired_bootstrap(a, b) and lo <= 0.25 <= hi and lo >= 0  # every pair moves up or stays
    assert paired_bootstrap(a, a) == (0.0, 0.0)
