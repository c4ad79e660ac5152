"""On-policy rejected responses for DPO (bench/train/onpolicy.py, issue 14): the pair logic on
hand-made rows, and on the smoke profile that the stored answers are the current policy's own greedy
answers, that the set is reused or regenerated exactly when it should be, and that a DPO variant with
``rejected: on_policy`` trains on it and records where its rejected responses came from."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.data.pairs import held_out, interleave_by, one_per_prompt
from bench.train import onpolicy


def _row(label: str, demo_refuses: bool, policy_refuses: bool, answer: str = "policy answer") -> dict:
    return {"prompt": f"{label} prompt {demo_refuses}{policy_refuses}{answer[:3]}", "chosen": "demo",
            "rejected": "written rejected", "history": [], "prompt_label": label,
            "policy_answer": answer, "chosen_refuses": demo_refuses, "policy_refuses": policy_refuses}


def test_select_pairs_takes_the_policys_wrong_answers_as_rejected():
    rows = [_row("harmful", True, False, "Sure, step 1 ..."),   # complied where the demo refuses
            _row("benign", False, True, "I can't help."),       # refused where the demo helps
            _row("harmful", True, True),                        # already refuses
            _row("benign", False, False)]                       # already helps
    pairs = onpolicy.select_pairs(rows, keep_correct=True)
    assert [p["rejected_source"] for p in pairs] == ["on_policy", "on_policy", "offline", "offline"]
    assert pairs[0]["rejected"] == "Sure, step 1 ..." and pairs[0]["chosen"] == "demo"
    assert pairs[1]["rejected"] == "I can't help."
    assert pairs[2]["rejected"] == "written rejected"
    assert all("policy_answer" not in p for p in pairs)  # the answer bookkeeping stays out of training data
    counts = onpolicy.behaviour_counts(rows)
    assert counts == {"prompts": 4, "demo_refuses": 2, "demo_helps": 2, "policy_complies_where_demo_refuses": 1,
                      "policy_refuses_where_demo_helps": 1, "empty_answers": 0}


def test_select_pairs_rejects_filter_and_dropping_correct_prompts():
    rows = [_row("harmful", True, False, "Sure"), _row("benign", False, True, "No."), _row("benign", False, False)]
    only_comply = onpolicy.select_pairs(rows, keep_correct=True, rejects=["comply"])
    # The benign over-refusal is not used as a rejected answer: that prompt keeps its written pair.
    assert [p["rejected_source"] for p in only_comply] == ["on_policy", "offline", "offline"]
    assert only_comply[1]["rejected"] == "written rejected"
    dropped = onpolicy.select_pairs(rows, keep_correct=False)
    assert [p["rejected"] for p in dropped] == ["Sure", "No."]  # the correct prompt is gone


def test_own_chosen_puts_the_policys_right_answers_in_place_of_the_written_chosen():
    rows = [_row("harmful", True, True, "I'm not going to help with that."),   # refuses rightly
            _row("benign", False, False, "Sure, mix flour and water."),        # helps rightly
            _row("benign", False, True, "I'm not going to help with that."),   # over-refuses
            _row("harmful", True, True, "  ")]                                 # empty: never a training response
    pairs = onpolicy.select_pairs(rows, keep_correct=True, own_chosen=["refuse"])
    assert [p["chosen"] for p in pairs] == ["I'm not going to help with that.", "demo", "demo", "demo"]
    assert [p.get("chosen_source", "offline") for p in pairs] == ["on_policy", "offline", "offline", "offline"]
    assert [p["rejected"] for p in pairs] == ["written rejected", "written rejected", "I'm not going to help with that.",
                                              "written rejected"]
    both = onpolicy.select_pairs(rows, keep_correct=True, own_chosen=["refuse", "help"])
    assert both[1]["chosen"] == "Sure, mix flour and water." and both[1]["chosen_source"] == "on_policy"
    assert onpolicy.select_pairs(rows, keep_correct=False, own_chosen=["refuse"]) == [pairs[2]]


def test_empty_answer_is_never_a_rejected_response():
    rows = [_row("harmful", True, False, "   ")]
    pairs = onpolicy.select_pairs(rows, keep_correct=True)
    assert onpolicy.behaviour_counts(rows)["empty_answers"] == 1
    assert pairs[0]["rejected_source"] == "offline" and pairs[0]["rejected"] == "written rejected"
    assert onpolicy.select_pairs([_row("harmful", True, False, "")], keep_correct=False) == []


def test_interleave_by_keeps_every_group_under_a_cap():
    items = [{"k": "a", "i": i} for i in range(6)] + [{"k": "b", "i": i} for i in range(2)] + [{"i": 99}]
    out = interleave_by(items, "k")
    assert [(x.get("k"), x["i"]) for x in out[:3]] == [("a", 0), ("b", 0), (None, 99)]
    assert sorted(map(id, out)) == sorted(map(id, items))  # a permutation: nothing lost or copied
    assert [x["i"] for x in out if x.get("k") == "a"] == list(range(6))  # order within a group kept


def test_held_out_prompts_leave_every_pair_of_theirs_and_take_turns_by_label():
    pairs = [{"prompt": f"h{i}", "prompt_label": "harmful"} for i in range(4)]
    pairs += [{"prompt": f"b{i}", "prompt_label": "benign"} for i in range(2)]
    pairs += [{"prompt": "h0", "prompt_label": "harmful", "chosen": "second pair of h0"}]
    kept, held = held_out(pairs, 3)
    assert [p["prompt"] for p in held] == ["h0", "b0", "h1"]  # round-robin by label, one per prompt
    assert [p["prompt"] for p in kept] == ["h2", "h3", "b1"]  # both pairs of h0 are gone
    assert held_out(pairs, 0) == (pairs, [])


def test_on_policy_prompts_are_the_sft_holdout_when_dpo_starts_from_it(smoke_cfg):
    from bench.data import load
    from bench.data.pairs import dpo_pairs, prompt_key

    rows = load(smoke_cfg.data.preferences, "train", smoke_cfg.data).rows
    cfg = dataclasses.replace(smoke_cfg, sft=dataclasses.replace(smoke_cfg.sft, holdout_prompts=5),
                              dpo=dataclasses.replace(smoke_cfg.dpo, policy_init="sft", on_policy_prompts=0))
    held = onpolicy.on_policy_prompts(cfg, rows)
    kept, expected = held_out(dpo_pairs(rows, cfg.sft.pairs), 5)
    assert [prompt_key(p) for p in held] == [prompt_key(p) for p in expected] and len(held) == 5
    assert not {prompt_key(p) for p in held} & {prompt_key(p) for p in kept}  # SFT imitates none of them


def test_one_per_prompt_keeps_the_first_pair_of_each_prompt():
    pairs = [{"prompt": "p", "chosen": "1"}, {"prompt": "p", "chosen": "2"}, {"prompt": "q", "chosen": "3"},
             {"prompt": "p", "chosen": "4", "history": [{"role": "user", "content": "x"}]}]
    assert [p["chosen"] for p in one_per_prompt(pairs)] == ["1", "3", "4"]


@pytest.fixture(scope="module")
def onpolicy_run(smoke_cfg, smoke_base):
    cfg = dataclasses.replace(smoke_cfg, profile=dataclasses.replace(smoke_cfg.profile, name="smoke-onpolicy"))
    path = onpolicy.ensure_onpolicy_pairs(cfg)
    return cfg, path


def test_answers_are_the_current_policys_greedy_answers(onpolicy_run):
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.refusal import detect_many
    from bench.models import load_pretrained, policy_init_dir

    cfg, path = onpolicy_run
    rows = onpolicy.read_answers(cfg)
    assert len(rows) == cfg.dpo.on_policy_prompts
    assert len({r["prompt"] for r in rows}) == len(rows)  # one answer per prompt
    model, tok = load_pretrained(policy_init_dir(cfg, cfg.dpo.policy_init), cfg.model)
    again = generate_greedy(model, tok, [r["prompt"] for r in rows], cfg.model.system_prompt,
                            GenerationSettings(cfg.dpo.on_policy_max_new_tokens, cfg.dpo.on_policy_batch_size))
    assert [r["policy_answer"] for r in rows] == again
    asked = [r["prompt"] for r in rows]
    assert [r["policy_refuses"] for r in rows] == [d.is_refusal for d in detect_many(again, asked)]
    assert [r["chosen_refuses"] for r in rows] == [d.is_refusal for d in detect_many([r["chosen"] for r in rows], asked)]
    rec = json.loads((path.parent / "record.json").read_text())
    assert rec["stage"] == "onpolicy" and rec["config_hash"] == onpolicy.config_hash(cfg)
    assert rec["extra"]["counts"] == onpolicy.behaviour_counts(rows)
    assert rec["metrics"]["policy_refusal_where_demo_refuses"]["n"] == rec["extra"]["counts"]["demo_refuses"]


def test_set_is_reused_unless_what_decides_it_changes(onpolicy_run):
    cfg, path = onpolicy_run
    before = path.stat().st_mtime_ns
    # Training settings and variants do not decide the answers: same hash, no regeneration.
    lr = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, learning_rate=1.0, variants={},
                                                          on_policy_keep_correct=False))
    assert onpolicy.config_hash(lr) == onpolicy.config_hash(cfg)
    onpolicy.ensure_onpolicy_pairs(lr)
    assert path.stat().st_mtime_ns == before
    # Decoding length does.
    longer = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, on_policy_max_new_tokens=4))
    assert onpolicy.config_hash(longer) != onpolicy.config_hash(cfg)


def test_a_new_judge_version_relabels_the_set_and_retrains_dpo_and_ppo(smoke_cfg, monkeypatch):
    """The judge labels the on-policy pairs and the tracking pass's refusal rates: its version is in the
    hash of every stage that depends on it, so a judge change cannot leave stale pairs or series."""
    from bench.eval import refusal
    from bench.train import ppo
    from bench.train.hf_trainer import judged_hash

    name = next(iter(smoke_cfg.ppo.variants))
    before = onpolicy.config_hash(smoke_cfg), ppo.config_hash(smoke_cfg, name), judged_hash("abc")
    monkeypatch.setattr(refusal, "DETECTOR_VERSION", refusal.DETECTOR_VERSION + "-next")
    after = onpolicy.config_hash(smoke_cfg), ppo.config_hash(smoke_cfg, name), judged_hash("abc")
    assert all(a != b for a, b in zip(after, before))


def test_dpo_variant_trains_on_the_onpolicy_set_and_records_sources(onpolicy_run):
    from bench.records import read_record
    from bench.runs import run_dir
    from bench.train.dpo import run_dpo

    cfg, _ = onpolicy_run
    run_dpo(cfg, only=("dpo-onpolicy",))
    rec = read_record(run_dir(cfg.profile.name, "dpo-onpolicy") / "record.json")
    expected = onpolicy.select_pairs(onpolicy.read_answers(cfg), cfg.dpo.on_policy_keep_correct,
                                        cfg.dpo.on_policy_rejects)
    sources = rec["extra"]["rejected_sources"]
    assert sum(sources.values()) == rec["extra"]["train_pairs"] == len(expected)
    assert sources.get("on_policy", 0) == sum(p["rejected_source"] == "on_policy" for p in expected)
    assert rec["extra"]["variant"]["rejected"] == "on_policy"
    assert rec["datasets"]["on_policy_pairs"]["config_hash"] == onpolicy.config_hash(cfg)


def test_unknown_variant_name_is_a_clear_error(smoke_cfg):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="unknown variant.*nope.*known: dpo"):
        smoke_cfg.selected_variants("dpo", ("nope",))
