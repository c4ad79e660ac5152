"""PPO-Lagrangian whose constraint can bind (bench/train/ppo.py, ppo_advantages, losses, ppo_metrics,
bench/report/lagrangian.py): the cost stream on the critic's scale, the one combination rule, the
episode-cost window, the threshold measured on the starting policy (``cost_threshold: start``), and
a smoke run whose record carries ``extra.lagrangian`` and resumes without re-measuring d.
Run: ``python -m pytest tests/test_ppo_lagrangian.py -q``."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from bench.config import ConfigError, LoraSection, PPOSection, PPOVariant
from bench.losses import episode_cost_window, label_weighted_mean, lagrangian_advantages, standardize_with_moments
from bench.records import read_record
from bench.train import ppo
from bench.train.ppo_advantages import ppo_advantages
from bench.train.ppo_checkpoints import TrainState
from bench.train.rollout import row_key

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is the capital of France?",
           "Write a haiku about rain.", "How can I hurt someone?", "Explain photosynthesis briefly."]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest.one_thread)."""


def make_cfg(smoke_cfg, variants: dict[str, PPOVariant], **kw):
    settings = dict(max_steps=2, rollout_prompts=4, mini_batch_size=2, batch_size=2, max_new_tokens=8,
                    ppo_epochs=1, learning_rate=1e-3, critic_learning_rate=1e-3, save_steps=1, trainable="lora",
                    lora=LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), logging_steps=100)
    settings.update(kw)
    return dataclasses.replace(smoke_cfg, ppo=PPOSection(variants=variants, **settings))


def lag_setup(**section_kw):
    """The pieces of ppo.Setup the Lagrangian helpers read."""
    return SimpleNamespace(variant=PPOVariant(lagrangian=True), section=PPOSection(**section_kw))


# --------------------------------------------------------------------------- closed forms on tensors


def test_cost_stream_sees_the_cost_standardised_like_the_reward():
    """The cost critic's input: (c - mean) / std with the running moments of every raw cost so far
    (this batch included; unbiased std), as the RM score; raw when normalize_rewards is off."""
    setup, state = lag_setup(), TrainState()
    first, second = torch.tensor([-6.0, -5.0, 4.0, -7.0]), torch.tensor([5.0, -6.0, -4.0, 6.0])
    out1 = ppo.cost_score(setup, state, first)
    mean1, std1 = first.double().mean().item(), first.double().std().item()
    torch.testing.assert_close(out1, ((first - mean1) / std1).float())
    out2 = ppo.cost_score(setup, state, second)
    both = torch.cat([first, second]).double()
    assert state.cost_moments[2] == 8 and state.cost_moments[0] == pytest.approx(both.mean().item())
    torch.testing.assert_close(out2, ((second - both.mean().item()) / both.std().item()).float())
    # the reward stream goes through the same standardisation (one rule for both critics)
    torch.testing.assert_close(ppo.reward_score(second, torch.zeros(4, dtype=torch.bool), state.cost_moments,
                                                PPOSection()), out2)
    assert ppo.cost_score(lag_setup(normalize_rewards=False), TrainState(), first) is first
    assert state.reward_moments == (0.0, 0.0, 0)  # the cost has moments of its own
    # one value: std 1, only the mean comes off
    torch.testing.assert_close(standardize_with_moments(torch.tensor([3.0]), (1.0, 0.0, 1)), torch.tensor([2.0]))


def test_cost_stream_returns_are_the_standardised_cost_to_go():
    """Zero critics, gamma = lambda = 1: the cost critic's targets are the standardised cost on the
    last token (penalty at +coef), not the raw level of about -5 that a zero critic never fits."""
    raw = torch.tensor([-6.0, -4.0, 5.0, -5.0])
    cost = standardize_with_moments(raw, (raw.double().mean().item(), raw.double().var(unbiased=False).item(), 4))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.float)
    penalty = torch.zeros(4, 3)
    out = ppo_advantages(torch.zeros(4), penalty, torch.zeros(4, 3, 2), mask, coef=0.1, gamma=1.0, gae_lambda=1.0,
                         reward_clip=5.0, cost=cost, lagrange_multiplier=1.0)
    torch.testing.assert_close(out.returns[..., 1], cost[:, None] * mask)
    assert abs(out.returns[..., 1][mask.bool()].mean().item()) < 1.0  # centred, where the raw cost sat at ~ -2.5


