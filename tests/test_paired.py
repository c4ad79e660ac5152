"""Each variant against its own starting point: the starting point of each kind of variant, the
reference of the preference columns, and the paired tests on hand-made generations with known p-values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.eval.logprobs import PairLogprobs
from bench.eval.paired import by_category, generation_pairs, implicit_sign_test, pair_logprob_pairs


def _rows(set_name: str, flags: list[bool], **cols) -> list[dict]:
    rows = [{"set": set_name, "id": f"{set_name}-{i}", "prompt": f"p{i}", "is_refusal": f, "category": "c"}
            for i, f in enumerate(flags)]
    for name, values in cols.items():
        for r, v in zip(rows, values):
            r[name] = v
    return rows


def test_refusal_rate_is_tested_on_discordant_prompts_with_exact_mcnemar():
    # 6 prompts refused by the variant only, none by the start only, 4 concordant: p = 2 * 0.5**6
    v = _rows("refusal_harmful", [True] * 6 + [True, True, False, False])
    s = _rows("refusal_harmful", [False] * 6 + [True, True, False, False])
    e = generation_pairs(v, s, ["refusal_harmful"], vs="sft")["refusal_harmful"]
    assert e["test"] == "mcnemar-exact" and e["vs"] == "sft" and e["n"] == 10
    assert e["discordant"] == [6, 0]
    assert e["p"] == pytest.approx(0.03125)
    assert e["delta"] == pytest.approx(0.6)
    assert e["ci_low"] < 0.6 < e["ci_high"]


def test_one_discordant_prompt_is_not_significant():
    # 1/24 vs 0/24: the exact maximum used to make 0/24 "best"; paired, it is no difference at all
    v = _rows("over_refusal_benign", [True] + [False] * 23)
    s = _rows("over_refusal_benign", [False] * 24)
    e = generation_pairs(v, s, ["over_refusal_benign"], vs="sft")["over_refusal_benign"]
    assert e["discordant"] == [1, 0] and e["p"] == pytest.approx(1.0)


def test_refusal_then_comply_share_is_paired_on_harmful_prompts_only():
    v = _rows("refusal_harmful", [False, False], refusal_then_comply=[True, False])
    s = _rows("refusal_harmful", [False, False], refusal_then_comply=[False, False])
    out = generation_pairs(v, s, ["refusal_harmful"], vs="sft")
    assert out["refusal_harmful_then_comply"]["discordant"] == [1, 0]
    b = _rows("over_refusal_benign", [False])
    assert "over_refusal_benign_then_comply" not in generation_pairs(b, b, ["over_refusal_benign"], vs="sft")


def test_reward_and_cost_are_paired_by_bootstrap_per_prompt():
    v = _rows("helpfulness", [False] * 5, reward=[1.0, 2.0, 3.0, 4.0, 5.0], cost=[0.0] * 5)
    s = _rows("helpfulness", [False] * 5, reward=[0.0, 1.0, 2.0, 3.0, 4.0], cost=[0.0] * 5)
    out = generation_pairs(v, s, [], vs="base")
    r = out["reward_helpfulness"]
    assert r["test"] == "paired-bootstrap" and r["delta"] == pytest.approx(1.0)
    assert r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)  # every difference is 1
    assert r["p"] < 0.001
    assert out["cost_helpfulness"]["delta"] == 0.0 and out["cost_helpfulness"]["p"] == pytest.approx(1.0)


def test_prompts_missing_from_the_start_are_an_error_naming_the_prompt():
    v = _rows("refusal_harmful", [True, False])
    s = _rows("refusal_harmful", [True])
    with pytest.raises(ValueError, match="refusal_harmful-1"):
        generation_pairs(v, s, ["refusal_harmful"], vs="sft")


def test_preference_pairs_against_the_start():
    v = {"chosen": [-1.0, -2.0, -3.0, -1.0], "rejected": [-5.0, -1.0, -4.0, -2.0], "chosen_tokens": [1, 2, 3, 1],
         "rejected_tokens": [5, 1, 4, 2]}
    s = {"chosen": [-2.0, -2.0, -3.0, -3.0], "rejected": [-4.0, -1.0, -3.0, -2.0], "chosen_tokens": [1, 2, 3, 1],
         "rejected_tokens": [5, 1, 4, 2]}
    out = pair_logprob_pairs(v, s, vs="sft")
    # raw accuracy: the variant prefers the chosen on pairs 0, 2, 3; the start on pair 0 only -> b=2, c=0
    assert out["pref_acc_raw"]["discordant"] == [2, 0]
    # implicit margins (c - sc) - (r - sr): 1-(-1)=2, 0-0=0, 0-(-1)=1, 2-0=2 -> 3 of 4 positive, one tie
    imp = out["pref_acc_implicit"]
    assert imp["test"] == "sign-exact" and imp["discordant"] == [3, 0]  # the tie is left out of the test
    assert imp["delta"] == pytest.approx(0.5)  # 3 of the 3 decided pairs, minus chance
    assert imp["p"] == pytest.approx(0.25)  # 2 * P(X <= 0), X ~ Bin(3, 1/2)
    assert out["logp_chosen"]["delta"] == pytest.approx(0.75)  # mean of [1, 0, 0, 2]


def test_implicit_sign_test_all_positive():
    e = implicit_sign_test([0.5] * 8)
    assert e["p"] == pytest.approx(2 * 0.5 ** 8) and e["delta"] == pytest.approx(0.5)


def test_by_category_rates():
    rows = _rows("refusal_harmful", [True, False, True])
    rows[2]["category"] = "d"
    out = by_category(rows, ["refusal_harmful", "over_refusal_benign"])
    assert set(out) == {"refusal_harmful"}
    assert out["refusal_harmful"]["c"]["value"] == 0.5 and out["refusal_harmful"]["c"]["n"] == 2
    assert out["refusal_harmful"]["d"]["value"] == 1.0


def test_preference_columns_use_the_start_as_reference_and_keep_vs_base():
    from bench.eval.steps import StartOutputs, preference_step

    pi = PairLogprobs(chosen=[-1.0, -1.0], rejected=[-2.0, -2.0], chosen_tokens=[1, 1], rejected_tokens=[1, 1])
    base = PairLogprobs(chosen=[-9.0, -9.0], rejected=[-2.0, -2.0], chosen_tokens=[1, 1], rejected_tokens=[1, 1])
    start = PairLogprobs(chosen=[-0.5, -0.5], rejected=[-2.0, -2.0], chosen_tokens=[1, 1], rejected_tokens=[1, 1])
    s = SimpleNamespace(plan=SimpleNamespace(pairs=[{}, {}]), metrics={})
    preference_step(s, SimpleNamespace(pairs=pi), base, StartOutputs("sft", [], start.to_dict()))
    m = s.metrics
    # against the start: the chosen fell by 0.5, the rejected did not move -> implicit accuracy 0
    assert m["chosen_shift"]["value"] == pytest.approx(-0.5) and m["rejected_shift"]["value"] == 0.0
    assert m["pref_acc_implicit"]["value"] == 0.0
    # against the base: the chosen rose by 8 -> implicit accuracy 1 (the old, misleading column)
    assert m["chosen_shift_vs_base"]["value"] == pytest.approx(8.0)
    assert m["pref_acc_implicit_vs_base"]["value"] == 1.0
    assert m["pref_acc_raw"]["value"] == 1.0


def _variant(name: str, stage: str, kind: str, policy: str | None = None):
    from bench.variants import Variant

    rec = {"variant": name, "stage": stage, "artifacts": {}}
    v = Variant(name=name, stage=stage, kind=kind, config_hash="x", record=rec, model_dir=None)
    if policy is not None:
        return SimpleNamespace(name=name, stage=stage, kind=kind, policy_variant=policy)
    return v


@pytest.mark.parametrize(("name", "stage", "kind", "policy", "init", "start"), [
    ("base", "base", "policy", None, "sft", None),
    ("sft", "sft", "policy", None, "sft", "base"),
    ("dpo", "dpo", "policy", None, "sft", "sft"),
    ("dpo", "dpo", "policy", None, "base", "base"),
    ("ppo-kl", "ppo", "policy", None, "sft", "sft"),
    ("steer-add", "steer", "steered", "sft", "sft", "sft"),
    ("reward", "reward", "score", None, "sft", None),
])
def test_starting_point_of_each_kind(name, stage, kind, policy, init, start):
    from bench.variants import starting_point

    cfg = SimpleNamespace(dpo=SimpleNamespace(policy_init=init), ppo=SimpleNamespace(policy_init=init))
    assert starting_point(_variant(name, stage, kind, policy), cfg) == start


def test_numerical_noise_is_a_tie_not_a_preference():
    # a gated steered variant whose gate stays closed: the same log-probs up to float noise
    base = {"chosen": [-1.0, -2.0, -3.0], "rejected": [-2.0, -1.0, -4.0], "chosen_tokens": [1, 1, 1],
            "rejected_tokens": [1, 1, 1]}
    noisy = {**base, "chosen": [c + 2e-6 for c in base["chosen"]]}
    out = pair_logprob_pairs(noisy, base, vs="sft")
    assert out["pref_acc_implicit"]["discordant"] == [0, 0] and out["pref_acc_implicit"]["p"] == 1.0
    assert out["logp_chosen"]["delta"] == 0.0 and out["logp_chosen"]["p"] == 1.0
    from bench.eval.preference import preference_metrics

    m = preference_metrics(PairLogprobs(**noisy), PairLogprobs(**base))
    assert m["pref_acc_implicit"]["value"] == 0.0


def test_sign_test_direction_agrees_with_its_delta_despite_ties():
    # 200 ties, 15 pairs for the chosen, 5 against: better than chance among decided pairs, never "worse"
    from bench.stats import significantly_better

    e = implicit_sign_test([0.0] * 200 + [1.0] * 15 + [-1.0] * 5)
    assert e["discordant"] == [15, 5] and e["delta"] == pytest.approx(0.25) and e["p"] < 0.05
    assert significantly_better(e, +1) and not significantly_better(e, -1)
    assert implicit_sign_test([0.0] * 4)["p"] == 1.0

