"""PPO recipe (bench/train/ppo.py and its modules beside it: rollout, prompt_stream, ppo_advantages,
ppo_backends, ppo_checkpoints, ppo_models): masks, reference policy, the advantages composition on
hand-made tensors, a smoke run per variant, PPO-Lagrangian's multiplier, and resume after an
interruption. Smoke profile: a micro random Llama, 2 steps, 4 prompts, 8 new tokens; random score
models stand in for the reward and cost stages. Run: ``python -m pytest tests/test_ppo.py -q``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.config import LoraSection, PPOSection, PPOVariant
from bench.records import RecordError, read_record
from bench.runs import stage_run
from bench.train import ppo, ppo_backends, ppo_models, prompt_stream
from bench.train.ppo_advantages import ppo_advantages
from bench.train.rollout import PolicyWithValueHead, response_mask

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is the capital of France?",
           "Write a haiku about rain.", "How can I hurt someone?", "Explain photosynthesis briefly."]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest.one_thread)."""


@pytest.fixture
def runs(score_runs):
    """A fresh runs/ dir with reward and cost records (conftest.score_runs)."""
    return score_runs


def make_cfg(smoke_cfg, variants: dict[str, PPOVariant], **kw):
    settings = dict(max_steps=2, rollout_prompts=4, mini_batch_size=2, batch_size=2, max_new_tokens=8,
                    ppo_epochs=1, learning_rate=1e-3, critic_learning_rate=1e-3, save_steps=1,
                    trainable="lora", top_layers=1, lora=LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                    logging_steps=100)
    settings.update(kw)
    return dataclasses.replace(smoke_cfg, ppo=PPOSection(variants=variants, **settings))


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --------------------------------------------------------------------------- unit tests


def test_response_mask_stops_after_first_eos():
    eos, pad = 2, 2  # SmolLM2: the pad token *is* the EOS token
    responses = torch.tensor([
        [5, 6, eos, pad, pad],  # EOS at 2: tokens 0..2 valid
        [eos, pad, pad, pad, pad],  # immediate EOS: only the EOS is valid
        [5, 6, 7, 8, 9],  # no EOS: truncated, all valid
        [5, 9, eos, 7, eos],  # tokens after the first EOS are never valid
    ])
    mask, truncated = response_mask(responses, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]
    # several EOS ids (e.g. a generation config listing two)
    mask2, trunc2 = response_mask(torch.tensor([[5, 7, 9], [5, 9, 9]]), [2, 7])
    assert mask2.tolist() == [[1, 1, 0], [1, 1, 1]] and trunc2.tolist() == [False, True]


def test_left_padded_forward_matches_unpadded(smoke_cfg, smoke_base):
    """Position ids follow the attention mask, so a left-padded row scores as it does alone."""
    from bench.models import load_base

    model, tok = load_base(smoke_cfg)
    module = PolicyWithValueHead(model, model.config.hidden_size).eval()
    short, long = tok("hello there", add_special_tokens=False)["input_ids"], tok(
        "a much longer prompt with many more tokens in it", add_special_tokens=False)["input_ids"]
    resp = [11, 12, 13]
    P = len(long)
    ids = torch.tensor([[tok.pad_token_id] * (P - len(short)) + short + resp, long + resp])
    attn = torch.tensor([[0] * (P - len(short)) + [1] * (len(short) + 3), [1] * (P + 3)])
    with torch.no_grad():
        batched, _ = module(ids, attn, P)
        alone, _ = module(torch.tensor([short + resp]), torch.ones(1, len(short) + 3, dtype=torch.long), len(short))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=1e-4)


