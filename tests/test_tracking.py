"""Tuning dynamics (bench/train/tracking.py): which steps are kept, kept checkpoints of a smoke DPO
and PPO run load with plain transformers (step 0 = the initial policy), the record carries the
series, a resumed run keeps its series and the steering audit sees the kept checkpoints. Smoke
profile: micro random Llama, 2 steps. (The series' plot and table are reporting:
tests/test_leaderboard.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import LoraSection, PPOSection, PPOVariant, load_config
from bench.records import read_record
from bench.runs import run_dir
from bench.train.tracking import checkpoint_steps

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is the capital of France?",
           "Write a haiku about rain.", "How can I hurt someone?", "Explain photosynthesis briefly."]
SERIES_KEYS = ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "pref_acc_raw", "logp_margin_sum",
               "logp_margin_per_token")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest.one_thread)."""


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _check_series(rec: dict, steps: list[int], total: int) -> list[dict]:
    from transformers import AutoModelForCausalLM

    kept = rec["artifacts"]["checkpoints"]
    assert [c["step"] for c in kept] == steps
    assert [c["fraction"] for c in kept] == [s / total for s in steps]
    series = rec["extra"]["tracking"]["series"]
    assert [e["step"] for e in series] == steps  # one point per kept checkpoint
    for e in series:
        for key in SERIES_KEYS:
            assert set(e["metrics"][key]) == {"value", "ci_low", "ci_high", "n"}, key
        assert e["metrics"]["refusal_harmful"]["n"] == 4  # smoke: eval.n_harmful caps TRACK_N_PROMPTS
        assert e["metrics"]["over_refusal_borderline"]["n"] == 4  # borderline-safe label only (issue 25)
        if e["step"] > 0:  # against the initial policy: undefined at step 0 itself
            assert "pref_acc_implicit" in e["metrics"]
    assert kept[-1]["model_dir"] == rec["artifacts"]["model_dir"]  # the final step is the final model
    for c in kept:
        model = AutoModelForCausalLM.from_pretrained(c["model_dir"])  # plain transformers, no peft
        assert not any("lora" in n for n, _ in model.named_parameters())
    assert "tracking/harmful" in rec["datasets"] and rec["extra"]["tracking"]["detector"]["version"]
    return kept


def test_checkpoint_steps():
    assert checkpoint_steps(100, 0) == []
    assert checkpoint_steps(100, 1) == [100]
    assert checkpoint_steps(100, 2) == [0, 100]
    assert checkpoint_steps(100, 3) == [0, 50, 100]
    assert checkpoint_steps(100, 4) == [0, 33, 66, 100]
    assert checkpoint_steps(100, 5) == [0, 25, 50, 75, 100]
    assert checkpoint_steps(2, 3) == [0, 1, 2]
    assert checkpoint_steps(2, 5) == [0, 1, 2]  # deduplicated
    assert checkpoint_steps(0, 3) == [0]


def test_dpo_keeps_checkpoints_and_audit_lists_them(smoke_base):
    from bench.steer.audit import discover_checkpoints
    from bench.train.dpo import train_variant

    cfg = load_config("smoke", ["profile.name=smoke-track", "dpo.keep_checkpoints=3", "dpo.max_steps=2"])
    train_variant(cfg, "dpo", cfg.dpo.variants["dpo"], force=True)
    d = run_dir("smoke-track", "dpo")
    rec = read_record(d / "record.json")
    kept = _check_series(rec, [0, 1, 2], 2)
    assert kept[0]["model_dir"] == str(smoke_base)  # step 0 *is* the initial policy's folder: no copy
    assert not (d / "kept" / "step-0").exists()
    assert any(not torch.equal(_weights(d / "kept" / "step-1")[k], v) for k, v in _weights(smoke_base).items())
    assert not (d / "checkpoints").exists() and (d / "kept" / "step-1").exists()  # resume dir gone, kept stay
    assert (d / "kept" / "generations-step-1.jsonl").exists()

    names = [c["name"] for c in discover_checkpoints("smoke-track") if c["variant"] == "dpo"]
    assert names == ["dpo@0", "dpo@1", "dpo"]  # the final step is the variant itself, scored once


