"""bench.report.contrasts: rows that differ in one setting, tested against each other on the same prompts."""

from __future__ import annotations

import json

from bench.report import SAMPLES_DIR
from bench.report.contrasts import contrasts_section, pairs
from bench.stats import mcnemar_exact

LORA = {"trainable": "lora", "learning_rate": 5e-4, "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj"]}}
FULL = {"trainable": "full", "learning_rate": 2e-5}


def _ppo(name, tuning, **variant):
    v = {"regulariser": "kl", "kl_estimator": "k1", "coef": 0.05, "lagrangian": False, "trainable": None,
         "learning_rate": None, **variant}
    return {"variant": name, "stage": "ppo", "metrics": {}, "extra": {"variant": v, "tuning": tuning}}


RECORDS = {
    "ppo-kl.json": _ppo("ppo-kl", LORA),
    "ppo-nokl.json": _ppo("ppo-nokl", LORA, regulariser="none", coef=0.0),
    "ppo-kl-full.json": _ppo("ppo-kl-full", FULL, trainable="full", learning_rate=2e-5),
    "ppo-nokl-full.json": _ppo("ppo-nokl-full", FULL, regulariser="none", coef=0.0, trainable="full", learning_rate=2e-5),
    "ppo-lag.json": _ppo("ppo-lag", LORA, lagrangian=True),
    "ppo-old.json": {"variant": "ppo-old", "stage": "ppo", "metrics": {}, "extra": {"variant": {"regulariser": "kl"}}},
    "eval/ppo-kl.json": {"variant": "ppo-kl", "stage": "eval", "metrics": {}, "extra": {}},
}


def test_pairs_are_same_stage_variants_differing_in_exactly_one_factor():
    found = {(a, b): (f, va, vb) for a, b, f, va, vb in pairs(RECORDS)}
    assert set(found) == {("ppo-kl", "ppo-nokl"), ("ppo-kl", "ppo-kl-full"), ("ppo-kl", "ppo-lag"),
                          ("ppo-nokl", "ppo-nokl-full"), ("ppo-kl-full", "ppo-nokl-full")}
    # regulariser + tuning differ: not a one-factor contrast; a record without tuning is never paired
    assert ("ppo-kl-full", "ppo-nokl") not in found and not any("ppo-old" in k for k in found)
    factor, va, vb = found[("ppo-kl", "ppo-kl-full")]
    assert (factor, va, vb) == ("tuning", "LoRA r 8, lr 0.0005", "full, lr 2e-05")
    assert found[("ppo-kl", "ppo-nokl")] == ("regulariser", "kl (coef 0.05)", "none (coef 0.0)")
    assert found[("ppo-kl", "ppo-lag")] == ("lagrangian", "False", "True")


def _samples(assets, variant, refusals):
    rows = [{"set": "refusal_harmful", "id": f"h{i}", "prompt": f"p{i}", "is_refusal": r} for i, r in enumerate(refusals)]
    rows.append({"set": "helpfulness", "id": "x", "prompt": "q", "response": "a"})  # no verdict: ignored
    (assets / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    (assets / SAMPLES_DIR / f"{variant}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cells_test_the_two_rows_against_each_other(tmp_path):
    _samples(tmp_path, "ppo-kl", [True] * 20 + [False] * 20)   # 0.50
    _samples(tmp_path, "ppo-nokl", [True] * 2 + [False] * 38)  # 0.05: 18 refused by ppo-kl only
    _samples(tmp_path, "ppo-lag", [True] * 19 + [False] * 21)   # 1 discordant prompt
    lines = contrasts_section(RECORDS, tmp_path)
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| `")}
    assert set(rows) == {"| `ppo-kl` vs `ppo-nokl`", "| `ppo-kl` vs `ppo-lag`"}  # pairs without samples are left out
    assert mcnemar_exact(18, 0) < 0.001
    assert "0.500 vs 0.050: +0.450" in rows["| `ppo-kl` vs `ppo-nokl`"] and "p < 0.001, b/c 18/0, **higher**" in rows["| `ppo-kl` vs `ppo-nokl`"]
    assert "b/c 1/0, **not distinguishable**" in rows["| `ppo-kl` vs `ppo-lag`"]
    assert rows["| `ppo-kl` vs `ppo-lag`"].count(" – ") == 2  # no benign / borderline verdicts in these samples


def test_no_pairs_no_section(tmp_path):
    assert contrasts_section({"eval/base.json": {"variant": "base", "stage": "eval", "metrics": {}}}, tmp_path) == []