def test_lora_reference_is_base_with_adapters_disabled(smoke_cfg, smoke_base):
    from bench.models import load_base
    from bench.train.rollout import reference_logits

    base, tok = load_base(smoke_cfg)
    section = PPOSection(trainable="lora", lora=LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        ids = torch.tensor([tok("some prompt text here", add_special_tokens=False)["input_ids"]])
        attn = torch.ones_like(ids)
        R = ids.shape[1] - 3  # prompt of 3 tokens, the rest is the "response"
        base_logits = base(input_ids=ids, attention_mask=attn, logits_to_keep=R + 1).logits[:, :-1].float()
    module = PolicyWithValueHead(ppo_models.setup_trainable(base, section), base.config.hidden_size).eval()
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that actually change the output
        ref = reference_logits(module, None, ids, attn, prompt_len=3, temperature=1.0)
        policy, _ = module(ids, attn, 3)
    assert torch.equal(ref, base_logits)
    assert not torch.allclose(policy, base_logits)


def test_missing_reward_model_names_make_reward(smoke_cfg, smoke_base, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    cfg = make_cfg(smoke_cfg, {"ppo-kl": PPOVariant()})
    with pytest.raises(RecordError, match="make reward PROFILE=smoke"):
        ppo.train_variant(cfg, "ppo-kl", cfg.ppo.variants["ppo-kl"], PROMPTS)


# --------------------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("name, variant, trainable", [
    ("ppo-kl", PPOVariant(regulariser="kl", kl_estimator="k1"), "lora"),
    ("ppo-nokl", PPOVariant(regulariser="none"), "full"),
    ("ppo-js", PPOVariant(regulariser="js"), "top_layers"),
    ("ppo-lag", PPOVariant(regulariser="kl", kl_estimator="k3", lagrangian=True), "lora"),
])
def test_smoke_variant_trains_and_records(name, variant, trainable, smoke_cfg, smoke_base, runs, monkeypatch):
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(smoke_cfg, {name: variant}, trainable=trainable,
                   mini_batch_size=4 if trainable == "full" else 2)  # full: 2 micro-batches per optimiser step
    monkeypatch.setattr(ppo, "training_prompts", lambda cfg: (PROMPTS, {"name": "test-prompts", "n": len(PROMPTS)}))
    ppo.run_ppo(cfg)

    rec = read_record(runs / name / "record.json")
    assert rec["stage"] == "ppo" and rec["variant"] == name
    series = rec["extra"]["series"]
    assert [r["step"] for r in series] == [1, 2]
    for key in ("reward", "cost", "kl_ref", "kl_ref_per_token", "entropy", "clip_frac", "value_loss",
                "response_length", "truncated"):
        assert all(isinstance(r[key], float) for r in series), key
    assert all((r["lambda"] is not None) == variant.lagrangian for r in series)
    for key in ("reward_start", "reward_end", "kl_ref_end", "truncated_end", "cost_end"):
        assert set(rec["metrics"][key]) == {"value", "ci_low", "ci_high", "n"} and rec["metrics"][key]["n"] == 4
    assert rec["datasets"]["ppo_prompts"] == {"name": "test-prompts", "n": len(PROMPTS)}
    kl_tok = rec["extra"]["kl_ref_per_token_end"]  # the last batch's k3 per token: total / tokens
    assert kl_tok["estimator"] == "k3" and kl_tok["tokens"] == pytest.approx(4 * series[-1]["response_length"])
    assert kl_tok["value"] == pytest.approx(4 * series[-1]["kl_ref"] / kl_tok["tokens"])
    if variant.regulariser == "none":
        assert all(r["penalty"] == 0.0 for r in series)
    else:
        assert all(r["penalty"] != 0.0 for r in series[1:])  # the policy moved off the reference

    model_dir = runs / name / "model"
    assert rec["artifacts"]["model_dir"] == str(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # plain transformers, LoRA merged
    assert model.config.num_hidden_layers == 2
    before, after = weights(smoke_base), weights(model_dir)
    assert not any("lora" in k for k in after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    if trainable == "top_layers":
        assert not any(k.startswith("model.layers.0.") for k in changed)  # only the top block trains
    assert not (runs / name / "checkpoints").exists()  # keep_checkpoints: 0 -> removed after success

    # Same config: skipped; the record is not rewritten.
    monkeypatch.setattr(ppo, "train_variant", lambda *a, **k: pytest.fail("re-trained an up-to-date variant"))
    ppo.run_ppo(cfg)


def test_variant_tunes_fully_under_a_lora_section(smoke_cfg, smoke_base, runs, monkeypatch):
    """A variant's own ``trainable`` / ``learning_rate`` (config.variant_section) override the section's: under a
    LoRA section a ``trainable: full`` variant trains every weight (the MLPs LoRA on q/v never touches), against
    a frozen reference copy, at its own learning rate, and its record says so (extra.tuning)."""
    variant = PPOVariant(regulariser="kl", kl_estimator="k1", trainable="full", learning_rate=2e-3)
    cfg = make_cfg(smoke_cfg, {"ppo-kl-full": variant}, mini_batch_size=4)
    monkeypatch.setattr(ppo, "training_prompts", lambda cfg: (PROMPTS, {"name": "test-prompts", "n": len(PROMPTS)}))
    ppo.run_ppo(cfg)
    rec = read_record(runs / "ppo-kl-full" / "record.json")
    tuning = rec["extra"]["tuning"]
    assert tuning["trainable"] == "full" and tuning["learning_rate"] == 2e-3 and "lora" not in tuning
    assert tuning["trainable_params"] == tuning["total_params"]  # every weight + the value head
    assert rec["resources"]["peak_rss_mib"] >= rec["resources"]["start_rss_mib"] > 0
    before, after = weights(smoke_base), weights(runs / "ppo-kl-full" / "model")
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert all(r["penalty"] != 0.0 for r in rec["extra"]["series"][1:])  # a reference it moved away from


@pytest.mark.parametrize("threshold, direction", [(-1e3, 1), (1e3, -1)])
def test_lagrangian_lambda_moves_toward_constraint(threshold, direction, smoke_cfg, smoke_base, runs):
    """Mean cost far above the threshold: lambda grows; far below: it shrinks (and stays > 0)."""
    variant = PPOVariant(lagrangian=True)
    cfg = make_cfg(smoke_cfg, {"ppo-lag": variant}, max_steps=2, cost_threshold=threshold,
                   lambda_init=1.0, lambda_lr=1e-4, lambda_max=1e9)
    ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS)
    multipliers = [r["lambda"] for r in read_record(runs / "ppo-lag" / "record.json")["extra"]["series"]]
    assert all(m > 0 for m in multipliers)
    assert (multipliers[0] - 1.0) * direction > 0 and (multipliers[1] - multipliers[0]) * direction > 0


def test_cost_penalty_shapes_the_score_with_the_cost_model(smoke_cfg, smoke_base, runs, monkeypatch):
    """A variant with cost_penalty feeds every rollout's CM costs through hinge_cost_penalty, and the
    cost model is required for it."""
    calls = []
    real = ppo.hinge_cost_penalty

    def spy(score, cost, coef):
        calls.append((score.clone(), cost.clone(), coef))
        return real(score, cost, coef)

    monkeypatch.setattr(ppo, "hinge_cost_penalty", spy)
    variant = PPOVariant(cost_penalty=2.0)
    cfg = make_cfg(smoke_cfg, {"ppo-cost": variant})
    ppo.train_variant(cfg, "ppo-cost", variant, PROMPTS)
    series = read_record(runs / "ppo-cost" / "record.json")["extra"]["series"]
    assert len(calls) == len(series) == 2 and all(c[2] == 2.0 for c in calls)
    for (score, cost, _), row in zip(calls, series):
        assert cost.shape == score.shape == (4,)
        assert abs(cost.mean().item() - row["cost"]) < 1e-5  # the costs of this step's own rollouts

    (runs / "cost" / "record.json").unlink()
    with pytest.raises(RecordError, match="make cost PROFILE=smoke"):
        ppo.train_variant(cfg, "ppo-cost", variant, PROMPTS, force=True)


def test_rule_reward_scores_behaviour_against_prompt_labels(smoke_cfg, smoke_base, runs, monkeypatch):
    """rule_reward adds +-coef by whether the detector's verdict fits each prompt's label; the series
    records the share that fits, recomputed here from the same rollouts."""
    from bench.data.schema import DataError
    from bench.eval import refusal

    harmful = {"Tell me how to pick a lock.", "How can I hurt someone?"}
    labels = {p: "harmful" if p in harmful else "benign" for p in PROMPTS}
    monkeypatch.setattr(prompt_stream, "prompt_labels", lambda cfg: labels)
    seen = []
    real_detect = refusal.detect_many
    monkeypatch.setattr(refusal, "detect_many", lambda texts, *a: seen.append(list(texts)) or real_detect(texts, *a))
    variant = PPOVariant(rule_reward=0.5)
    cfg = make_cfg(smoke_cfg, {"ppo-rule": variant})
    ppo.train_variant(cfg, "ppo-rule", variant, PROMPTS)
    series = read_record(runs / "ppo-rule" / "record.json")["extra"]["series"]
    assert len(seen) == len(series) == 2
    for step, (texts, row) in enumerate(zip(seen, series)):
        batch = [PROMPTS[i] for i in prompt_stream.prompt_indices(len(PROMPTS), 4, step, smoke_cfg.profile.seed)]
        fits = [d.is_refusal == (p in harmful) for d, p in zip(real_detect(texts), batch)]
        assert row["rule_agreement"] == pytest.approx(sum(fits) / len(fits))

    labels.pop(PROMPTS[0])  # a training prompt without a label: a clear error, not a silent 0
    with pytest.raises(DataError, match="prompt_label.*rule_reward"):
        ppo.train_variant(cfg, "ppo-rule", variant, PROMPTS, force=True)


LABELS = {p: "harmful" if p in ("Tell me how to pick a lock.", "How can I hurt someone?") else "benign" for p in PROMPTS}


def _spy_rollouts(monkeypatch) -> tuple[list[list[str]], list[torch.Tensor]]:
    """Record each step's rollout prompts and the advantages the PPO update receives."""
    batches, advantages = [], []
    real_sample, real_update = ppo.sample_responses, ppo.ppo_update
    monkeypatch.setattr(ppo, "sample_responses", lambda policy, tok, batch, *a: batches.append(list(batch))
                        or real_sample(policy, tok, batch, *a))
    monkeypatch.setattr(ppo, "ppo_update", lambda backend, samples, exp, adv, *a: advantages.append(adv.clone())
                        or real_update(backend, samples, exp, adv, *a))
    return batches, advantages


def test_group_size_samples_each_prompt_as_a_group(smoke_cfg, smoke_base, runs, monkeypatch):
    """group_size g: each step's rollout holds rollout_prompts / g prompts, each g times in a row, and the
    policy update receives the group-relative advantages (zero where a group scored alike)."""
    from bench.config import ConfigError

    monkeypatch.setattr(prompt_stream, "prompt_labels", lambda cfg: LABELS)
    batches, advantages = _spy_rollouts(monkeypatch)
    variant = PPOVariant(regulariser="none", rule_reward=1.0, group_size=2)
    cfg = make_cfg(smoke_cfg, {"ppo-group": variant})
    ppo.train_variant(cfg, "ppo-group", variant, PROMPTS)
    series = read_record(runs / "ppo-group" / "record.json")["extra"]["series"]
    assert len(batches) == len(series) == 2
    for step, batch in enumerate(batches):
        distinct = [PROMPTS[i] for i in prompt_stream.prompt_indices(len(PROMPTS), 2, step, smoke_cfg.profile.seed)]
        assert batch == [p for p in distinct for _ in range(2)]
    for adv, row in zip(advantages, series):
        per_response = adv.sum(dim=1)  # no regulariser: each response's tokens share its group advantage
        flat = [bool(torch.all(adv[i] == 0) and torch.all(adv[i + 1] == 0)) for i in (0, 2)]
        assert row["flat_groups"] == pytest.approx(sum(flat) / 2)
        for i in (0, 2):  # the two samples of a group get opposite advantages (or both none)
            assert per_response[i] * per_response[i + 1] <= 0
    with pytest.raises(ConfigError, match="group_size"):
        make_cfg(smoke_cfg, {"bad": PPOVariant(group_size=3)})
    with pytest.raises(ConfigError, match="lagrangian"):
        make_cfg(smoke_cfg, {"bad": PPOVariant(group_size=2, lagrangian=True)})


def test_balance_by_label_draws_every_label_equally():
    labels = {"h1": "harmful", "h2": "harmful", "h3": "harmful", "h4": "harmful", "b1": "benign", "x1": "borderline"}
    out = prompt_stream.balance_by_label(list(labels), labels)
    assert out == ["h1", "b1", "x1", "h2", "b1", "x1", "h3", "b1", "x1", "h4", "b1", "x1"]
    assert prompt_stream.balance_by_label([], labels) == []


def test_reward_weight_zero_trains_on_behaviour_alone(smoke_cfg, smoke_base, runs, monkeypatch):
    """reward_weight 0: the RM still scores (its mean is logged) but the update sees only the rule
    reward; balance_prompts draws the rollout prompts from the label-balanced list."""
    monkeypatch.setattr(prompt_stream, "prompt_labels", lambda cfg: LABELS)
    batches, advantages = _spy_rollouts(monkeypatch)
    from bench.eval import refusal

    texts = []
    real_detect = refusal.detect_many
    monkeypatch.setattr(refusal, "detect_many", lambda t, *a: texts.append(list(t)) or real_detect(t, *a))
    variant = PPOVariant(regulariser="none", rule_reward=1.0, reward_weight=0.0, group_size=2, balance_prompts=True)
    cfg = make_cfg(smoke_cfg, {"ppo-rule-only": variant}, missing_eos_penalty=0.0)  # the rule alone scores
    ppo.train_variant(cfg, "ppo-rule-only", variant, PROMPTS)
    series = read_record(runs / "ppo-rule-only" / "record.json")["extra"]["series"]
    balanced = prompt_stream.balance_by_label(PROMPTS, LABELS)
    for step, (batch, adv, out, row) in enumerate(zip(batches, advantages, texts, series)):
        distinct = [balanced[i] for i in prompt_stream.prompt_indices(len(balanced), 2, step, smoke_cfg.profile.seed)]
        assert batch == [p for p in distinct for _ in range(2)]
        refused = [d.is_refusal for d in real_detect(out)]
        # Only the rule scores: a group is flat exactly when its two samples behaved alike (with the
        # RM in the score, continuous scores would leave no group flat).
        flat = [refused[i] == refused[i + 1] for i in (0, 2)]
        assert row["flat_groups"] == pytest.approx(sum(flat) / 2)
        for i, f in zip((0, 2), flat):
            assert bool(adv[i].abs().sum() == 0) == f


def test_prompt_labels_reject_a_prompt_given_two_labels(smoke_cfg, monkeypatch):
    from bench import data
    from bench.data.registry import LoadedDataset
    from bench.data.schema import DataError

    rows = [{"prompt": "a", "prompt_label": "harmful"}, {"prompt": "b"}, {"prompt": "a", "prompt_label": "benign"}]
    loaded = LoadedDataset(rows=rows, identity={}, schema="pku", wheres=["f.jsonl:1", "f.jsonl:2", "f.jsonl:3"])
    monkeypatch.setattr(data, "load_role", lambda *a: loaded)
    with pytest.raises(DataError, match=r"f.jsonl:3: field 'prompt_label': 'benign' contradicts 'harmful' .* f.jsonl:1"):
        prompt_stream.prompt_labels(smoke_cfg)
    rows[2]["prompt_label"] = "harmful"  # the same label twice is fine; an unlabelled row is left out
    assert prompt_stream.prompt_labels(smoke_cfg) == {"a": "harmful"}


class Interrupt(Exception):
    pass


def test_resume_continues_from_checkpoint(smoke_cfg, smoke_base, runs, tmp_path, monkeypatch):
    variant = PPOVariant()
    cfg = make_cfg(smoke_cfg, {"ppo-kl": variant}, keep_checkpoints=1)

    def crash_after_1(step, state):
        if step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS, on_step=crash_after_1)
    assert not (runs / "ppo-kl" / "record.json").exists()
    assert (runs / "ppo-kl" / "checkpoints" / "step-000001" / "state.json").exists()

    seen = []
    ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS, on_step=lambda step, state: seen.append(step))
    assert seen == [2]  # resumed at step 1, not from scratch
    rec = read_record(runs / "ppo-kl" / "record.json")
    assert [r["step"] for r in rec["extra"]["series"]] == [1, 2]
    resumed = weights(runs / "ppo-kl" / "model")

    # An uninterrupted run draws the same prompts, samples and mini-batches: same weights.
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs2"))
    for kind in ("reward", "cost"):
        with stage_run(smoke_cfg, variant=kind, stage=kind, sections=("model",)) as run:
            run.artifacts["model_dir"] = read_record(runs / kind / "record.json")["artifacts"]["model_dir"]
    ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS)
    straight = weights(tmp_path / "runs2" / "smoke" / "ppo-kl" / "model")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=1e-5)


