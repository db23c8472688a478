"""Uncertainty for the figures wmg prints: a validation split has tens of examples, so every
rate is an estimate.

- `wilson`: the 95% Wilson score interval of a proportion (scipy's `binomtest(...).proportion_ci`),
  which stays inside [0, 1] and behaves at 0 and n, unlike the normal approximation.
- `mcnemar_exact`: two systems scored on the same examples; the exact (binomial) McNemar test
  on the examples where exactly one of them is right.
- `bootstrap_diff`: a percentile bootstrap interval of the paired difference of two rates,
  resampling examples with a recorded seed and count.
"""
from __future__ import annotations

from typing import Sequence

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261128


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """(low, high) of the Wilson score interval for k successes in n trials; (None, None) when n = 0."""
    if n <= 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_of_rate(rate: float | None, n: int | None) -> tuple[float | None, float | None]:
    """The interval of a stored rate over n examples (the count is recovered by rounding)."""
    if rate is None or not n:
        return None, None
    return wilson(round(rate * n), n)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (A right and B wrong, and the reverse)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(a_only, n, 0.5).pvalue)


def bootstrap_diff(a: Sequence[int | bool], b: Sequence[int | bool], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) over paired examples."""
    import numpy as np

    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if x.size == 0:
        raise ValueError("no paired examples")
    return bootstrap(lambda idx: float(x[idx].mean()), x.size, resamples, seed, confidence)


def bootstrap(statistic, n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
              confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of `statistic(indices)` over n examples resampled with
    replacement (kappas, AURC, pooled means). Resamples where the statistic is undefined (None
    or NaN) are left out; (None, None) when fewer than half of them are defined."""
    import math

    import numpy as np

    if n <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        v = statistic(rng.integers(0, n, size=n))
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            values.append(v)
    if len(values) < resamples / 2:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _kappa(po: float | None, pe: float | None) -> float | None:
    return (po - pe) / (1 - pe) if po is not None and pe < 1 else None


def cohen_parts(a: Sequence, b: Sequence) -> tuple[float | None, float | None]:
    """Observed and expected agreement of two raters' categories on the same items (expected
    from each rater's own category frequencies)."""
    from collections import Counter

    n = len(a)
    if n == 0:
        return None, None
    ca, cb = Counter(a), Counter(b)
    return sum(x == y for x, y in zip(a, b)) / n, sum(ca[c] * cb[c] for c in ca) / (n * n)


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa (None: no items, or expected agreement is 1)."""
    return _kappa(*cohen_parts(a, b))


def fleiss_parts(items: Sequence[Sequence]) -> tuple[float | None, float | None]:
    """Fleiss' mean per-item agreement and expected agreement; `items` holds each item's
    categories, one per rater (the same number of raters, at least two, for every item)."""
    from collections import Counter

    if not items or len(items[0]) < 2:
        return None, None
    m = len(items[0])
    totals: Counter = Counter()
    p_bar = 0.0
    for cats in items:
        c = Counter(cats)
        totals.update(c)
        p_bar += (sum(k * k for k in c.values()) - m) / (m * (m - 1))
    return p_bar / len(items), sum((t / (len(items) * m)) ** 2 for t in totals.values())


def fleiss_kappa(items: Sequence[Sequence]) -> float | None:
    """Fleiss' kappa (None: no items, or expected agreement is 1)."""
    return _kappa(*fleiss_parts(items))


def aurc(levels: Sequence[float], correct: Sequence[int | bool]) -> float | None:
    """Area under the risk-coverage curve of a vote: examples ordered by agreement level (highest
    first), one point per level covering every example at or above it, step integration of
    risk over coverage (as the `aurc` view computes it)."""
    from collections import defaultdict

    n = len(levels)
    if n == 0:
        return None
    by: dict[float, list[int]] = defaultdict(list)
    for lv, ok in zip(levels, correct):
        by[round(float(lv), 6)].append(int(bool(ok)))
    area, covered, right, last = 0.0, 0, 0, 0.0
    for lv in sorted(by, reverse=True):
        covered += len(by[lv])
        right += sum(by[lv])
        coverage = covered / n
        area += (1 - right / covered) * (coverage - last)
        last = coverage
    return area


def paired(a: Sequence[int | bool], b: Sequence[int | bool]) -> dict:
    """Everything `wmg analyze models` says about two systems on the same examples."""
    n = len(a)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    low, high = bootstrap_diff(a, b)
    return {"examples": n, "a_only_right": a_only, "b_only_right": b_only,
            "difference": (a_only - b_only) / n if n else None, "difference_low": low, "difference_high": high,
            "mcnemar_p": mcnemar_exact(a_only, b_only)}


def pct(rate: float | None, low: float | None = None, high: float | None = None) -> str:
    """73.6% [60.4, 83.6] for people."""
    if rate is None:
        return "-"
    return f"{rate:.1%}" + (f" [{low * 100:.1f}, {high * 100:.1f}]" if low is not None and high is not None else "")