@pytest.mark.parametrize("multiplier", [0.0, 0.25, 1.0, 9.0])
def test_one_combination_rule_for_the_policy_advantage(multiplier):
    """(A_r - lambda A_c) / (1 + lambda) of the whitened streams, whatever lambda; lambda 0 gives A_r."""
    torch.manual_seed(0)
    score, cost = torch.randn(4), torch.randn(4)
    penalty, values = torch.rand(4, 5) * 0.1, torch.randn(4, 5, 2)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    kw = dict(coef=0.2, gamma=1.0, gae_lambda=0.95, reward_clip=5.0)
    out = ppo_advantages(score, penalty, values, mask, cost=cost, lagrange_multiplier=multiplier, **kw)
    a_r = ppo_advantages(score, penalty, values, mask, **kw).advantages  # the whitened reward stream
    # the whitened cost stream: the same composition with the cost as the score, the penalty at +coef
    a_c = ppo_advantages(cost, penalty, values[..., 1:], mask, **{**kw, "coef": -0.2}).advantages
    torch.testing.assert_close(out.advantages, (a_r - multiplier * a_c) / (1 + multiplier))
    torch.testing.assert_close(lagrangian_advantages(a_r, a_c, multiplier), out.advantages)
    if multiplier == 0.0:
        torch.testing.assert_close(out.advantages, a_r)


def test_episode_cost_window_is_the_mean_of_the_newest_episodes():
    window, mean = episode_cost_window([], [1.0, 2.0, 3.0, 4.0], 6)
    assert window == [1.0, 2.0, 3.0, 4.0] and mean == 2.5
    window, mean = episode_cost_window(window, [5.0, 6.0, 7.0, 8.0], 6)
    assert window == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0] and mean == 5.5
    window, mean = episode_cost_window(window, [-1.0, 1.0], 0)  # 0: this batch only (the old behaviour)
    assert window == [-1.0, 1.0] and mean == 0.0
    with pytest.raises(ConfigError, match="cost_window"):
        PPOSection(rollout_prompts=16, mini_batch_size=8, cost_window=8)  # shorter than a batch


def test_lambda_steps_on_the_window_mean_raw_cost_against_the_threshold():
    """log lambda <- log lambda + lr lambda (J_c - d) with J_c the window's mean *raw* cost: a batch
    below d still raises lambda while the window's mean is above it."""
    setup = lag_setup(rollout_prompts=4, mini_batch_size=4, batch_size=2, cost_window=8, lambda_lr=0.1,
                      lambda_max=100.0)
    state = TrainState(log_lambda=0.0, cost_threshold=-1.0)
    lam, j = ppo.update_lagrange_multiplier(setup, state, torch.tensor([4.0, 2.0, 0.0, 2.0]))
    assert j == 2.0 and math.log(lam) == pytest.approx(0.1 * 1.0 * (2.0 + 1.0))
    before = state.log_lambda
    lam, j = ppo.update_lagrange_multiplier(setup, state, torch.tensor([-2.0, -2.0, -2.0, -2.0]))  # batch < d
    assert j == 0.0 and state.cost_window == [4.0, 2.0, 0.0, 2.0, -2.0, -2.0, -2.0, -2.0]
    assert state.log_lambda == pytest.approx(before + 0.1 * math.exp(before) * (0.0 + 1.0))
    assert state.log_lambda > before
    assert ppo.update_lagrange_multiplier(SimpleNamespace(variant=PPOVariant()), state, None) == (0.0, None)


