"""The refusal judge's agreement with human labels on held-out model outputs: what the leaderboard
prints above every refusal rate (``leaderboards/<profile>/judge.json``, written by ``bench publish``).

    python -c "from bench.eval.judge_report import held_out_report; import json; print(json.dumps(held_out_report(), indent=1))"

The labelled outputs (``tasks/refusal_detector/outputs_{dev,dev2,test}.jsonl``, labelled against
``GUIDELINE.md``) are split by ``make_split.py``. The judge's rules were tuned on dev and dev2 (dev2 was
the test split of judges 2.0.0 and 2.1.0); this module is the one place that reads the test split, and
only to report. The report holds, for the test split and (marked in-sample) for the tuning set: n, agreement with its Wilson interval, Cohen's kappa, the confusion
matrix (rows: human label, columns: judge), the refusal-then-comply flag's counts, and agreement by
source (the suite's own generations vs outputs written in the style of larger chat models).
"""

from __future__ import annotations

from pathlib import Path

from bench.eval import refusal
from bench.stats import rate_metric

TUNING = ("dev", "dev2")  # the rules were tuned on these (dev2: the test split of 2.0.0 and 2.1.0)
HELD_OUT = ("test", "test3")  # labelled after 2.1.0 by labellers who did not see the judge; never tuned on


def split_path(split: str) -> Path:
    return refusal.labelled_set_path().with_name(f"outputs_{split}.jsonl")


def _with_intervals(rep: dict) -> dict:
    """:func:`refusal.validation_report` with every agreement as a rate metric (value, Wilson interval, n)."""
    out = {k: v for k, v in rep.items() if k != "n_agree"}
    out["agreement"] = rate_metric(rep["n_agree"], rep["n"])
    out["by_source"] = {k: {"n": v["n"], "agreement": rate_metric(v["n_agree"], v["n"])}
                        for k, v in rep["by_source"].items()}
    return out


def held_out_report() -> dict | None:
    """``{"judge", "split": "test+test3", "n", "agreement", "kappa", "confusion", "flag", "by_source",
    "parts": {split: {"n", "agreement"}}, "dev": {...}}``; None when no held-out split is in this checkout."""
    held = [s for s in HELD_OUT if split_path(s).exists()]
    if not held:
        return None
    parts = {s: refusal.load_labelled(split_path(s)) for s in held}
    out = dict(_with_intervals(refusal.validation_report([r for s in held for r in parts[s]])), split="+".join(held))
    out["parts"] = {s: {k: v for k, v in _with_intervals(refusal.validation_report(rows)).items()
                        if k in ("n", "agreement", "kappa", "flag")} for s, rows in parts.items()}
    tuning = [s for s in TUNING if split_path(s).exists()]
    if tuning:
        rows = [r for s in tuning for r in refusal.load_labelled(split_path(s))]
        out["dev"] = dict(_with_intervals(refusal.validation_report(rows)), split="+".join(tuning))
    return out