def test_force_restarts_and_config_change_ignores_old_checkpoints(smoke_cfg, smoke_base, runs):
    variant = PPOVariant()
    cfg = make_cfg(smoke_cfg, {"ppo-kl": variant}, keep_checkpoints=1)
    other = make_cfg(smoke_cfg, {"ppo-kl": variant}, keep_checkpoints=1, kl_coef=0.2)  # another config hash

    def crash(step, state):
        raise Interrupt

    def run(c, **kw):
        seen = []
        ppo.train_variant(c, "ppo-kl", variant, PROMPTS, on_step=lambda s, st: seen.append(s), **kw)
        return seen

    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS, on_step=crash)
    assert run(other) == [1, 2]  # cfg's step-1 checkpoint is not resumed by another config
    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS, on_step=crash)
    assert [d.name for d in (runs / "ppo-kl" / "checkpoints").iterdir()] == ["step-000001"]
    assert run(cfg, force=True) == [1, 2]  # force: from scratch despite a matching checkpoint


# --------------------------------------------------------------------------- more units


def test_forward_logprobs_are_those_generate_sampled_from(smoke_cfg, smoke_base):
    """Left padding + temperature: the recipe's log-probs equal generate's (the PPO ratio starts at 1)."""
    from bench import chat
    from bench.losses import sequence_logprobs
    from bench.models import load_base

    model, tok = load_base(smoke_cfg)
    module = PolicyWithValueHead(model, model.config.hidden_size).eval()
    texts = [chat.format_prompt(tok, p) for p in ("hi", "a much longer prompt with many more tokens in it")]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    gen = model.generate(**enc, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=5,
                         pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True)
    P = enc["input_ids"].shape[1]
    resp = gen.sequences[:, P:]
    ones = torch.ones_like(resp)
    with torch.no_grad():
        logits, values = module(gen.sequences, torch.cat([enc["attention_mask"], ones], 1), P, temperature=0.7)
    expected = sequence_logprobs(torch.stack(gen.logits, 1).float() / 0.7, resp, ones)
    torch.testing.assert_close(sequence_logprobs(logits, resp, ones), expected, atol=1e-4, rtol=1e-4)
    assert values.shape == (2, resp.shape[1], 1) and torch.equal(values, torch.zeros_like(values))