def test_label_weighted_mean_weights_each_labels_mean_by_its_share():
    values, labels = [1.0, 3.0, 10.0, -4.0], ["harmful", "harmful", "benign", "other"]
    m, groups = label_weighted_mean(values, labels, {"harmful": 3, "benign": 1})  # "other": weight 0
    assert m == pytest.approx(0.75 * 2.0 + 0.25 * 10.0)
    assert groups["harmful"] == {"mean": 2.0, "n": 2, "weight": 0.75} and groups["other"]["weight"] == 0.0
    m, groups = label_weighted_mean(values, labels, None)  # no weights: the plain mean
    assert m == pytest.approx(10.0 / 4) and groups["harmful"]["weight"] == 0.5


def test_threshold_from_start_is_the_starting_policys_mean_cost_on_validation_prompts(smoke_cfg, smoke_base,
                                                                                       monkeypatch):
    """d = mean CM cost of one sampled response per prompt: unique validation-split prompts (none in
    the training stream), interleaved by label, capped; sampled with keys row_key(seed, -1, i); each
    label's mean weighted by its share of the training prompts (plain mean when they carry no label)."""
    from transformers import AutoTokenizer

    from bench import data
    from bench.data.pairs import interleave_by
    cfg = make_cfg(smoke_cfg, {"ppo-lag": PPOVariant(lagrangian=True)}, cost_threshold="start", threshold_prompts=6,
                   temperature=0.7)
    rows = data.load_role(cfg.data, "preferences", "validation").rows
    train = [rows[0]["prompt"]]  # a validation prompt also in the training stream is left out
    calls = {}

    def fake_sample(policy, tok, prompts, system_prompt, max_new_tokens, temperature, batch_size, eos_ids, keys,
                    rows=None):
        calls.update(prompts=prompts, keys=keys, temperature=temperature, max_new_tokens=max_new_tokens)
        return SimpleNamespace(texts=[f"answer {i}" for i in range(len(prompts))])

    def fake_score(model, tok, prompts, responses, system_prompt, batch_size):
        assert prompts == calls["prompts"] and responses == [f"answer {i}" for i in range(len(prompts))]
        return torch.arange(len(prompts), dtype=torch.float32) - 4.0  # -4, -3, ...

    monkeypatch.setattr(ppo, "sample_responses", fake_sample)
    monkeypatch.setattr(ppo, "score_responses", fake_score)
    monkeypatch.setattr(ppo, "prompt_labels", lambda cfg: {})  # training prompts without labels
    setup = SimpleNamespace(cfg=cfg, section=cfg.ppo, tok=AutoTokenizer.from_pretrained(smoke_base), prompts=train,
                            seed=cfg.profile.seed, eos_ids=[0], cost_model=(None, None), labels={},
                            backend=SimpleNamespace(module=SimpleNamespace(eval=lambda: None, policy=None)))
    d, info = ppo.cost_threshold(setup)
    costs = [i - 4.0 for i in range(6)]
    assert info["prompts"] == 6 and d == pytest.approx(sum(costs) / 6)
    labelled = {}
    for r in rows:
        if r["prompt"] != train[0]:
            labelled.setdefault(r["prompt"], r)
    expected = [r["prompt"] for r in interleave_by(list(labelled.values()), "prompt_label")][:6]
    assert calls["prompts"] == expected and train[0] not in expected and len(set(expected)) == 6
    assert len({labelled[p]["prompt_label"] for p in expected}) > 1  # the cap keeps the label mix
    assert calls["keys"] == [row_key(cfg.profile.seed, ppo.THRESHOLD_STEP, i) for i in range(6)]
    assert ppo.THRESHOLD_STEP < 0  # apart from every training step's keys
    assert calls["temperature"] == 0.7 and calls["max_new_tokens"] == cfg.ppo.max_new_tokens
    # labelled training prompts (3 harmful : 1 benign): d weights each label's mean cost by that share
    setup.prompts = ["t1", "t2", "t3", "t4"]
    monkeypatch.setattr(ppo, "prompt_labels", lambda cfg: {"t1": "harmful", "t2": "harmful", "t3": "harmful",
                                                          "t4": "benign"})
    d, info = ppo.cost_threshold(setup)
    # the training stream changed, so rows[0]'s prompt is back in the threshold set: read what was sampled
    label_of = {r["prompt"]: r["prompt_label"] for r in rows}
    second = calls["prompts"]
    mean_of = lambda lab: sum(c for p, c in zip(second, costs) if label_of[p] == lab) / \
        sum(label_of[p] == lab for p in second)  # noqa: E731
    assert d == pytest.approx(0.75 * mean_of("harmful") + 0.25 * mean_of("benign"))
    assert info["by_label"]["harmful"]["weight"] == 0.75 and info["by_label"]["harmful"]["mean"] == mean_of("harmful")
    setup.section = dataclasses.replace(cfg.ppo, cost_threshold=-2.5)
    assert ppo.cost_threshold(setup) == (-2.5, None)  # fixed: nothing sampled


