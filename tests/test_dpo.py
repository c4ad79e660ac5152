"""DPO family on the smoke profile: every variant trains (parameters change), writes its record
and a plain checkpoint; LoRA merges; over-long pairs are a clear error.

The variants must stay apart: dpo, ipo and dpo-js differ only in what reaches TRL's DPOConfig
(``loss_type``, ``f_divergence_type``), so a mix-up in a profile or in ``dpo_args`` would train the
wrong loss under the right name. Three checks catch it, each keyed by the variant *name* (the table
below), never by the profile's own settings:

- every profile's variants reach DPOConfig as the table says (``dpo_args``);
- the loss TRL computes from that DPOConfig equals the variant's closed form on hand-made
  log-probabilities (so the name, the config and the loss actually run agree);
- a smoke run's trainer receives those arguments, its record names them, and its first logged loss
  is the variant's closed form at the initial policy (policy == reference).
"""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch

from bench.config import load_config
from bench.records import read_record
from bench.runs import run_dir

# What each DPO-family variant name means in TRL's terms: (loss_type, f_divergence_type).
TRL_LOSS = {
    "dpo": (["sigmoid"], "reverse_kl"),
    "ipo": (["ipo"], "reverse_kl"),
    "dpo-js": (["sigmoid"], "js_divergence"),
    "dpo-sft": (["sigmoid", "sft"], "reverse_kl"),
    "dpo-offline": (["sigmoid"], "reverse_kl"),
    "dpo-onpolicy": (["sigmoid"], "reverse_kl"),
    "dpo-lora": (["sigmoid"], "reverse_kl"),
    "dpo-full": (["sigmoid"], "reverse_kl"),
}
PROFILES = ("default", "smoke", "llama2-7b-v100", "tinyllama-1.1b-v100")


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Hand-made batch: 2 pairs, 5 positions (position 0 is the prompt). Per-token log-probs are given on
# the shifted positions and are zero outside the completion, as TRL's fused head returns them.
COMPLETION_MASK = [[0, 1, 1, 0, 0], [0, 1, 1, 1, 1],  # chosen: 2 and 4 tokens
                   [0, 1, 1, 1, 0], [0, 1, 0, 0, 0]]  # rejected: 3 and 1 tokens
TOKEN_LOGPS = [[-1.0, -1.0, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.5],
               [-1.0, -1.0, -1.0, 0.0], [-4.0, 0.0, 0.0, 0.0]]
REF_CHOSEN, REF_REJECTED = [-2.5, -1.0], [-2.0, -3.0]


def closed_form_loss(variant: str, beta: float) -> float:
    """The variant's loss on the hand-made batch, written out from the papers (mean over pairs)."""
    chosen = [sum(r) for r in TOKEN_LOGPS[:2]]
    rejected = [sum(r) for r in TOKEN_LOGPS[2:]]
    n_chosen = [sum(r) for r in COMPLETION_MASK[:2]]
    n_rejected = [sum(r) for r in COMPLETION_MASK[2:]]
    c = [x - ref for x, ref in zip(chosen, REF_CHOSEN)]  # log pi/pi_ref, chosen
    r = [x - ref for x, ref in zip(rejected, REF_REJECTED)]
    if variant == "dpo":  # Rafailov et al. eq. 7
        per = [-_logsigmoid(beta * (ci - ri)) for ci, ri in zip(c, r)]
    elif variant == "ipo":  # Azar et al. eq. 17, per-token log-ratios (TRL's normalisation), tau = beta
        per = [(ci / nc - ri / nr - 1 / (2 * beta)) ** 2 for ci, ri, nc, nr in zip(c, r, n_chosen, n_rejected)]
    elif variant == "dpo-js":  # f-DPO with JS: f'(t) = log 2 + logsigmoid(log t); log 2 cancels
        per = [-_logsigmoid(beta * (_logsigmoid(ci) - _logsigmoid(ri))) for ci, ri in zip(c, r)]
    elif variant == "dpo-sft":  # DPO + NLL of the chosen tokens (weights 1, 1)
        tokens = [x for row in TOKEN_LOGPS[:2] for x in row if x != 0.0]
        return closed_form_loss("dpo", beta) - sum(tokens) / len(tokens)
    else:
        raise KeyError(variant)
    return sum(per) / len(per)


@pytest.fixture(scope="module")
def smoke_model(smoke_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smoke_base), AutoTokenizer.from_pretrained(smoke_base)


def _cpu_section(section):
    """The section as a CPU DPOConfig can take it (paper profiles name a DeepSpeed config)."""
    return dataclasses.replace(section, deepspeed=None, fp16=False)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_variant_reaches_trl_dpo_config(profile, tmp_path):
    from bench.train.dpo import dpo_args

    cfg = load_config(profile)
    assert {"dpo", "ipo", "dpo-js"} <= set(cfg.dpo.variants)
    for name, variant in cfg.dpo.variants.items():
        args = dpo_args(_cpu_section(cfg.dpo), variant, tmp_path / name, cfg.profile.seed)
        assert (list(args.loss_type), args.f_divergence_type) == TRL_LOSS[name], (profile, name)
        assert args.beta == (variant.beta if variant.beta is not None else cfg.dpo.beta)


