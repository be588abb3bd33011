"""Small statistics for comparing training runs: Student's t quantile (no scipy), paired differences, verdicts, and
how many seeds a difference of a given size needs (a power estimate)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence


def _betacf(a: float, b: float, x: float, iterations: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iterations + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (e.g. p=0.975, df=2 -> 4.3027), by bisection on t_cdf to 1e-12."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    while high - low > 1e-12 * max(1.0, high):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class PairedDifference:
    """Mean of b - a over pairs, its confidence interval (None with fewer than 2 pairs) and the verdict."""

    mean: float
    low: float | None
    high: float | None
    pairs: int

    @property
    def verdict(self) -> str:
        """'better' when the whole interval is above 0, 'worse' when below, else 'within noise'."""
        if self.low is None:
            return "needs 2+ seeds"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """b - a paired element-wise (e.g. by seed), with a Student-t interval for the mean difference."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty sequences, got {len(a)} and {len(b)}")
    return mean_interval([y - x for x, y in zip(a, b, strict=True)], confidence)


def mean_interval(differences: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """The mean of per-seed differences (or of any per-seed contrast) with its Student-t interval."""
    if not differences:
        raise ValueError("mean_interval needs at least one value")
    mean, std = mean_std(differences)
    if std is None:
        return PairedDifference(mean, None, None, 1)
    half = t_quantile(0.5 + confidence / 2.0, len(differences) - 1) * std / math.sqrt(len(differences))
    return PairedDifference(mean, mean - half, mean + half, len(differences))


def seeds_needed(std: float | None, difference: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Seeds n for which a true mean difference `difference` gives a `confidence` interval that excludes 0 with
    probability `power`, when the per-seed differences spread with standard deviation `std`:

        the smallest n >= 2 with (t(1 - alpha/2, n - 1) + t(power, n - 1)) * std / sqrt(n) <= |difference|

    (the usual approximation for a paired t-test, alpha = 1 - confidence). None when `std` is unknown (one seed).
    Student's t quantiles exceed the normal ones, so the search starts at the normal-approximation n."""
    if std is None:
        return None
    if difference == 0:
        raise ValueError("seeds_needed needs a difference other than 0")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0) + NormalDist().inv_cdf(power)
    n = max(2, math.floor((z * std / abs(difference)) ** 2))
    while (t_quantile(0.5 + confidence / 2.0, n - 1) + t_quantile(power, n - 1)) * std / math.sqrt(n) > abs(difference):
        n += 1
    return n