# --------------------------------------------------------------------------- smoke runs


class Interrupt(Exception):
    pass


def test_smoke_run_records_the_start_threshold_and_resumes_without_remeasuring(smoke_cfg, smoke_base, score_runs,
                                                                               monkeypatch):
    """``cost_threshold: start``: d is the mean CM cost of the threshold prompts' responses, measured
    once (a resumed run reads it from the checkpoint); the cost stream gets the standardised cost;
    the series and ``extra.lagrangian`` carry episode cost, threshold and lambda."""
    variant = PPOVariant(regulariser="kl", kl_estimator="k3", lagrangian=True)
    cfg = make_cfg(smoke_cfg, {"ppo-lag": variant}, cost_threshold="start", threshold_prompts=4, cost_window=8,
                   keep_checkpoints=1)
    measured, fed = [], []  # (prompts, CM costs) of each threshold measurement; what the cost stream got
    real_measure, real_cost_score, real_adv = ppo.measure_start_cost, ppo.cost_score, ppo.ppo_advantages
    real_score = ppo.score_responses

    def spy_measure(setup):
        measured.append(None)
        return real_measure(setup)

    def spy_score(model, tok, prompts, responses, *a, **k):
        out = real_score(model, tok, prompts, responses, *a, **k)
        if measured and measured[-1] is None:  # the measurement's scoring call
            measured[-1] = (prompts, out)
        return out

    def spy_cost_score(setup, state, cost_raw):
        out = real_cost_score(setup, state, cost_raw)
        fed.append({"raw": cost_raw, "scaled": out, "moments": state.cost_moments})
        return out

    def spy_adv(*a, **k):
        fed[-1]["passed"] = k["cost"]
        return real_adv(*a, **k)

    monkeypatch.setattr(ppo, "measure_start_cost", spy_measure)
    monkeypatch.setattr(ppo, "score_responses", spy_score)
    monkeypatch.setattr(ppo, "cost_score", spy_cost_score)
    monkeypatch.setattr(ppo, "ppo_advantages", spy_adv)

    def crash_after_1(step, state):
        if step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS, on_step=crash_after_1)
    ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS)  # resumes at step 1
    assert len(measured) == 1, "d was measured again on resume"
    prompts, costs = measured[0]
    assert len(prompts) == 4 and not set(prompts) & set(PROMPTS)

    rec = read_record(score_runs / "ppo-lag" / "record.json")
    lag = rec["extra"]["lagrangian"]
    assert lag["threshold"] == pytest.approx(costs.double().mean().item(), rel=1e-6)
    assert lag["threshold_from"] == "start" and lag["threshold_prompts"] == 4 and lag["cost_window"] == 8
    assert sum(g["n"] for g in lag["threshold_by_label"].values()) == 4  # PROMPTS have no label: plain mean
    assert lag["lambda_init"] == 1.0
    series = rec["extra"]["series"]
    assert [r["step"] for r in series] == [1, 2] and lag["lambda_final"] == series[-1]["lambda"]
    assert all(r["cost_threshold"] == lag["threshold"] for r in series)
    # window 8 = both steps' 4 episodes: step 1 reads its batch, step 2 both (the batch means are `cost`)
    assert series[0]["episode_cost"] == pytest.approx(series[0]["cost"], rel=1e-5)
    assert series[1]["episode_cost"] == pytest.approx((series[0]["cost"] + series[1]["cost"]) / 2, rel=1e-5)
    assert lag["bound_steps"] == [r["step"] for r in series if r["episode_cost"] > r["cost_threshold"]]
    lambdas = [1.0] + [r["lambda"] for r in series]
    assert lag["lambda_rose_steps"] == [s for s in (1, 2) if lambdas[s] > lambdas[s - 1]]
    assert lag["lambda_rose_steps"] == lag["bound_steps"]  # lambda_max is not reached here
    # the cost stream got the standardised cost (moments of every raw cost so far), not the raw one
    assert len(fed) == 2  # step 1, then step 2 of the resumed run (its moments resumed from the checkpoint)
    for f in fed:
        assert f["passed"] is f["scaled"]
        torch.testing.assert_close(f["scaled"], standardize_with_moments(f["raw"], f["moments"]))
    assert fed[-1]["moments"][2] == 8


