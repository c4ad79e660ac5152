"""The metric catalogue (bench/metrics.py): every metric of the committed records is catalogued,
lookups of names and patterns, directions, digits and the tolerances verify applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import metrics
from bench.metrics import DEFAULT_TOLERANCE, LOGPROB, RATE, SCORE, TRAIN_LOSS

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "leaderboards").glob("*/records/**/*.json"))


def _names(paths) -> set[str]:
    return {name for p in paths for name in json.loads(p.read_text())["metrics"]}


def test_every_committed_metric_is_catalogued():
    assert any("default" in p.parts for p in COMMITTED), "no committed records found"
    assert metrics.unknown(_names(COMMITTED)) == []


def test_unknown_lists_uncatalogued_names_once_sorted():
    assert metrics.unknown(["refusal_harmful", "zz_new", "aa_new", "zz_new", "lm_eval/t/acc"]) == ["aa_new", "zz_new"]
    assert metrics.unknown({"refusal_harmful": {}, "train_loss": {}}) == []  # a record's metrics dict works too
    assert metrics.lookup("brand_new_metric") is None


def test_exact_entries():
    m = metrics.lookup("refusal_harmful")
    assert (m.column, m.direction, m.digits, m.arrow, m.better) == ("refusal (harmful)", +1, 3, " ↑", "higher")
    assert m.definition.startswith("Share of greedy generations on held-out harmful prompts")
    o = metrics.lookup("over_refusal_benign")
    assert (o.direction, o.arrow, o.better) == (-1, " ↓", "lower")
    d = metrics.lookup("chosen_shift")
    assert (d.direction, d.arrow, d.better, d.digits) == (0, "", "–", 2)
    assert metrics.lookup("refusal_unsafe_contrast_partial").column == "partial refusal (unsafe contrast)"
    assert metrics.lookup("rm_accuracy").column == "RM accuracy"


def test_pattern_entries_fill_their_parts():
    m = metrics.lookup("lm_eval/helpful_mc/acc_norm")
    assert m.name == "lm_eval/helpful_mc/acc_norm" and m.column == "helpful_mc acc_norm" and m.direction == +1
    assert "task `helpful_mc`, metric `acc_norm`" in m.definition
    f = metrics.lookup("lm_eval/task/exact_match@strict")  # a filter suffix stays with the metric
    assert f.column == "task exact_match@strict"
    assert metrics.lookup("lm_eval/a/b/c").column == "a b/c"  # the task is up to the first slash
    assert metrics.lookup("lm_eval/only-task") is None
    assert metrics.lookup("gate_wall_time_s").tolerance is None


def test_info_of_an_unknown_name_is_neutral():
    m = metrics.info("zz_new")
    assert (m.column, m.direction, m.definition, m.digits, m.arrow) == ("zz_new", 0, "", 3, "")


@pytest.mark.parametrize("name,tol", [
    ("refusal_harmful", RATE), ("over_refusal_benign_partial", RATE), ("empty_generations", RATE),
    ("lm_eval/helpful_mc/acc", RATE), ("select_refusal_harmful_val_steered", RATE), ("cm_sign_accuracy", RATE),
    ("logp_margin_sum", LOGPROB), ("logp_chosen", LOGPROB), ("chosen_shift", LOGPROB), ("rejected_shift", LOGPROB),
    ("chosen_shift_vs_base", LOGPROB), ("rejected_shift_vs_base", LOGPROB),
    ("pref_acc_implicit", RATE), ("pref_acc_implicit_vs_base", RATE), ("refusal_harmful_then_comply", RATE),
    ("reward_helpfulness", SCORE), ("cost_end", SCORE), ("score_safe", SCORE),
    ("train_loss", TRAIN_LOSS),
    ("wall_time_s", None), ("extraction_wall_time_s", None), ("gate_wall_time_s", None), ("seconds_time_s", None),
    ("gate_auroc_train", DEFAULT_TOLERANCE), ("kl_ref_end", DEFAULT_TOLERANCE),
    ("something_new", DEFAULT_TOLERANCE),  # uncatalogued: still compared
])
def test_tolerances(name, tol):
    assert metrics.tolerance_for(name) is tol


def test_exact_tolerances_for_counts():
    for name in ("param_count", "trainable_params", "n_checkpoints"):
        t = metrics.tolerance_for(name)
        assert t is not None and t.abs == 0 and t.rel == 0 and not t.within_ci, name
        assert t.describe() == "exact"


def test_every_entry_is_well_formed():
    names = [m.name for m in metrics.CATALOGUE]
    assert len(names) == len(set(names))
    for m in metrics.CATALOGUE:
        assert m.column and m.definition and m.direction in (-1, 0, 1) and m.digits >= 0, m.name


def test_preference_columns_name_their_reference():
    """Every preference column says what it is measured against (issue 21): the variant's own
    starting point, the base, or no reference at all."""
    for name, ref in (("pref_acc_implicit", "(vs start)"), ("pref_acc_implicit_vs_base", "(vs base)"),
                      ("chosen_shift", "(vs start)"), ("rejected_shift", "(vs start)"),
                      ("chosen_shift_vs_base", "(vs base)"), ("rejected_shift_vs_base", "(vs base)"),
                      ("pref_acc_raw", "no ref."), ("logp_margin_sum", "no ref."), ("logp_margin_per_token", "no ref.")):
        assert ref in metrics.lookup(name).column, name
    for base, new in (("pref_acc_implicit", "pref_acc_implicit_vs_base"), ("chosen_shift", "chosen_shift_vs_base"),
                      ("rejected_shift", "rejected_shift_vs_base")):
        a, b = metrics.lookup(base), metrics.lookup(new)
        assert (a.direction, a.digits, a.tolerance) == (b.direction, b.digits, b.tolerance), new
    assert "pi_start" in metrics.lookup("pref_acc_implicit").definition
    assert "pi_base" in metrics.lookup("pref_acc_implicit_vs_base").definition


def test_refusal_then_comply_is_a_lower_is_better_rate():
    m = metrics.lookup("refusal_harmful_then_comply")
    assert (m.direction, m.digits, m.tolerance) == (-1, 3, RATE) and "compliance" in m.definition
