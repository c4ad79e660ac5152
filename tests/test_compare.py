"""bench.compare: two runs' conclusions side by side, on hand-made records."""

from __future__ import annotations

from bench.compare import compare_runs, summary, verdict
from bench.metrics import info


def _m(v, lo, hi):
    return {"value": v, "ci_low": lo, "ci_high": hi, "n": 100}


def _rec(variant, metrics, paired):
    return {"variant": variant, "stage": "eval", "metrics": metrics, "extra": {"paired": paired}}


def _pair(delta, p):
    return {"delta": delta, "p": p, "vs": "sft"}


def test_verdict_follows_the_metric_direction():
    up, down = info("refusal_harmful").direction, info("over_refusal_benign").direction
    assert (up, down) == (1, -1)
    assert verdict(_pair(0.2, 0.001), up) == "better" and verdict(_pair(0.2, 0.001), down) == "worse"
    assert verdict(_pair(0.2, 0.2), up) == "n.s." and verdict(None, up) == "n.s."


def test_compare_runs_finds_flips_and_values_outside():
    a = {"eval/dpo.json": _rec("dpo", {"refusal_harmful": _m(0.50, 0.43, 0.57), "over_refusal_benign": _m(0.08, 0.04, 0.13)},
                                {"refusal_harmful": _pair(-0.30, 1e-9), "over_refusal_benign": _pair(-0.10, 0.003)}),
         "dpo.json": {"variant": "dpo", "stage": "dpo", "metrics": {"x": _m(1, 0, 2)}}}
    b = {"eval/dpo.json": _rec("dpo", {"refusal_harmful": _m(0.52, 0.45, 0.59), "over_refusal_benign": _m(0.20, 0.14, 0.27)},
                                {"refusal_harmful": _pair(-0.28, 1e-8), "over_refusal_benign": _pair(0.02, 0.6)}),
         "dpo.json": {"variant": "dpo", "stage": "dpo", "metrics": {"x": _m(9, 8, 10)}}}  # training records: ignored
    metrics, verdicts = compare_runs(a, b)
    assert [(r.metric, r.agrees) for r in metrics] == [("over_refusal_benign", False), ("refusal_harmful", True)]
    assert [(r.metric, r.a, r.b) for r in verdicts] == [("over_refusal_benign", "better", "n.s."),
                                                         ("refusal_harmful", "worse", "worse")]
    text = "\n".join(summary(metrics, verdicts, "fp32", "bf16"))
    assert "**1** (50.0%)" in text and "| dpo | over_refusal_benign | sft | better |" in text
    # the same run against itself: nothing differs, no tables
    m2, v2 = compare_runs(a, a)
    assert all(r.agrees for r in m2 + v2) and "differ" not in "\n".join(summary(m2, v2, "a", "a"))


def test_records_on_one_side_only_and_neutral_metrics_are_skipped():
    a = {"eval/dpo.json": _rec("dpo", {"empty_generations": _m(0, 0, 0.01)}, {"empty_generations": _pair(0.1, 0.0)}),
         "eval/ipo.json": _rec("ipo", {"refusal_harmful": _m(0.5, 0.4, 0.6)}, {})}
    b = {"eval/dpo.json": _rec("dpo", {"empty_generations": _m(0, 0, 0.01)}, {"empty_generations": _pair(-0.1, 0.0)})}
    metrics, verdicts = compare_runs(a, b)
    assert [r.variant for r in metrics] == ["dpo"]
    assert verdicts == [] or all(info(r.metric).direction != 0 for r in verdicts)
