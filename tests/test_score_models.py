"""Reward and cost models on the smoke profile: training changes parameters, the record carries
held-out metrics, the saved model loads with AutoModelForSequenceClassification, and an
interrupted run resumes from its last checkpoint."""

from __future__ import annotations

import pytest
import torch

from bench.config import load_config
from bench.records import read_record
from bench.runs import run_dir

SMOKE_TRAIN = ["reward.max_steps=4", "reward.batch_size=4", "reward.save_steps=2", "reward.logging_steps=1",
               "cost.max_steps=4", "cost.batch_size=4", "cost.save_steps=2", "cost.logging_steps=1"]


def _train(kind, overrides, smoke_base):
    from bench.train.prepare_base import run_base
    from bench.train.reward_cost import run_score_stage

    cfg = load_config("smoke", overrides)
    run_base(cfg)
    run_score_stage(cfg, kind, force=True)
    return cfg, read_record(run_dir(cfg.profile.name, kind) / "record.json")


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_score_stage_trains_and_records(kind, smoke_base):
    from transformers import AutoModelForSequenceClassification

    from bench.score_model import build_score_model

    cfg, rec = _train(kind, SMOKE_TRAIN + [f"profile.name=smoke-{kind}"], smoke_base)
    m = rec["metrics"]
    keys = {"reward": ["rm_accuracy", "score_chosen", "score_rejected"],
            "cost": ["cm_pair_accuracy", "cm_sign_accuracy", "score_safer", "score_unsafer"]}[kind]
    for k in keys + ["score_safe", "score_unsafe"]:
        assert k in m and m[k]["n"] > 0, k
    for k in keys:
        if k.endswith("accuracy"):
            assert 0 <= m[k]["ci_low"] <= m[k]["value"] <= m[k]["ci_high"] <= 1
    assert rec["datasets"]["train"]["n"] > 0
    trained = AutoModelForSequenceClassification.from_pretrained(rec["artifacts"]["model_dir"])
    assert trained.config.num_labels == 1
    fresh, _ = build_score_model(smoke_base, cfg.require(kind), cfg.model, cfg.profile.seed)
    t_params, f_params = dict(trained.named_parameters()), dict(fresh.named_parameters())
    changed = [n for n in f_params if not torch.equal(t_params[n], f_params[n])]
    assert any(n.startswith("score") for n in changed), "the head did not train"
    # smoke trains the top layer only: the bottom layer must be untouched
    assert not any(".layers.0." in n for n in changed)
    assert any(".layers.1." in n for n in changed)


def test_interrupted_run_resumes_from_checkpoint(smoke_base, monkeypatch):
    from transformers import TrainerCallback

    import bench.train.reward_cost as score

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated kill")

    overrides = SMOKE_TRAIN + ["profile.name=smoke-resume"]
    monkeypatch.setattr(score, "extra_callbacks", lambda: [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        _train("reward", overrides, smoke_base)
    d = run_dir("smoke-resume", "reward")
    assert not (d / "record.json").exists()
    assert (d / "checkpoints" / "checkpoint-2").exists()
    ran = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ran.append(state.global_step)

    monkeypatch.setattr(score, "extra_callbacks", lambda: [Count()])
    _, rec = _train("reward", overrides, smoke_base)
    assert rec["extra"]["resumed_from"].endswith("checkpoint-2")
    assert ran == [3, 4]  # steps 1-2 were not redone
    assert not (d / "checkpoints").exists()


def test_non_finite_gradient_stops_before_the_bad_step(smoke_base, monkeypatch):
    """Numerics: a NaN loss at step 3 stops the stage with a clear error; the checkpoint saved at
    step 2 stays, no record is written, and a re-run (cause removed) resumes from it."""
    from transformers import TrainerCallback

    import bench.train.reward_cost as score
    from bench.train.hf_trainer import NumericsError

    class PoisonStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 2:  # the third step: make its gradients NaN
                with torch.no_grad():
                    model.score.weight.fill_(float("nan"))

    overrides = SMOKE_TRAIN + ["profile.name=smoke-nan"]
    monkeypatch.setattr(score, "extra_callbacks", lambda: [PoisonStep3()])
    with pytest.raises(NumericsError, match="non-finite gradient .* at step 3"):
        _train("reward", overrides, smoke_base)
    d = run_dir("smoke-nan", "reward")
    assert not (d / "record.json").exists()
    ckpt = d / "checkpoints" / "checkpoint-2"
    from safetensors.torch import load_file

    weights = load_file(ckpt / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())  # the last good checkpoint stayed good
    monkeypatch.setattr(score, "extra_callbacks", lambda: [])
    _, rec = _train("reward", overrides, smoke_base)
    assert rec["extra"]["resumed_from"].endswith("checkpoint-2")
