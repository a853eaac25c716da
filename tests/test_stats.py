"""Wilson score intervals against published values (Newcombe 1998, Table II, method 3) and
scipy's implementation; accuracy columns gain acc_lo / acc_hi; seed summaries."""

import math

import pandas as pd
import pytest

from workbench.stats import (
    add_intervals,
    correct_count,
    overlap,
    pooled_accuracy,
    seed_summary,
    wilson_interval,
)


@pytest.mark.parametrize("k,n,lo,hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                       (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert (round(a, 4), round(b, 4)) == (lo, hi)


def test_wilson_matches_scipy_and_its_properties():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for n in (1, 7, 16, 100, 200):
        for k in range(0, n + 1, max(1, n // 9)):
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            a, b = wilson_interval(k, n)
            assert a == pytest.approx(ci.low, abs=1e-12) and b == pytest.approx(ci.high, abs=1e-12)
            assert 0 <= a <= k / n <= b <= 1
    assert wilson_interval(0, 10) [0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    narrow, wide = wilson_interval(50, 200), wilson_interval(50, 200, confidence=0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]
    assert wilson_interval(100, 400)[1] - wilson_interval(100, 400)[0] < narrow[1] - narrow[0]


@pytest.mark.parametrize("args", [(3, 2), (-1, 5), (1, 0), (1.5, 4), (True, 4), (1, 4, 1.0)])
def test_wilson_rejects_bad_input(args):
    with pytest.raises(ValueError):
        wilson_interval(*args)


def test_add_intervals_and_counts():
    frame = pd.DataFrame({"method": ["a", "b", "ppl"], "acc": [0.25, 0.5, math.nan], "n": [200, 16, 8]})
    out = add_intervals(frame)
    assert list(out.columns) == ["method", "acc", "n", "acc_lo", "acc_hi"] and "acc_lo" not in frame
    assert (out.acc_lo[0], out.acc_hi[0]) == wilson_interval(50, 200)
    assert (out.acc_lo[1], out.acc_hi[1]) == wilson_interval(8, 16) and math.isnan(out.acc_lo[2])
    fixed = add_intervals(frame.iloc[:2], acc="acc", n=16, prefix="packed")
    assert fixed.packed_hi[1] == wilson_interval(8, 16)[1]
    assert correct_count(0.355, 200) == 71
    with pytest.raises(ValueError):
        correct_count(0.3, 16)
    assert overlap((0.1, 0.3), (0.3, 0.5)) and not overlap((0.1, 0.2), (0.25, 0.5))


def test_seed_summary_mean_and_spread():
    frame = pd.DataFrame({"method": ["CE"] * 3 + ["SH"] * 3, "seed": [0, 1, 2] * 2,
                          "acc": [0.2, 0.3, 0.4, 0.5, 0.5, 0.5]})
    out = seed_summary(frame, ["method"], ["acc"])
    assert out.n_seeds.tolist() == [3, 3]
    assert out.acc_mean.tolist() == pytest.approx([0.3, 0.5])
    assert out.acc_std.tolist() == pytest.approx([0.1, 0.0])
    assert (out.acc_min[0], out.acc_max[0]) == (0.2, 0.4)


def test_pooled_accuracy_sums_the_counts_of_its_rows():
    frame = pd.DataFrame({"acc": [0.5, 0.25], "n": [10, 20]})
    acc, lo, hi = pooled_accuracy(frame)
    assert acc == 10 / 30 and (lo, hi) == wilson_interval(10, 30)