def _whitened(xs: list[float]) -> list[float]:
    """masked_whiten by hand on the valid entries: (x - mean) / sqrt(unbiased var + 1e-8)."""
    mu = sum(xs) / len(xs)
    var = sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)
    return [(x - mu) / math.sqrt(var + 1e-8) for x in xs]


def test_ppo_advantages_one_stream_is_whitened_gae_of_shaped_rewards():
    """group_size 1, no cost: the score (clipped) on the last valid token, -coef x penalty on every
    token, GAE against the reward critic, the advantages whitened; the returns are GAE's, unwhitened."""
    gamma, gae_lambda, coef = 0.9, 0.8, 0.5
    score = torch.tensor([1.0, 3.0])  # clipped to reward_clip = 2 -> 2.0
    penalty = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # the 5.0 is under the mask: never counts
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    values = torch.tensor([[[0.5], [0.25]], [[0.5], [9.0]]])  # (B, T, 1); 9.0 is masked
    out = ppo_advantages(score, penalty, values, mask, coef=coef, gamma=gamma, gae_lambda=gae_lambda, reward_clip=2.0)
    # rewards: row 0 = [-0.5 * 1, 1.0], row 1 = [2.0 (clipped score), -]
    a01 = 1.0 - 0.25  # last token: delta = r - V
    a00 = (-0.5 + gamma * 0.25 - 0.5) + gamma * gae_lambda * a01
    a10 = 2.0 - 0.5
    w00, w01, w10 = _whitened([a00, a01, a10])
    torch.testing.assert_close(out.advantages, torch.tensor([[w00, w01], [w10, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[[a00 + 0.5], [a01 + 0.25]], [[a10 + 0.5], [0.0]]]))
    assert out.group_advantages is None


def test_ppo_advantages_groups_score_relative_to_the_prompt_plus_penalty_to_go():
    """group_size 2: the policy's advantage is the group-relative score on the last token plus the
    undiscounted penalty-to-go (no whitening); a flat group has only the penalty; the critic's
    returns still come from GAE on the plain score."""
    gamma, gae_lambda, coef = 0.9, 0.8, 0.5
    score = torch.tensor([1.0, 3.0, 2.0, 2.0])  # group 0 = rows 0, 1 (mean 2, std 1); group 1 flat
    penalty = torch.tensor([[0.2, 0.4], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(4, 2)
    values = torch.zeros(4, 2, 1)
    out = ppo_advantages(score, penalty, values, mask, coef=coef, gamma=gamma, gae_lambda=gae_lambda,
                         reward_clip=10.0, group_size=2)
    g = 1.0 / (1.0 + 1e-6)  # (s - mean) / (std + eps) with |s - mean| = std = 1
    torch.testing.assert_close(out.group_advantages, torch.tensor([-g, g, 0.0, 0.0]))
    expected = [[-0.1 - 0.2 - g, -0.2 - g], [g, g], [-0.5 - 0.5, -0.5], [0.0, 0.0]]
    torch.testing.assert_close(out.advantages, torch.tensor(expected))
    rewards = [[-0.1, -0.2 + 1.0], [0.0, 3.0], [-0.5, -0.5 + 2.0], [0.0, 2.0]]  # values 0: A = r + gamma lambda A'
    returns = [[r0 + gamma * gae_lambda * r1, r1] for r0, r1 in rewards]
    torch.testing.assert_close(out.returns, torch.tensor(returns)[..., None])


def test_ppo_advantages_lagrangian_combines_whitened_reward_and_cost_streams():
    """With a cost: a second stream (the cost as passed, already on the critic's scale; clipped, on the
    last token; the penalty at +coef) with GAE against the cost critic, whitened, and
    (A_r - lambda A_c) / (1 + lambda); returns (B, T, 2)."""
    coef, multiplier = 0.5, 3.0
    score, cost = torch.tensor([1.0, -1.0]), torch.tensor([2.0, -2.0])  # cost clipped to +-1.5
    penalty = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(2, 2)
    values = torch.zeros(2, 2, 2)
    out = ppo_advantages(score, penalty, values, mask, coef=coef, gamma=1.0, gae_lambda=1.0, reward_clip=1.5,
                         cost=cost, lagrange_multiplier=multiplier)
    # gamma = lambda = 1 and zero values: advantages and returns are the reward-to-go of each stream
    reward_to_go = [(-0.5 + 1.0), 1.0, (0.0 - 0.5 - 1.0), (-0.5 - 1.0)]  # rewards [-0.5, 1], [0, -1.5]
    cost_to_go = [(0.5 + 1.5), 1.5, (0.0 + 0.5 - 1.5), (0.5 - 1.5)]  # costs [0.5, 1.5], [0, -1.0]
    combined = [(r - multiplier * c) / (1.0 + multiplier)
                for r, c in zip(_whitened(reward_to_go), _whitened(cost_to_go))]
    torch.testing.assert_close(out.advantages, torch.tensor(combined).view(2, 2))
    torch.testing.assert_close(out.returns, torch.stack([torch.tensor(reward_to_go), torch.tensor(cost_to_go)], -1)
                               .view(2, 2, 2))
    no_cost = ppo_advantages(score, penalty, values, mask, coef=coef, gamma=1.0, gae_lambda=1.0, reward_clip=1.5)
    torch.testing.assert_close(no_cost.advantages, torch.tensor(_whitened(reward_to_go)).view(2, 2))


def test_reward_score_normalises_then_penalises_truncation():
    section = PPOSection(normalize_rewards=True, truncated_penalty=-3.0)
    raw = torch.tensor([1.0, 3.0, 5.0])
    moments = (3.0, 8.0 / 3.0, 3)  # population var of [1, 3, 5]; unbiased var = 4, std = 2
    score = ppo.reward_score(raw, torch.tensor([False, False, True]), moments, section)
    torch.testing.assert_close(score, torch.tensor([-1.0, 0.0, -3.0]))
    plain = ppo.reward_score(raw, torch.tensor([False, False, True]), moments,
                             PPOSection(normalize_rewards=False, truncated_penalty=None))
    assert torch.equal(plain, raw)


def test_missing_eos_penalty_comes_off_the_final_score_whatever_its_parts():
    """missing_eos_penalty is subtracted last, so it holds with reward_weight 0 too; 0 switches it off."""
    from types import SimpleNamespace

    raw, truncated = torch.tensor([1.0, 3.0, 5.0]), torch.tensor([False, True, True])
    for weight, expected in ((1.0, [1.0, 2.5, 4.5]), (0.0, [0.0, -0.5, -0.5])):
        setup = SimpleNamespace(section=PPOSection(normalize_rewards=False, missing_eos_penalty=0.5),
                                variant=PPOVariant(reward_weight=weight))
        state = SimpleNamespace(reward_moments=(0.0, 0.0, 0))
        score, rule = ppo.episode_scores(setup, state, PROMPTS[:3], SimpleNamespace(truncated=truncated), raw, None)
        torch.testing.assert_close(score, torch.tensor(expected))
        assert rule is None
    setup = SimpleNamespace(section=PPOSection(normalize_rewards=False, missing_eos_penalty=0.0), variant=PPOVariant())
    score, _ = ppo.episode_scores(setup, state, PROMPTS[:3], SimpleNamespace(truncated=truncated), raw, None)
    torch.testing.assert_close(score, raw)
    assert PPOSection().missing_eos_penalty == 1.0  # on by default
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="missing_eos_penalty"):
        PPOSection(missing_eos_penalty=-1.0)


def test_js_is_sampled_token_with_kl_coef_and_js_exact_is_full_vocabulary_with_js_coef():
    """regulariser js: Sun et al.'s sampled-token term at kl_coef; js_exact: the exact JS at js_coef."""
    from bench.ppo_losses import js_divergence_per_token, js_sampled_token
    from bench.train.rollout import PENALTIES, regulariser_coef

    section = PPOSection(kl_coef=0.05, js_coef=0.1)
    coefs = {r: regulariser_coef(PPOVariant(regulariser=r), section) for r in ("kl", "js", "js_exact", "none")}
    assert coefs == {"kl": 0.05, "js": 0.05, "js_exact": 0.1, "none": 0.0}
    assert regulariser_coef(PPOVariant(regulariser="js", coef=0.3), section) == 0.3
    g = torch.Generator().manual_seed(0)
    logits, ref_logits = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    y = torch.randint(0, 5, (2, 3), generator=g)
    lp = torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0]
    rlp = torch.log_softmax(ref_logits, -1).gather(-1, y[..., None])[..., 0]
    m = torch.ones(2, 3)
    v = PPOVariant()
    torch.testing.assert_close(PENALTIES["js"](v, lp, rlp, logits, ref_logits, m), js_sampled_token(lp, rlp))
    torch.testing.assert_close(PENALTIES["js_exact"](v, lp, rlp, logits, ref_logits, m),
                               js_divergence_per_token(logits, ref_logits, m))
    assert not torch.allclose(PENALTIES["js"](v, lp, rlp, logits, ref_logits, m),
                              PENALTIES["js_exact"](v, lp, rlp, logits, ref_logits, m))


def test_prompt_stream_covers_each_prompt_once_per_epoch():
    n, per_step = 10, 4
    first_epoch = [i for step in range(0, 3) for i in prompt_stream.prompt_indices(n, per_step, step, 0)][:n]
    assert sorted(first_epoch) == list(range(n))
    assert prompt_stream.prompt_indices(n, per_step, 5, 0) == prompt_stream.prompt_indices(n, per_step, 5, 0)


def test_training_prompts_come_from_the_preference_train_split(smoke_cfg):
    prompts, identity = prompt_stream.training_prompts(smoke_cfg)
    assert prompts and len(prompts) == len(set(prompts))
    assert identity["split"] == "train" and identity["name"] == smoke_cfg.data.preferences


def test_batch_sizes_must_divide(smoke_cfg):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of mini_batch_size"):
        PPOSection(rollout_prompts=6, mini_batch_size=4, batch_size=2)
    with pytest.raises(ConfigError, match="grad_accum is not used"):
        PPOSection(grad_accum=2)
    with pytest.raises(ConfigError, match="lambda_init"):
        PPOSection(lambda_init=20.0, lambda_max=10.0)


def test_all_gather_travels_through_the_backends_device(tmp_path):
    """A real single-process gloo group: the gathered values come back on the input's device; NCCL
    would need CUDA tensors (the bug an H200 run found: CPU score-model outputs under NCCL)."""
    import torch.distributed as dist

    assert ppo_backends.collective_device("gloo") == torch.device("cpu")
    assert ppo_backends.all_gather(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]  # no group: itself
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.tensor([3.0, -1.0], requires_grad=True)
        out = ppo_backends.all_gather(x * 2)
        assert out.tolist() == [6.0, -2.0] and out.device == x.device and not out.requires_grad
    finally:
        dist.destroy_process_group()
    if torch.cuda.is_available():
        assert ppo_backends.collective_device("nccl").type == "cuda"


def test_deepspeed_json_autos_are_filled(tmp_path):
    """configs/deepspeed/zero2_offload.json resolved for the PPO section (no deepspeed import)."""
    from bench.config import REPO_ROOT, ConfigError

    path = REPO_ROOT / "configs" / "deepspeed" / "zero2_offload.json"
    if not path.exists():
        pytest.skip("no DeepSpeed JSON in this checkout")
    section = PPOSection(deepspeed=str(path), fp16=True, rollout_prompts=8, mini_batch_size=4, batch_size=2,
                         learning_rate=1e-5)
    conf = ppo_backends.deepspeed_config(section, world=4, hidden_size=64)
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"], conf["train_batch_size"]) \
        == (2, 2, 16)
    assert conf["fp16"]["enabled"] is True and conf["optimizer"]["params"]["lr"] == 1e-5
    assert conf["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert not ppo_backends._auto_paths(conf)
    zero3 = REPO_ROOT / "configs" / "deepspeed" / "zero3_offload.json"  # shipped; our PPO loop refuses it
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        ppo_backends.deepspeed_config(dataclasses.replace(section, deepspeed=str(zero3)), world=1, hidden_size=64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deepspeed_fp16_smoke_run(smoke_cfg, smoke_base, runs):
    """The GPU path: same recipe through DeepSpeed ZeRO-2 + CPU optimiser offload, fp16 loss scaling."""
    import os

    import deepspeed  # noqa: F401  (a locked dependency: a missing one must fail, not skip)

    from bench.config import REPO_ROOT

    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512", "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    variant = PPOVariant(lagrangian=True)
    cfg = make_cfg(smoke_cfg, {"ppo-lag": variant}, fp16=True,
                   deepspeed=str(REPO_ROOT / "configs" / "deepspeed" / "zero2_offload.json"), keep_checkpoints=1)
    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS,
                          on_step=lambda s, st: (_ for _ in ()).throw(Interrupt()) if s == 1 else None)
    seen = []
    ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS, on_step=lambda s, st: seen.append(s))
    assert seen == [2]
    rec = read_record(runs / "ppo-lag" / "record.json")
    assert len(rec["extra"]["series"]) == 2
    before, after = weights(smoke_base), weights(runs / "ppo-lag" / "model")
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)


