"""`bench validate` (bench.eval.validation_readout): refusal rates of a variant on the validation split,
written beside the runs and never to a record."""

from __future__ import annotations

import json

import pytest

from bench.config import load_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest.one_thread)."""


def test_validate_scores_the_validation_split_uncapped_and_writes_no_record(smoke_base, monkeypatch):
    from bench.data import load_role, select_label
    from bench.eval import validation_readout as vr
    from bench.runs import iter_records
    from bench.train.prepare_base import run_base

    cfg = load_config("smoke", ["profile.name=smoke-validate", "eval.max_new_tokens=4"])
    run_base(cfg)
    records_before = list(iter_records("smoke-validate"))
    asked: list[list[str]] = []
    import bench.eval.generate as gen  # score() imports generate_greedy when it runs: patch its module

    orig = gen.generate_greedy
    monkeypatch.setattr(gen, "generate_greedy", lambda m, t, prompts, *a, **k: asked.append(list(prompts))
                        or orig(m, t, prompts, *a, **k))
    out = vr.run_validation(cfg, variant="base")

    expected = {}
    for role, label in (("harmful", "harmful"), ("benign", "benign"), ("borderline", "borderline")):
        rows = load_role(cfg.data, role, "validation").rows
        expected[role] = [r["prompt"] for r in (select_label(rows, label) if any("label" in r for r in rows) else rows)]
    # the whole validation split of each set, not the smoke profile's eval caps (n_* = 4), and no test prompt
    assert cfg.eval.n_borderline == 4 and len(expected["borderline"]) > 4
    assert asked and set(expected["borderline"]) <= set(asked[0]) and set(expected["harmful"]) <= set(asked[0])
    test_prompts = {r["prompt"] for r in load_role(cfg.data, "borderline", "test").rows}
    assert not test_prompts & set(asked[0])

    m = out["base"]
    assert m["over_refusal_borderline"]["n"] == len(expected["borderline"])
    assert m["refusal_harmful"]["n"] == len(expected["harmful"])
    written = json.loads((vr.out_dir(cfg) / "base.json").read_text())
    assert written["split"] == "validation" and written["metrics"] == m
    gens = [json.loads(x) for x in (vr.out_dir(cfg) / "base.generations.jsonl").read_text().splitlines()]
    border = [g for g in gens if g["set"] == "over_refusal_borderline"]
    by_type = written["by_category"]["over_refusal_borderline"]
    assert sum(v["n"] for v in by_type.values()) == len(border)
    for cat, rate in by_type.items():  # the per-type rate is the share of refusals among that type's rows
        rows = [g for g in border if g["category"] == cat]
        assert rate["value"] == pytest.approx(sum(g["is_refusal"] for g in rows) / len(rows))
    assert list(iter_records("smoke-validate")) == records_before  # no record written


def test_validate_names_the_variants_it_has(smoke_base):
    from bench.eval.validation_readout import run_validation
    from bench.train.prepare_base import run_base

    cfg = load_config("smoke", ["profile.name=smoke-validate2"])
    run_base(cfg)
    with pytest.raises(ValueError, match="have: base"):
        run_validation(cfg, variant="nope")
