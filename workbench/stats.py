"""Confidence intervals for accuracies, and the spread over seeds.

An accuracy of k correct out of n items is a binomial proportion. Its interval is Wilson's
score interval (E. B. Wilson, "Probable inference, the law of succession, and statistical
inference", JASA 1927; recommended over the normal "p ± z·sqrt(p(1-p)/n)" interval by
Newcombe 1998 and Brown, Cai & DasGupta 2001: it never leaves [0, 1] and keeps its coverage
near 0 and 1, where sparse models' accuracies sit):

    centre = (p + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)

Two methods whose intervals overlap are reported as no difference.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pandas as pd


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for k successes in n trials."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n={n}], got {k!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at k = 0 or n the bound is exactly 0 or 1 (the formula gives it up to rounding)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def correct_count(accuracy: float, n: int) -> int:
    """The k of an accuracy k / n (scores are stored as fractions)."""
    k = round(accuracy * n)
    if abs(k / n - accuracy) > 1e-9:
        raise ValueError(f"accuracy {accuracy} is not a count out of n={n}")
    return k


def pooled_accuracy(frame: pd.DataFrame, acc: str = "acc", n: str = "n",
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high) over the rows of frame (e.g. one per seed): the pooled count of
    correct items out of all items scored, with its Wilson interval."""
    k = sum(correct_count(float(a), int(c)) for a, c in zip(frame[acc], frame[n], strict=True))
    total = int(frame[n].sum())
    lo, hi = wilson_interval(k, total, confidence)
    return k / total, lo, hi


def add_intervals(frame: pd.DataFrame, acc: str = "acc", n: str | int = "n",
                  prefix: str | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """A copy of frame with the Wilson interval of column acc (fractions) out of n items (a
    column name or one count for all rows) as columns {prefix}_lo, {prefix}_hi; prefix
    defaults to acc ("acc" -> acc_lo, acc_hi). Rows without an accuracy get NaN."""
    prefix = prefix or acc
    out = frame.copy()
    lo, hi = [], []
    for _, row in frame.iterrows():
        count = row[n] if isinstance(n, str) else n
        if pd.isna(row[acc]) or pd.isna(count):
            lo.append(math.nan)
            hi.append(math.nan)
            continue
        count = int(count)
        a, b = wilson_interval(correct_count(float(row[acc]), count), count, confidence)
        lo.append(a)
        hi.append(b)
    out[f"{prefix}_lo"], out[f"{prefix}_hi"] = lo, hi
    return out


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: then the difference is reported as none."""
    return a[0] <= b[1] and b[0] <= a[1]


def seed_summary(frame: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, standard deviation (n-1), min and max of each value column over the rows of each
    group (one row per seed): columns {value}_mean, _std, _min, _max and n_seeds."""
    grouped = frame.groupby(by, sort=False, dropna=False)
    out = grouped.size().rename("n_seeds").to_frame()
    for v in values:
        stats = grouped[v].agg(["mean", "std", "min", "max"])
        stats.columns = [f"{v}_{c}" for c in stats.columns]
        out = out.join(stats)
    return out.reset_index()
