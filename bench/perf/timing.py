"""Summaries of repeated measurements: median and spread (min-max and interquartile range).

A timing on a shared machine is noisy and skewed (a neighbour only ever slows a run down), so the
centre is the median, never the mean, and the spread is reported as it is measured, without a
normal-approximation interval. A ratio of two throughputs is the ratio of their medians, with the
spread of the per-repeat ratios (each repeat runs both sides back to back, so they share the
machine's state).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, ``method='linear'``) of a non-empty sample."""
    s = sorted(float(x) for x in xs)
    if not s:
        raise ValueError("quantile of an empty sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict:
    """``{median, min, max, q1, q3, n, values}`` of finite values; NaN fields when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        nan = math.nan
        return {"median": nan, "min": nan, "max": nan, "q1": nan, "q3": nan, "n": 0, "values": []}
    return {"median": quantile(xs, 0.5), "min": min(xs), "max": max(xs), "q1": quantile(xs, 0.25),
            "q3": quantile(xs, 0.75), "n": len(xs), "values": xs}


def rates(amount: float | Sequence[float], seconds: Sequence[float]) -> list[float]:
    """Per-repeat throughput ``amount / seconds`` (``amount`` a constant or one value per repeat)."""
    amounts = [amount] * len(seconds) if isinstance(amount, (int, float)) else list(amount)
    if len(amounts) != len(seconds):
        raise ValueError(f"rates: {len(amounts)} amounts for {len(seconds)} timings")
    return [a / s if s > 0 else math.nan for a, s in zip(amounts, seconds)]


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> dict:
    """Speed-up of paired repeats (throughputs, higher is better): per-repeat ``ours / theirs``
    summarised, plus ``of_medians`` = median(ours) / median(theirs)."""
    if len(ours) != len(theirs):
        raise ValueError(f"ratio: {len(ours)} vs {len(theirs)} repeats (must be paired)")
    per = [o / t for o, t in zip(ours, theirs) if t and math.isfinite(o) and math.isfinite(t)]
    out = summarize(per)
    mo, mt = summarize(ours)["median"], summarize(theirs)["median"]
    out["of_medians"] = mo / mt if mt and math.isfinite(mt) and mt != 0 else math.nan
    return out


def fmt(summary: dict | None, digits: int = 3, unit: str = "") -> str:
    """``median [min-max]`` (``n=1``: the value alone), for the markdown tables."""
    if not summary or not summary.get("n"):
        return "n/a"
    u = f" {unit}" if unit else ""
    med = _num(summary["median"], digits)
    if summary["n"] == 1:
        return f"{med}{u} (n=1)"
    return f"{med}{u} [{_num(summary['min'], digits)}-{_num(summary['max'], digits)}] (n={summary['n']})"


def _num(x: float, digits: int) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
