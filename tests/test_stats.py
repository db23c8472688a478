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


# ---------------------------------------------------------------- against statsmodels and scikit-learn
def test_mcnemar_and_wilson_match_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    for a_only, b_only in [(1, 6), (0, 0), (12, 3), (40, 41)]:
        table = [[10, a_only], [b_only, 5]]
        assert mcnemar_exact(a_only, b_only) == pytest.approx(mcnemar(table, exact=True).pvalue)
    for k, n in [(39, 53), (0, 10), (528, 528), (133, 528)]:
        assert wilson(k, n) == pytest.approx(proportion_confint(k, n, alpha=0.05, method="wilson"), abs=1e-9)


def test_kappas_match_scikit_learn_and_statsmodels():
    import random

    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    from wmg.stats import cohen_kappa, fleiss_kappa

    rng = random.Random(3)
    cats = ["readwrite", "control-flow", "", "timing"]
    for _ in range(20):
        n = rng.randint(5, 60)
        items = [[rng.choice(cats) for _ in range(3)] for _ in range(n)]
        a, b = [i[0] for i in items], [i[1] for i in items]
        if len(set(a) | set(b)) > 1:
            assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
        table, _ = aggregate_raters([[cats.index(c) for c in i] for i in items])
        assert fleiss_kappa(items) == pytest.approx(sm_fleiss(table, method="fleiss"))
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # expected agreement 1: undefined


def test_aurc_by_hand_and_bootstrap_is_seeded():
    from wmg.stats import aurc, bootstrap

    # levels 1, 1, 0.5, 0.5: the agreed pair right, the split pair half right
    # points: coverage 0.5 risk 0, coverage 1 risk 0.25 -> area 0 * 0.5 + 0.25 * 0.5
    assert aurc([1, 1, 0.5, 0.5], [1, 1, 1, 0]) == pytest.approx(0.125)
    assert aurc([1, 1, 1, 1], [1, 0, 1, 0]) == pytest.approx(0.5)  # one level: the full-coverage risk
    values = [1, 0, 1, 1, 0, 1, 1, 1]
    mean = lambda idx: sum(values[i] for i in idx) / len(idx)  # noqa: E731
    assert bootstrap(mean, len(values)) == bootstrap(mean, len(values))
    low, high = bootstrap(mean, len(values))
    assert 0 <= low < 0.75 < high <= 1
    assert bootstrap(lambda idx: None, 5) == (None, None)
