"""Intervals and tests against values worked out by hand."""
import math

import pytest

from wmg.stats import bootstrap_diff, mcnemar_exact, paired, pct, wilson


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(39, 53), (20, 53), (1, 4), (7, 7), (0, 10), (264, 528)])
def test_wilson_matches_the_formula(k, n):
    assert wilson(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_reference_values():
    # 0 of 10: the upper end is z^2 / (n + z^2); 39 of 53 (distilgpt2 on the default split): 60.4%..83.6%
    assert wilson(0, 10) == pytest.approx((0.0, 3.841458820694124 / 13.841458820694124))
    low, high = wilson(39, 53)
    assert (round(low * 100, 1), round(high * 100, 1)) == (60.4, 83.6)
    assert wilson(0, 0) == (None, None)


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 2 ** 7)  # 0.125
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2 ** 10)


def test_paired_difference_counts_and_interval():
    a = [1, 1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 0, 0, 1, 0, 0, 1]
    p = paired(a, b)
    assert (p["examples"], p["a_only_right"], p["b_only_right"]) == (8, 3, 1)
    assert p["difference"] == pytest.approx(2 / 8)
    assert p["difference_low"] <= p["difference"] <= p["difference_high"]
    assert p["mcnemar_p"] == pytest.approx(mcnemar_exact(3, 1))
    assert bootstrap_diff(a, b) == bootstrap_diff(a, b)  # seeded: the same interval every time
    assert bootstrap_diff(a, a) == (0.0, 0.0)


def test_pct():
    assert pct(0.736, 0.604, 0.836) == "73.6% [60.4, 83.6]" and pct(None) == "-" and pct(0.5) == "50.0%"
