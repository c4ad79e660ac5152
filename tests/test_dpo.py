"""DPO family on the smoke profile: every variant trains (parameters change), writes its record
and a plain checkpoint; LoRA merges; over-long pairs are a clear error."""

from __future__ import annotations

import pytest
import torch

from bench.config import load_config
from bench.records import read_record
from bench.runs import run_dir


def _params(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


@pytest.mark.parametrize("variant", ["dpo", "ipo", "dpo-js"])
def test_variant_trains_and_records(variant, smoke_base):
    from bench.train.dpo import train_variant

    cfg = load_config("smoke", ["profile.name=smoke-dpo"])
    train_variant(cfg, variant, cfg.dpo.variants[variant], force=True)
    rec = read_record(run_dir("smoke-dpo", variant) / "record.json")
    assert rec["stage"] == "dpo" and rec["variant"] == variant
    assert rec["extra"]["variant"]["loss_type"] == cfg.dpo.variants[variant].loss_type
    assert rec["extra"]["series"] and "train_loss" in rec["metrics"]
    assert rec["datasets"]["train"]["n"] > 0
    after, before = _params(rec["artifacts"]["model_dir"]), _params(smoke_base)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(".layers.1." in n for n in changed)
    assert not any(".layers.0." in n for n in changed)  # top_layers: 1


def test_lora_variant_is_merged_into_a_plain_checkpoint(smoke_base):
    from bench.train.dpo import train_variant

    cfg = load_config("smoke", ["profile.name=smoke-dpo-lora", "dpo.trainable=lora", "dpo.lora.r=4",
                                "dpo.learning_rate=0.01"])
    train_variant(cfg, "dpo-lora", cfg.dpo.variants["dpo-lora"], force=True)
    out = run_dir("smoke-dpo-lora", "dpo-lora") / "model"
    assert not (out / "adapter_config.json").exists()  # merged: plain transformers loads it
    after, before = _params(out), _params(smoke_base)
    assert set(after) == set(before)
    assert any(not torch.equal(before[n], after[n]) for n in before if "q_proj" in n)


def test_overlong_pairs_error_names_dataset(smoke_base):
    from bench.data.schema import DataError
    from bench.train.dpo import run_dpo

    cfg = load_config("smoke", ["profile.name=smoke-dpo-long", "dpo.max_length=8"])
    with pytest.raises(DataError, match="over dpo.max_length=8"):
        run_dpo(cfg, force=True)
    assert not (run_dir("smoke-dpo-long", "dpo") / "record.json").exists()
