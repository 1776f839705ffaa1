"""The gate's statistics against hand-computed and textbook values."""

import math
import statistics

import pytest

from factory import stats


def test_mcnemar_exact_hand_computed():
    # n = 14 discordant pairs, min cell 3: 2 * (C(14,0)+C(14,1)+C(14,2)+C(14,3)) / 2^14 = 940 / 16384
    assert stats.mcnemar_exact(3, 11) == pytest.approx(940 / 16384, abs=1e-15)
    assert stats.mcnemar_exact(11, 3) == stats.mcnemar_exact(3, 11)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(4, 4) == 1.0  # symmetric: capped at 1


def test_mcnemar_exact_large_n_is_exact():
    # Float sums of binomial terms underflow here; exact integers do not.
    p = stats.mcnemar_exact(100, 300)
    assert 0 < p < 1e-20


def test_discordant_counts():
    before = [True, True, False, False, True]
    after = [True, False, True, True, True]
    assert stats.discordant(before, after) == (1, 2)


def test_wilson_textbook_values():
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = stats.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = stats.wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_paired_bootstrap_degenerate_and_deterministic():
    assert stats.paired_bootstrap([0.0] * 10, [1.0] * 10) == (1.0, 1.0, 1.0)
    base = [float(i % 3 == 0) for i in range(200)]
    cand = [float(i % 2 == 0) for i in range(200)]
    a = stats.paired_bootstrap(base, cand, seed=7)
    assert a == stats.paired_bootstrap(base, cand, seed=7)
    assert a[0] == pytest.approx(sum(cand) / 200 - sum(base) / 200)
    assert a[1] < a[0] < a[2]


def test_paired_bootstrap_matches_normal_theory():
    # 400 pairs: 60 improved, 20 got worse, the rest unchanged. The bootstrap interval of the
    # mean difference should agree with mean +- 1.96 * sd / sqrt(n) to within a point.
    diffs = [1.0] * 60 + [-1.0] * 20 + [0.0] * 320
    base = [0.0 if d > 0 else 1.0 if d < 0 else 0.0 for d in diffs]
    cand = [b + d for b, d in zip(base, diffs)]
    delta, lo, hi = stats.paired_bootstrap(base, cand, seed=0)
    sd = statistics.pstdev(diffs)
    half = 1.959964 * sd / math.sqrt(len(diffs))
    assert delta == pytest.approx(0.1)
    assert lo == pytest.approx(0.1 - half, abs=0.01)
    assert hi == pytest.approx(0.1 + half, abs=0.01)


def test_weighted_bootstrap_uses_weights():
    mean, lo, hi = stats.mean_interval([1.0, 3.0], weights=[3, 1])
    assert mean == pytest.approx(1.5)
    delta, _, _ = stats.paired_bootstrap([1.0, 1.0], [2.0, 5.0], weights=[3, 1])
    assert delta == pytest.approx((2 * 3 + 5) / 4 - 1.0)


def test_mean_interval_brackets_the_mean():
    vals = [float(i) for i in range(100)]
    mean, lo, hi = stats.mean_interval(vals, seed=1)
    assert mean == pytest.approx(49.5)
    assert lo < mean < hi
    assert hi - lo == pytest.approx(2 * 1.96 * statistics.pstdev(vals) / 10, rel=0.15)


def test_paired_difference_binary_is_bonett_price():
    # 10 pairs: 3 right -> wrong, 1 wrong -> right. p12 = 4/12, p21 = 2/12, centre = -1/6,
    # se = sqrt((6/12 - 1/36) / 12) = 0.19843.
    base = [1, 1, 1, 0, 1, 1, 0, 0, 1, 1]
    cand = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    delta, centre, se = stats.paired_difference([float(x) for x in base], [float(x) for x in cand])
    assert delta == pytest.approx(-0.2) and centre == pytest.approx(-1 / 6)
    assert se == pytest.approx(((6 / 12 - 1 / 36) / 12) ** 0.5)
    lo, hi = stats.interval_at(centre, se, 0.025)
    assert lo == pytest.approx(-1 / 6 - 1.959964 * se, abs=1e-6) and hi == pytest.approx(-1 / 6 + 1.959964 * se, abs=1e-6)


def test_paired_difference_continuous_and_weighted():
    delta, centre, se = stats.paired_difference([1.0, 2.0, 3.0], [1.5, 2.0, 4.0])
    # d = 0.5, 0, 1; mean 0.5; population variance 1/6; se = sqrt(1/6 / 3)
    assert delta == centre == pytest.approx(0.5) and se == pytest.approx((1 / 18) ** 0.5)
    delta, _, se = stats.paired_difference([1.0, 2.0], [2.0, 2.0], weights=[3.0, 1.0])
    # weighted d = (3 * 1 + 1 * 0) / 4 = 0.75; se = sqrt(9 * 0.25^2 + 1 * 0.75^2) / 4
    assert delta == pytest.approx(0.75) and se == pytest.approx((9 * 0.0625 + 0.5625) ** 0.5 / 4)


def test_holm_step_down():
    # m = 3 at alpha 0.05: the smallest against 0.05/3, then 0.05/2, then 0.05.
    assert stats.holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]  # 0.03 > 0.025 stops it
    assert stats.holm([0.01, 0.02, 0.04], 0.05) == [True, True, True]
    assert stats.holm([0.02, 0.001], 0.05) == [True, True]
    assert stats.holm_levels([0.02, 0.001, 0.5], 0.05) == pytest.approx([0.025, 0.05 / 3, 0.05])