def test_closed_forms_tell_the_variants_apart():
    values = {v: closed_form_loss(v, 0.1) for v in ("dpo", "ipo", "dpo-js", "dpo-sft")}
    assert len({round(x, 3) for x in values.values()}) == len(values), values


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_trl_computes_each_variants_closed_form_loss(profile, smoke_model, tmp_path):
    """TRL's own loss path (DPOTrainer._compute_loss, the pinned TRL) under the DPOConfig that
    ``dpo_args`` builds for each variant, on hand-made log-probabilities instead of a forward pass."""
    from datasets import Dataset
    from trl import DPOTrainer

    from bench.train.dpo import dpo_args

    model, tok = smoke_model
    cfg = load_config(profile)
    inputs = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5, dtype=torch.long),
              "completion_mask": torch.tensor(COMPLETION_MASK),
              "ref_chosen_logps": torch.tensor(REF_CHOSEN), "ref_rejected_logps": torch.tensor(REF_REJECTED)}
    outputs = types.SimpleNamespace(log_probs=torch.tensor(TOKEN_LOGPS), entropy=torch.zeros(4, 4),
                                    mean_logits=torch.zeros(4, 4), is_top1=torch.zeros(4, 4, dtype=torch.bool))
    losses = {}
    for name, variant in cfg.dpo.variants.items():
        args = dpo_args(cfg.dpo, variant, tmp_path / name, cfg.profile.seed)
        trainer = DPOTrainer(model=model, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]))
        losses[name] = float(trainer._compute_loss(lambda **kw: outputs, inputs, False))
        kind = name if name in ("dpo", "ipo", "dpo-js", "dpo-sft") else "dpo"
        assert losses[name] == pytest.approx(closed_form_loss(kind, args.beta), rel=1e-5), (profile, name)
    assert len({round(losses[v], 3) for v in ("dpo", "ipo", "dpo-js")}) == 3, losses


def _params(path):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


@pytest.mark.parametrize("variant", ["dpo", "ipo", "dpo-js"])
def test_variant_trains_and_records(variant, smoke_base, monkeypatch):
    from transformers import TrainerCallback

    import bench.train.dpo as dpo_mod

    seen = {}

    class SeeArgs(TrainerCallback):  # what the trainer of this run was given
        def on_train_begin(self, args, state, control, **kwargs):
            seen.update(loss_type=list(args.loss_type), f_divergence=args.f_divergence_type, beta=args.beta)

    monkeypatch.setattr(dpo_mod, "extra_callbacks", lambda: [SeeArgs()])
    cfg = load_config("smoke", ["profile.name=smoke-dpo"])
    dpo_mod.train_variant(cfg, variant, cfg.dpo.variants[variant], force=True)
    rec = read_record(run_dir("smoke-dpo", variant) / "record.json")
    assert rec["stage"] == "dpo" and rec["variant"] == variant
    assert (seen["loss_type"], seen["f_divergence"]) == TRL_LOSS[variant]
    assert (rec["extra"]["variant"]["loss_type"], rec["extra"]["variant"]["f_divergence"]) == TRL_LOSS[variant]
    assert rec["extra"]["series"] and "train_loss" in rec["metrics"]
    # First logged step: the policy is still the reference, every log-ratio is 0, so the loss is the
    # variant's value at 0: log 2 for dpo and dpo-js (log 2 + logsigmoid(0) = 0 on both sides), (1/2beta)^2 for ipo.
    first = rec["extra"]["series"][0]
    assert first["step"] == 1
    at_init = (1 / (2 * seen["beta"])) ** 2 if variant == "ipo" else math.log(2)
    assert first["loss"] == pytest.approx(at_init, rel=1e-3)
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


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_variant_overrides_the_sections_tuning(trainable, smoke_base, monkeypatch):
    """``dpo.variants.<name>.trainable`` / ``learning_rate`` (config.variant_section) beat the section's
    ``top_layers``: the bottom block trains (LoRA on every block, or every weight), the trainer gets the
    variant's learning rate, and the record names both (extra.tuning)."""
    from transformers import TrainerCallback

    import bench.train.dpo as dpo_mod

    seen = {}

    class SeeArgs(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["lr"] = args.learning_rate

    monkeypatch.setattr(dpo_mod, "extra_callbacks", lambda: [SeeArgs()])
    name = f"dpo-{trainable}"
    cfg = load_config("smoke", [f"profile.name=smoke-dpo-{trainable}", "dpo.lora.r=4",
                                f"dpo.variants.{name}.loss_type=[sigmoid]", f"dpo.variants.{name}.trainable={trainable}",
                                f"dpo.variants.{name}.learning_rate=0.003"])
    assert cfg.dpo.trainable == "top_layers"
    dpo_mod.train_variant(cfg, name, cfg.dpo.variants[name], force=True)
    rec = read_record(run_dir(f"smoke-dpo-{trainable}", name) / "record.json")
    tuning = rec["extra"]["tuning"]
    assert seen["lr"] == 0.003 and tuning["learning_rate"] == 0.003 and tuning["trainable"] == trainable
    assert (tuning["trainable_params"] < tuning["total_params"] / 10) == (trainable == "lora")
    assert tuning.get("lora", {}).get("r") == (4 if trainable == "lora" else None)
    after, before = _params(rec["artifacts"]["model_dir"]), _params(smoke_base)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(".layers.0.self_attn.q_proj" in n for n in changed)
    assert any(".layers.0.mlp." in n for n in changed) == (trainable == "full")


def test_overlong_pairs_error_names_dataset(smoke_base):
    from bench.data.schema import DataError
    from bench.train.dpo import run_dpo

    cfg = load_config("smoke", ["profile.name=smoke-dpo-long", "dpo.max_length=8"])
    with pytest.raises(DataError, match="over dpo.max_length=8"):
        run_dpo(cfg, force=True)
    assert not (run_dir("smoke-dpo-long", "dpo") / "record.json").exists()