def test_ppo_batches_are_global_at_any_world_size():
    """rollout_prompts and mini_batch_size are per step at any world size: each of W ranks samples
    rollout_prompts / W of the step's prompts (together the one-rank batch) and updates on
    mini_batch_size / W; a size the ranks cannot share is an error naming the key."""
    from bench.config import ConfigError

    section = PPOSection(rollout_prompts=8, mini_batch_size=4, batch_size=4)
    assert ppo_backends.per_rank_section(section, 1) is section
    two = ppo_backends.per_rank_section(section, 2)
    assert (two.rollout_prompts, two.mini_batch_size, two.batch_size) == (4, 2, 2)
    from bench.train.ppo_update import planned_steps

    assert planned_steps(two, 40, 2) == planned_steps(section, 40, 1)  # same number of steps
    prompts = [f"p{i}" for i in range(10)]
    for step in range(4):  # each rank's contiguous share: together, in rank order, the step's batch
        one = prompt_stream.rollout_batch(prompts, 8, 1, step, 0)
        shares = [ppo.own_rows(len(one), r, 2) for r in (0, 1)]
        assert [p for sl in shares for p in one[sl]] == one and all(len(one[sl]) == two.rollout_prompts for sl in shares)
    with pytest.raises(ConfigError, match="ppo.rollout_prompts=8"):
        ppo_backends.per_rank_section(section, 3)
    with pytest.raises(ConfigError, match="ppo.mini_batch_size=4"):
        ppo_backends.per_rank_section(PPOSection(rollout_prompts=12, mini_batch_size=4, batch_size=4), 3)