def test_dpo_variants_share_reference_and_initial_pass(smoke_base, tmp_path, monkeypatch):
    """Two variants on the same pairs from the same policy: the reference log-probs and the step-0
    validation pass are computed once; the cached numbers train exactly as fresh ones."""
    import json

    import bench.train.tracking as tracking
    from bench.runs import cache_dir
    from bench.train import dpo

    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    cfg = load_config("smoke", ["dpo.keep_checkpoints=2", "dpo.max_steps=2"])
    passes = []
    real_validate = tracking._validate
    monkeypatch.setattr(tracking, "_validate", lambda *a, **k: passes.append(1) or real_validate(*a, **k))

    dpo.train_variant(cfg, "dpo", cfg.dpo.variants["dpo"], force=True)
    first = read_record(run_dir("smoke", "dpo") / "record.json")
    ref_files = sorted(cache_dir("smoke", dpo.REF_CACHE).glob("*.pt"))
    init_files = sorted(cache_dir("smoke", tracking.INIT_CACHE).glob("*.json"))
    assert len(ref_files) == 1 and len(init_files) == 1 and len(passes) == 2  # step 0 + final
    assert "computed, cached" in (run_dir("smoke", "dpo") / "log.txt").read_text()

    dpo.train_variant(cfg, "dpo", cfg.dpo.variants["dpo"], force=True)  # same pairs, same policy: all cached
    again = read_record(run_dir("smoke", "dpo") / "record.json")
    assert len(passes) == 3  # only the final pass ran
    assert "reference log-probs for train: cached" in (run_dir("smoke", "dpo") / "log.txt").read_text()
    assert sorted(cache_dir("smoke", dpo.REF_CACHE).glob("*.pt")) == ref_files
    assert again["extra"]["series"] == first["extra"]["series"]  # cached reference = fresh reference, bit for bit
    assert again["extra"]["tracking"]["series"][0]["metrics"] == first["extra"]["tracking"]["series"][0]["metrics"]
    gens = [json.loads(line) for line in (run_dir("smoke", "dpo") / "kept" / "generations-step-0.jsonl").open()]
    sizes = again["extra"]["tracking"]["validation"]
    assert len(gens) == sizes["n_harmful"] + sizes["n_benign"] + sizes["n_borderline"]
    assert {g["set"] for g in gens} == {"harmful", "benign", "borderline"}

    dpo.train_variant(cfg, "ipo", cfg.dpo.variants["ipo"], force=True)  # another loss, same pairs and policy
    assert sorted(cache_dir("smoke", dpo.REF_CACHE).glob("*.pt")) == ref_files
    assert len(passes) == 4


def test_initial_pass_key_follows_the_policy_files(smoke_cfg, smoke_base, tmp_path):
    """A retrained starting policy (its files rewritten) never reuses the cached initial pass."""
    import os
    import shutil

    from bench.train.tracking import Tracker

    init = tmp_path / "init"
    shutil.copytree(smoke_base, init)
    tracker = Tracker(smoke_cfg, 2, tmp_path / "run", tmp_path / "run" / "model", "h", init_dir=init)
    key = tracker._initial_key()
    assert tracker._initial_key() == key
    st = (init / "model.safetensors").stat()
    os.utime(init / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tracker._initial_key() != key


@pytest.fixture
def ppo_runs(score_runs):
    """A fresh runs/ dir with random reward and cost models behind their records (conftest.score_runs)."""
    return score_runs


class Interrupt(Exception):
    pass


def test_ppo_keeps_checkpoints_and_resumes_series(smoke_cfg, smoke_base, ppo_runs):
    from bench.train import ppo

    variant = PPOVariant()
    cfg = dataclasses.replace(smoke_cfg, ppo=PPOSection(
        variants={"ppo-kl": variant}, max_steps=2, rollout_prompts=4, mini_batch_size=2, batch_size=2,
        max_new_tokens=8, ppo_epochs=1, learning_rate=1e-2, save_steps=1, logging_steps=100, trainable="lora",
        lora=LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), keep_checkpoints=3))

    def crash_after_1(step, state):
        if step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS, on_step=crash_after_1)
    ppo.train_variant(cfg, "ppo-kl", variant, PROMPTS)  # resumes at step 1, keeps steps 0 and 1 of the series
    d = ppo_runs / "ppo-kl"
    rec = read_record(d / "record.json")
    kept = _check_series(rec, [0, 1, 2], 2)
    assert kept[0]["model_dir"] == str(smoke_base)  # step 0: zero LoRA adapters = the initial policy
    assert any(not torch.equal(_weights(d / "kept" / "step-1")[k], v) for k, v in _weights(smoke_base).items())
    assert kept[1]["model_dir"] == str(d / "kept" / "step-1")
