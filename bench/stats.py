"""Metric values with uncertainty, in the record format ``{value, ci_low, ci_high, n}``.

Rates use the Wilson score interval (well-behaved at 0 and 1 and for small n, unlike the normal
approximation); means use a normal-approximation interval with the sample standard deviation.
"""

from __future__ import annotations

import math
from typing import Iterable

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson (1927) score interval for a binomial proportion k/n."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_metric(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"value": (k / n) if n else math.nan, "ci_low": lo, "ci_high": hi, "n": n}


def mean_metric(values: Iterable[float], z: float = Z95) -> dict:
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    m = sum(xs) / n
    if n == 1:
        return {"value": m, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return {"value": m, "ci_low": m - half, "ci_high": m + half, "n": n}


def scalar_metric(value: float) -> dict:
    """A number without sampling uncertainty (a parameter count, a wall time)."""
    return {"value": value, "ci_low": None, "ci_high": None, "n": None}
