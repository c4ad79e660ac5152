"""Do two runs of a profile reach the same conclusions? Same-row metrics against their intervals, and
the paired verdicts (better / worse / no difference vs each variant's start) side by side.

    bench compare --profile default --against HEAD~3      # fresh runs/<profile>/ vs records committed at a rev
    bench compare --profile default --against HEAD~3 --out docs/compare.md

What: for every eval record present on both sides and every metric both give an interval for
(``ci_low`` / ``ci_high``), a row saying whether each value lies inside the *other* side's 95%
interval; for every paired test (``extra.paired``, the leaderboard's bold and ▼), each side's verdict
at the leaderboard's alpha (:data:`bench.stats.ALPHA`). A *changed conclusion* is a verdict that
differs (better on one side, n.s. or worse on the other) or a value outside the other side's interval.

Why: a change that should not move the science (bf16 autocast instead of fp32, another machine,
a faster generator) still moves the numbers; :mod:`bench.verify` asks "within the reproduction
tolerance?", which bf16 fails by design. The question a reader asks is different: would the
leaderboard say anything else? Verdicts are what the leaderboard marks, so they are compared as
verdicts; a value inside the other run's interval is "no distinguishable change" for one metric.
Neither test is a formal equivalence test: with ~15 verdicts x 14 variants, a few flips near
``p = alpha`` are expected from noise alone, and :func:`summary` lists them with both p-values so a
reader can see whether a flip sits at the threshold or is a real change.

:func:`compare_runs` is a pure function of two ``{record key: record}`` dicts; the CLI does the I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.metrics import lookup, value_of
from bench.records import is_eval_key
from bench.stats import ALPHA, significantly_better


EPS = 1e-9  # interval ends computed in floating point (a Wilson interval of 0/n starts at ~1e-18, not 0)


@dataclass(frozen=True)
class MetricRow:
    variant: str
    metric: str
    a: float
    b: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]

    @property
    def b_in_a(self) -> bool:
        return self.a_ci[0] - EPS <= self.b <= self.a_ci[1] + EPS

    @property
    def a_in_b(self) -> bool:
        return self.b_ci[0] - EPS <= self.a <= self.b_ci[1] + EPS

    @property
    def agrees(self) -> bool:
        return self.b_in_a and self.a_in_b


@dataclass(frozen=True)
class VerdictRow:
    variant: str
    metric: str
    vs: str
    a: str  # "better" | "worse" | "n.s."
    b: str
    p_a: float | None
    p_b: float | None

    @property
    def agrees(self) -> bool:
        return self.a == self.b


def verdict(entry: dict | None, direction: int, alpha: float = ALPHA) -> str:
    """What the leaderboard marks for a paired entry: ``better`` (bold), ``worse`` (▼) or ``n.s.``."""
    if significantly_better(entry, direction, alpha):
        return "better"
    if significantly_better(entry, -direction, alpha):
        return "worse"
    return "n.s."


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


def _variant(key: str, rec: dict) -> str:
    return rec.get("variant") or key


def compare_runs(a: dict[str, dict], b: dict[str, dict], alpha: float = ALPHA) -> tuple[list[MetricRow], list[VerdictRow]]:
    """Rows for every eval record on both sides (matched by record key), every metric with an interval
    on both sides, and every paired test with a known direction on both sides."""
    metrics: list[MetricRow] = []
    verdicts: list[VerdictRow] = []
    for key in sorted(k for k in a if k in b and is_eval_key(k)):
        ra, rb = a[key], b[key]
        name = _variant(key, ra)
        ma, mb = ra.get("metrics") or {}, rb.get("metrics") or {}
        for m in sorted(set(ma) & set(mb)):
            va, vb = value_of(ma[m]), value_of(mb[m])
            la, ha, lb, hb = (value_of(ma[m], "ci_low"), value_of(ma[m], "ci_high"), value_of(mb[m], "ci_low"),
                              value_of(mb[m], "ci_high"))
            if _finite(va, vb, la, ha, lb, hb):
                metrics.append(MetricRow(name, m, va, vb, (la, ha), (lb, hb)))
        pa, pb = (ra.get("extra") or {}).get("paired") or {}, (rb.get("extra") or {}).get("paired") or {}
        for m in sorted(set(pa) & set(pb)):
            info = lookup(m)
            if info is None or info.direction == 0:
                continue
            ea, eb = pa[m], pb[m]
            verdicts.append(VerdictRow(name, m, str(ea.get("vs", "")), verdict(ea, info.direction, alpha),
                                       verdict(eb, info.direction, alpha), ea.get("p"), eb.get("p")))
    return metrics, verdicts


def _p(x) -> str:
    return f"{x:.3g}" if _finite(x) else "–"


def summary(metrics: list[MetricRow], verdicts: list[VerdictRow], label_a: str, label_b: str) -> list[str]:
    """Markdown: the counts, then every changed verdict and every value outside the other interval."""
    from bench.report.sections import table

    n_ok = sum(r.agrees for r in metrics)
    v_ok = sum(r.agrees for r in verdicts)
    out = [f"Compared: **{label_a}** (a) and **{label_b}** (b).", "",
           f"- Same-row metrics with an interval on both sides: {len(metrics)}; each value inside the other's "
           f"95% interval: **{n_ok}** ({n_ok / max(1, len(metrics)):.1%}).",
           f"- Paired verdicts vs each variant's start (better / worse / n.s. at alpha {ALPHA}): {len(verdicts)}; "
           f"the same on both sides: **{v_ok}** ({v_ok / max(1, len(verdicts)):.1%}).", ""]
    flips = [r for r in verdicts if not r.agrees]
    if flips:
        out += ["Verdicts that differ:", ""]
        out += table(["variant", "metric", "vs", "a", "p (a)", "b", "p (b)"],
                     [[r.variant, r.metric, r.vs, r.a, _p(r.p_a), r.b, _p(r.p_b)] for r in flips],
                     ["l", "l", "l", "l", "r", "l", "r"]) + [""]
    outside = [r for r in metrics if not r.agrees]
    if outside:
        out += ["Values outside the other side's interval:", ""]
        out += table(["variant", "metric", "a [95% CI]", "b [95% CI]"],
                     [[r.variant, r.metric, f"{r.a:.4g} [{r.a_ci[0]:.4g}, {r.a_ci[1]:.4g}]",
                       f"{r.b:.4g} [{r.b_ci[0]:.4g}, {r.b_ci[1]:.4g}]"] for r in outside],
                     ["l", "l", "r", "r"]) + [""]
    return out
