"""bench/stats.py against closed forms and published values: the Student-t interval of a mean, the
exact McNemar test, Newcombe's (1998) paired-difference interval (his Table II examples), the paired
bootstrap (deterministic, degenerate cases) and the rule the leaderboard bolds by."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.stats import (
    _newcombe_paired,
    mcnemar_exact,
    mean_metric,
    paired_bootstrap,
    paired_rate,
    significantly_better,
    t_quantile,
)

# --------------------------------------------------------------------------- means


def test_mean_metric_is_a_student_t_interval():
    m = mean_metric([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.303: far wider than the normal 1.96 at n = 3
    assert m["value"] == 2.0 and m["n"] == 3
    assert m["ci_low"] == pytest.approx(2 - 4.302652729911275 / math.sqrt(3), rel=1e-9)
    xs = [0.3, -1.2, 2.5, 0.7, 0.0, 1.1, -0.4]
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    m = mean_metric(xs)
    assert (m["ci_low"], m["ci_high"]) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert t_quantile(1_000_000) == pytest.approx(1.959963984540054, abs=1e-5)  # t -> normal for large n


def test_mean_metric_small_n():
    assert mean_metric([])["n"] == 0 and math.isnan(mean_metric([])["value"])
    one = mean_metric([4.0])
    assert one["value"] == 4.0 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    same = mean_metric([2.0, 2.0, 2.0])
    assert same["ci_low"] == same["ci_high"] == 2.0


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("b,c,p", [(0, 6, 0.03125), (6, 0, 0.03125), (1, 6, 0.125), (3, 3, 1.0), (0, 0, 1.0),
                                   (0, 1, 1.0), (0, 5, 0.0625), (2, 10, 0.0385742187)])
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-9)


def test_mcnemar_exact_matches_the_binomial_test():
    for b in range(15):
        for c in range(15):
            if b + c:
                ref = sps.binomtest(min(b, c), b + c, 0.5).pvalue
                assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9), (b, c)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# --------------------------------------------------------------------------- paired rates


@pytest.mark.parametrize("table,lo,hi", [
    ((36, 12, 2, 0), 0.0569, 0.3404),   # Newcombe (1998) Table II, method 10
    ((18, 12, 2, 18), 0.0562, 0.3290),
    ((53, 0, 0, 1), -0.0729, 0.0729),
    ((0, 30, 0, 0), 0.8395, 1.0),
])
def test_newcombe_method_10_published_values(table, lo, hi):
    got = _newcombe_paired(*table)
    assert got == (pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4))


def _vectors(a: int, b: int, c: int, d: int) -> tuple[list[bool], list[bool]]:
    x = [True] * (a + b) + [False] * (c + d)
    y = [True] * a + [False] * b + [True] * c + [False] * d
    return x, y


def test_paired_rate_entry():
    x, y = _vectors(36, 12, 2, 0)
    e = paired_rate(x, y)
    assert e["test"] == "mcnemar-exact" and e["n"] == 50 and e["discordant"] == [12, 2]
    assert e["delta"] == pytest.approx(0.2) and e["p"] == pytest.approx(mcnemar_exact(12, 2))
    assert (e["ci_low"], e["ci_high"]) == (pytest.approx(0.0569, abs=1e-4), pytest.approx(0.3404, abs=1e-4))
    # the order of the items does not matter, only the pairing
    perm = np.random.default_rng(1).permutation(50)
    e2 = paired_rate([x[i] for i in perm], [y[i] for i in perm])
    assert e2 == e
    with pytest.raises(ValueError):
        paired_rate([True], [True, False])
    empty = paired_rate([], [])
    assert empty["n"] == 0 and empty["p"] == 1.0 and math.isnan(empty["delta"])


def test_zero_of_24_against_one_of_24_is_not_significant():
    """0/24 over-refusals against the start's 1/24: one discordant prompt, p = 1: not a claim."""
    x, y = [False] * 24, [False] * 23 + [True]
    e = paired_rate(x, y)
    assert e["discordant"] == [0, 1] and e["p"] == 1.0 and e["delta"] == pytest.approx(-1 / 24)
    assert e["ci_low"] < 0 < e["ci_high"]
    assert not significantly_better(e, -1) and not significantly_better(e, +1)
    # six prompts the start over-refused and the variant does not: p = 0.03125, better (lower is better)
    x, y = [False] * 24, [False] * 18 + [True] * 6
    e = paired_rate(x, y)
    assert e["p"] == pytest.approx(0.03125) and significantly_better(e, -1) and not significantly_better(e, +1)


# --------------------------------------------------------------------------- paired bootstrap


def test_paired_bootstrap_all_equal_differences():
    n_boot = 2000
    e = paired_bootstrap([1.5, 2.5, 3.5, 4.5], [1.0, 2.0, 3.0, 4.0], n_boot=n_boot)
    assert e["test"] == "paired-bootstrap" and e["n"] == 4 and e["discordant"] is None
    assert e["delta"] == e["ci_low"] == e["ci_high"] == 0.5
    assert e["p"] == pytest.approx(1 / (n_boot + 1))  # every resample is 0.5 > 0: floored, never 0
    z = paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_boot=n_boot)
    assert z["delta"] == z["ci_low"] == z["ci_high"] == 0.0 and z["p"] == 1.0


def test_paired_bootstrap_is_deterministic_and_sensible():
    rng = np.random.default_rng(7)
    y = rng.normal(size=200)
    x = y + 0.3 + rng.normal(scale=0.5, size=200)
    a = paired_bootstrap(list(x), list(y), seed=0)
    assert a == paired_bootstrap(list(x), list(y), seed=0)  # same seed, same entry
    assert a != paired_bootstrap(list(x), list(y), seed=1)
    assert a["delta"] == pytest.approx(float(np.mean(x - y)))
    assert a["ci_low"] < a["delta"] < a["ci_high"] and a["p"] < 0.001
    t = mean_metric(x - y)  # large n: the percentile interval is close to the t interval
    assert a["ci_low"] == pytest.approx(t["ci_low"], abs=0.02) and a["ci_high"] == pytest.approx(t["ci_high"], abs=0.02)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
    empty = paired_bootstrap([], [])
    assert empty["n"] == 0 and math.isnan(empty["p"])


def test_paired_bootstrap_two_sided_p_is_symmetric():
    rng = np.random.default_rng(3)
    d = list(rng.normal(loc=0.1, size=60))
    zeros = [0.0] * 60
    up = paired_bootstrap(d, zeros, seed=5)
    down = paired_bootstrap(zeros, d, seed=5)
    assert up["p"] == pytest.approx(down["p"]) and up["delta"] == pytest.approx(-down["delta"])


# --------------------------------------------------------------------------- the bold rule


def test_significantly_better():
    better_up = {"p": 0.01, "delta": 0.1}
    assert significantly_better(better_up, +1) and not significantly_better(better_up, -1)
    assert significantly_better({"p": 0.01, "delta": -0.1}, -1)
    assert not significantly_better({"p": 0.05, "delta": 0.1}, +1)  # p < alpha, strictly
    assert significantly_better({"p": 0.05, "delta": 0.1}, +1, alpha=0.1)
    assert not significantly_better(better_up, 0)  # a diagnostic is never better
    assert not significantly_better(None, +1) and not significantly_better({}, +1)
    assert not significantly_better({"p": float("nan"), "delta": 0.1}, +1)
    assert not significantly_better({"p": 0.001, "delta": 0.0}, +1)
