"""Small, dependency-free statistics for the gate: exact McNemar, Wilson and bootstrap intervals.

Everything here is deterministic: bootstraps take an explicit seed and use
their own `random.Random`, so the same samples always give the same interval
(a decision must not flip between two renders of the same run).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOT = 2000  # resamples: interval ends move by well under a point between seeds at this size


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    b: pairs right before and wrong after (or the reverse; the test is symmetric),
    c: the other discordant cell. Under the null each discordant pair is a fair
    coin, so p = 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # Exact integer arithmetic: float sums of binomial terms lose precision for large n.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / (2**n))


def discordant(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int]:
    """(b, c): pairs that went right -> wrong, and wrong -> right."""
    if len(before) != len(after):
        raise ValueError("paired sequences differ in length")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    return b, c


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a rate k/n; (0, 1) when there are no samples."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends, where rounding would leave 1e-17
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (the numpy default) of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    frac = pos - lo
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def _wmean(vals: Sequence[float], weights: Sequence[float] | None) -> float:
    if weights is None:
        return sum(vals) / len(vals)
    total = sum(weights)
    return sum(v * w for v, w in zip(vals, weights)) / total if total else float("nan")


def mean_interval(
    values: Sequence[float], weights: Sequence[float] | None = None, seed: int = 0, n_boot: int = BOOT
) -> tuple[float, float, float]:
    """(mean, low, high): a (weighted) mean and its 95% percentile-bootstrap interval."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    point = _wmean(values, weights)
    rng = random.Random(seed)
    idx = range(n)
    stats = []
    for _ in range(n_boot):
        pick = rng.choices(idx, k=n)
        if weights is None:
            stats.append(sum(values[i] for i in pick) / n)
        else:
            tw = sum(weights[i] for i in pick)
            stats.append(sum(values[i] * weights[i] for i in pick) / tw if tw else point)
    stats.sort()
    return (point, _percentile(stats, 0.025), _percentile(stats, 0.975))


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    weights: Sequence[float] | None = None,
    seed: int = 0,
    n_boot: int = BOOT,
) -> tuple[float, float, float]:
    """(delta, low, high) for mean(candidate) - mean(baseline) over paired samples.

    Pairs are resampled together, so the interval reflects the per-sample
    correlation between the two models (much tighter than two independent
    intervals when both get the same rows right). `weights` (e.g. token counts)
    make both means weighted by the same per-pair weight.
    """
    n = len(baseline)
    if n != len(candidate):
        raise ValueError("paired sequences differ in length")
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    if weights is not None and len(weights) != n:
        raise ValueError("weights differ in length from the pairs")
    point = _wmean(candidate, weights) - _wmean(baseline, weights)
    rng = random.Random(seed)
    idx = range(n)
    if weights is None:
        diffs = [c - b for b, c in zip(baseline, candidate)]
        stats = []
        for _ in range(n_boot):
            stats.append(sum(rng.choices(diffs, k=n)) / n)
    else:
        wd = [w * (c - b) for b, c, w in zip(baseline, candidate, weights)]
        stats = []
        for _ in range(n_boot):
            pick = rng.choices(idx, k=n)
            tw = sum(weights[i] for i in pick)
            stats.append(sum(wd[i] for i in pick) / tw if tw else point)
    stats.sort()
    return (point, _percentile(stats, 0.025), _percentile(stats, 0.975))


def z_quantile(p: float) -> float:
    """The standard normal quantile Φ⁻¹(p)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def normal_sf(z: float) -> float:
    """1 − Φ(z): the one-sided tail of the standard normal."""
    from statistics import NormalDist

    return 1.0 - NormalDist().cdf(z)


def paired_difference(
    baseline: Sequence[float], candidate: Sequence[float], weights: Sequence[float] | None = None
) -> tuple[float, float, float]:
    """(delta, centre, se) of mean(candidate) − mean(baseline) over paired samples, in closed form.

    delta is the plain point estimate. For 0/1 values (correct or not) the centre
    and standard error are Bonett and Price's adjusted Wald for paired rates: with
    n12 pairs right -> wrong and n21 wrong -> right, p12 = (n12 + 1)/(n + 2),
    p21 = (n21 + 1)/(n + 2), centre = p21 − p12 and
    se = sqrt((p12 + p21 − (p21 − p12)²)/(n + 2)); the added pair keeps the
    interval honest when there are few or no discordant pairs. For other values
    the centre is delta and se = sd(d)/sqrt(n) of the per-pair differences d
    (with weights: the weighted mean and se² = Σ w²(d − d̄)² / (Σ w)²).
    """
    n = len(baseline)
    if n != len(candidate):
        raise ValueError("paired sequences differ in length")
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    if weights is not None and len(weights) != n:
        raise ValueError("weights differ in length from the pairs")
    delta = _wmean(candidate, weights) - _wmean(baseline, weights)
    binary = weights is None and all(v in (0.0, 1.0) for v in (*baseline, *candidate))
    if binary:
        n12 = sum(1 for b, c in zip(baseline, candidate) if b and not c)
        n21 = sum(1 for b, c in zip(baseline, candidate) if c and not b)
        p12, p21 = (n12 + 1) / (n + 2), (n21 + 1) / (n + 2)
        centre = p21 - p12
        return (delta, centre, math.sqrt(max(0.0, p12 + p21 - centre**2) / (n + 2)))
    diffs = [c - b for b, c in zip(baseline, candidate)]
    if weights is None:
        var = sum((d - delta) ** 2 for d in diffs) / n
        return (delta, delta, math.sqrt(var / n))
    total = sum(weights)
    if not total:
        return (delta, delta, float("nan"))
    return (delta, delta, math.sqrt(sum((w * (d - delta)) ** 2 for d, w in zip(diffs, weights))) / total)


def interval_at(centre: float, se: float, one_sided_alpha: float) -> tuple[float, float]:
    """centre ± z·se with z = Φ⁻¹(1 − one_sided_alpha); a two-sided level c has one_sided_alpha = (1 − c)/2."""
    z = z_quantile(1 - one_sided_alpha)
    return (centre - z * se, centre + z * se)


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected at family-wise level alpha.

    Sort p ascending; the k-th smallest (k = 0, 1, ...) is rejected when
    p ≤ alpha / (m − k) and every smaller one was rejected; the first failure
    stops the procedure.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    out = [False] * m
    for k, i in enumerate(order):
        if p_values[i] <= alpha / (m - k):
            out[i] = True
        else:
            break
    return out


def holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
    """The level alpha / (m − k) Holm compares each p-value with (k: its rank, smallest first)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    levels = [alpha] * m
    for k, i in enumerate(order):
        levels[i] = alpha / (m - k)
    return levels