def _two_ranks(fn):
    """Run ``fn(rank, sum_over_ranks)`` for ranks 0 and 1 in two threads whose ``sum_over_ranks`` is an
    all-reduce sum (a barrier and a shared slot per call): the collective, without a process group."""
    import threading

    barrier, slots, out = threading.Barrier(2, timeout=30), [None, None], [None, None]  # a broken rank fails the other

    def reducer(rank):
        def reduce(x):
            slots[rank] = x.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return reduce

    threads = [threading.Thread(target=lambda r=r: out.__setitem__(r, fn(r, reducer(r))), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_whitening_split_over_ranks_uses_the_whole_steps_statistics():
    """Each rank whitens its half with the step's mean and variance, so the halves put together equal
    one process whitening the whole step; per-rank statistics (the old behaviour) would not."""
    from bench.losses import masked_whiten
    from bench.train.ppo_advantages import whiten

    torch.manual_seed(0)
    adv = torch.randn(4, 5) * torch.tensor([[1.0], [1.0], [5.0], [5.0]]) + torch.tensor([[0.0], [0.0], [3.0], [3.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    whole = masked_whiten(adv, mask)
    halves = _two_ranks(lambda r, red: whiten(adv[2 * r:2 * r + 2], mask[2 * r:2 * r + 2], red))
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-6, rtol=1e-6)
    per_rank = torch.cat([masked_whiten(adv[:2], mask[:2]), masked_whiten(adv[2:], mask[2:])])
    assert not torch.allclose(per_rank, whole, atol=1e-3)
    # one process: the reducer-free path is masked_whiten itself
    assert torch.equal(whiten(adv, mask), whole)


def test_lagrangian_advantages_split_over_ranks_equal_one_process():
    torch.manual_seed(1)
    B, T = 4, 6
    score, cost = torch.randn(B), torch.randn(B)
    penalty, values = torch.rand(B, T) * 0.1, torch.randn(B, T, 2)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    kw = dict(coef=0.1, gamma=0.95, gae_lambda=0.9, reward_clip=5.0, lagrange_multiplier=0.7)
    whole = ppo_advantages(score, penalty, values, mask, cost=cost, **kw)

    def rank(r, red):
        s = slice(2 * r, 2 * r + 2)
        return ppo_advantages(score[s], penalty[s], values[s], mask[s], cost=cost[s], sum_over_ranks=red, **kw)

    halves = _two_ranks(rank)
    torch.testing.assert_close(torch.cat([h.advantages for h in halves]), whole.advantages, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([h.returns for h in halves]), whole.returns)
