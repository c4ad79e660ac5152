"""Metric values with uncertainty, in the record format ``{value, ci_low, ci_high, n}``, and paired
tests of a variant against its starting point.

One sample (every interval 95%, two-sided):

- rates, :func:`rate_metric`: Wilson (1927) score interval, well-behaved at 0 and 1 and for small n
  (unlike the normal approximation);
- means, :func:`mean_metric`: Student-t interval ``mean ± t_{0.975, n-1} · sd / √n`` with the sample
  standard deviation (sd with n - 1); at small n the normal quantile 1.96 would be too narrow
  (t_{0.975, 4} = 2.776).

Paired (the same prompts or pairs scored by the variant, ``x``, and by its starting point, ``y``;
the entry format is ``{test, n, delta, ci_low, ci_high, p, discordant}`` with delta = x - y):

- rates, :func:`paired_rate`: exact McNemar test on the discordant prompts (:func:`mcnemar_exact`)
  and Newcombe's (1998) method 10 interval for the difference of paired proportions;
- means, :func:`paired_bootstrap`: percentile bootstrap of the mean per-item difference, with a
  bootstrap p-value for "no difference";
- :func:`significantly_better`: the leaderboard's rule for bold.

Pure functions (numpy and scipy imported where needed), deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile
ALPHA = 0.05  # the leaderboard's significance level (two-sided)
N_BOOT = 10_000


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson (1927) score interval for a binomial proportion p = k/n:
    ``(p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)``."""
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


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``t_{(1+level)/2, n-1}`` for a mean of n values (n >= 2)."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, n - 1))


def mean_metric(values: Iterable[float], level: float = 0.95) -> dict:
    """Mean with its Student-t interval ``m ± t_{(1+level)/2, n-1} · s / √n`` (s: sample sd, n - 1).
    The interval is undefined (NaN) for n < 2."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    m = sum(xs) / n
    if n == 1:
        return {"value": m, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n, level) * sd / math.sqrt(n)
    return {"value": m, "ci_low": m - half, "ci_high": m + half, "n": n}


def scalar_metric(value: float) -> dict:
    """A number without sampling uncertainty (a parameter count, a wall time)."""
    return {"value": value, "ci_low": None, "ci_high": None, "n": None}


# =========================================================================== paired tests


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947; exact form: the binomial sign test on the
    discordant pairs): under "no difference" each of the b + c discordant pairs goes either way with
    probability 1/2, so ``p = min(1, 2 · P(X <= min(b, c)))`` with ``X ~ Bin(b + c, 1/2)``; p = 1
    when there is no discordant pair. Computed exactly with integers."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** m)


def _newcombe_paired(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe (1998, Stat Med 17:2635, method 10) interval for p1 - p2 of paired proportions.

    Table: a = both events, b = x only, c = y only, d = neither, n = a+b+c+d; p1 = (a+b)/n,
    p2 = (a+c)/n, delta = p1 - p2 = (b - c)/n. With (l_i, u_i) the Wilson intervals of p_i::

        L = delta - sqrt((p1 - l1)² - 2 φ (p1 - l1)(u2 - p2) + (u2 - p2)²)
        U = delta + sqrt((p2 - l2)² - 2 φ (p2 - l2)(u1 - p1) + (u1 - p1)²)

    φ estimates the correlation of the pair from A = ad - bc and the margins' product
    P = (a+b)(c+d)(a+c)(b+d): φ = (A - n/2)/√P when A > n/2, 0 when 0 <= A <= n/2, A/√P when A < 0,
    and 0 when a margin is empty (as in Fagerland, Lydersen & Laake 2014; Newcombe's corrected φ).
    """
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    big_a = a * d - b * c
    if margins == 0:
        phi = 0.0
    elif big_a > n / 2:
        phi = (big_a - n / 2) / math.sqrt(margins)
    elif big_a >= 0:
        phi = 0.0
    else:
        phi = big_a / math.sqrt(margins)
    delta = p1 - p2
    lo = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = delta + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def paired_rate(x: Sequence[bool], y: Sequence[bool]) -> dict:
    """Paired comparison of two rates on the same items: ``x[i]``, ``y[i]`` say whether the event
    (a refusal, a preferred chosen response) happened for item i under the variant and its start.

    ``discordant = [b, c]``: b items with the event under x only, c under y only; delta = (b - c)/n
    (the difference of the two rates); p from :func:`mcnemar_exact`; the 95% interval of delta is
    Newcombe's (1998) method 10 hybrid score interval (:func:`_newcombe_paired`)."""
    if len(x) != len(y):
        raise ValueError(f"paired_rate: {len(x)} values against {len(y)}")
    n = len(x)
    both = sum(1 for u, v in zip(x, y) if u and v)
    b = sum(1 for u, v in zip(x, y) if u and not v)
    c = sum(1 for u, v in zip(x, y) if v and not u)
    out = {"test": "mcnemar-exact", "n": n, "p": mcnemar_exact(b, c), "discordant": [b, c]}
    if n == 0:
        return dict(out, delta=math.nan, ci_low=math.nan, ci_high=math.nan)
    lo, hi = _newcombe_paired(both, b, c, n - both - b - c)
    return dict(out, delta=(b - c) / n, ci_low=lo, ci_high=hi)


def paired_bootstrap(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Paired bootstrap (Efron & Tibshirani 1993, ch. 13, 15) of the mean difference of two means on
    the same items: d_i = x_i - y_i, delta = mean(d).

    ``n_boot`` resamples of the n differences with replacement (numpy ``default_rng(seed)``, so the
    result is the same for a given seed); the 95% interval is the 2.5 and 97.5 percentiles of the
    resampled means; the two-sided p for "delta = 0" is ``2 · min(share of resampled means <= 0,
    share >= 0)``, capped at 1 and floored at ``1 / (n_boot + 1)`` (a finite resample cannot say less)."""
    import numpy as np

    if len(x) != len(y):
        raise ValueError(f"paired_bootstrap: {len(x)} values against {len(y)}")
    n = len(x)
    out = {"test": "paired-bootstrap", "n": n, "discordant": None}
    if n == 0:
        return dict(out, delta=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounded memory: at most ~2M indices at a time
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    share = min(float(np.mean(means <= 0)), float(np.mean(means >= 0)))
    p = min(1.0, max(2 * share, 1 / (n_boot + 1)))
    return dict(out, delta=float(d.mean()), ci_low=float(lo), ci_high=float(hi), p=p)


def significantly_better(entry: dict | None, direction: int, alpha: float = ALPHA) -> bool:
    """True when a paired entry says the variant is better than its start: ``p < alpha`` and delta on
    the metric's better side (direction +1: higher is better, -1: lower is better; 0 never is).
    ``significantly_better(entry, -direction)`` is "significantly worse"."""
    if not entry or direction == 0:
        return False
    p, delta = entry.get("p"), entry.get("delta")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (p, delta))
    return ok and p < alpha and delta * direction > 0