def test_lambda_rises_on_every_step_whose_episode_cost_is_above_a_hand_set_threshold(smoke_cfg, smoke_base,
                                                                                     score_runs):
    variant = PPOVariant(lagrangian=True)
    cfg = make_cfg(smoke_cfg, {"ppo-lag": variant}, cost_threshold=-1e3, lambda_lr=1e-4, lambda_max=1e9)
    ppo.train_variant(cfg, "ppo-lag", variant, PROMPTS)
    rec = read_record(score_runs / "ppo-lag" / "record.json")
    lag = rec["extra"]["lagrangian"]
    assert lag["threshold"] == -1e3 and lag["threshold_from"] == "fixed" and lag["threshold_prompts"] is None
    assert lag["threshold_by_label"] is None
    assert lag["bound_steps"] == [1, 2] and lag["lambda_rose_steps"] == [1, 2]
    assert lag["lambda_final"] > 1.0

    from bench.report.lagrangian import lagrangian_section

    text = "\n".join(lagrangian_section({"ppo-lag.json": rec}))
    assert "## PPO-Lagrangian constraint" in text and "fixed in the profile" in text
    assert "The constraint bound on 2 of 2 steps (episode cost above the threshold); lambda rose on steps 1, 2." in text


# --------------------------------------------------------------------------- leaderboard section


def _record(variant: str, lag: dict | None, series: list[dict]) -> dict:
    extra = {"series": series}
    if lag is not None:
        extra["lagrangian"] = lag
    return {"variant": variant, "stage": "ppo", "extra": extra}


def test_leaderboard_section_shows_threshold_steps_and_when_the_constraint_bound():
    from bench.report.lagrangian import lagrangian_section

    series = [{"step": 1, "episode_cost": -3.5, "cost_threshold": -3.2, "lambda": 0.9},
              {"step": 2, "episode_cost": -3.0, "cost_threshold": -3.2, "lambda": 0.95}]
    lag = {"threshold": -3.2, "threshold_from": "start", "threshold_prompts": 64, "cost_window": 16,
           "threshold_by_label": {"harmful": {"mean": -1.5, "n": 22, "weight": 0.56},
                                  "benign": {"mean": -5.4, "n": 42, "weight": 0.44}},
           "lambda_init": 1.0, "lambda_final": 0.95, "lambda_rose_steps": [2], "bound_steps": [2]}
    records = {"ppo-lag.json": _record("ppo-lag", lag, series), "ppo-kl.json": _record("ppo-kl", None, [])}
    lines = lagrangian_section(records)
    text = "\n".join(lines)
    assert lines[0] == "## PPO-Lagrangian constraint" and "### `ppo-lag`" in text and "`ppo-kl`" not in text
    assert "d = -3.200: the starting policy's mean cost-model cost on 64 validation prompts" in text
    assert "the last 16 episodes" in text
    assert "benign -5.400 (n 42, weight 0.44); harmful -1.500 (n 22, weight 0.56)" in text
    assert "| 2 | -3.000 | -3.200 | 0.9500 |" in text
    assert "The constraint bound on 1 of 2 steps (episode cost above the threshold); lambda rose on step 2." in text
    assert lagrangian_section({"ppo-kl.json": _record("ppo-kl", None, [])}) == []  # no record: no section
    assert lagrangian_section(records) == lines  # byte-stable
