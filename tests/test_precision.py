"""Compute precision (bench.precision): feature detection both ways, the fp32 heads, the stage-wide
autocast reaching a trainer's forward passes, and a smoke stage in bf16 and fp32 through the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from bench import precision as P

AVX512_BF16_CPU = "fpu vme de pse tsc msr avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
PLAIN_AVX512_CPU = "fpu vme de pse tsc msr avx2 avx512f avx512bw avx512_vnni"


def test_cpu_flags_parse_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {AVX512_BF16_CPU}\n\nprocessor\t: 1\nflags\t: sse\n")
    assert "avx512_bf16" in P.cpu_flags(f) and "sse" not in P.cpu_flags(f)  # the first CPU's line
    assert P.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("flags, want", [(AVX512_BF16_CPU, "bf16"), (PLAIN_AVX512_CPU, "fp32"),
                                         ("amx_tile amx_bf16 avx512f", "bf16"), ("", "fp32")])
def test_auto_on_cpu_follows_native_bf16(flags, want):
    assert P.resolve("auto", cuda=False, flags=flags.split()) == want


def test_explicit_precision_is_kept_and_unknown_refused():
    assert P.resolve("fp32", cuda=False, flags=AVX512_BF16_CPU.split()) == "fp32"
    assert P.resolve("bf16", cuda=False, flags=PLAIN_AVX512_CPU.split()) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        P.resolve("fp16")


@pytest.mark.parametrize("supported, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_gpu_follows_device_support(monkeypatch, supported, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert P.resolve("auto", cuda=True, flags=[]) == want  # a V100 stays fp32 (its fp16 is the trainers')


def test_profile_loader_stores_the_resolved_precision(monkeypatch):
    from bench.config import load_config

    monkeypatch.setattr(P, "native_cpu_bf16", lambda flags=None: ["avx512_bf16"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with_bf16 = load_config("smoke", ["model.precision=auto"])
    assert with_bf16.model.precision == "bf16"
    monkeypatch.setattr(P, "native_cpu_bf16", lambda flags=None: [])
    without = load_config("smoke", ["model.precision=auto"])
    assert without.model.precision == "fp32"
    assert with_bf16.section_hash("model") != without.section_hash("model")  # stages re-run, caches never mix
    assert load_config("smoke").model.precision == "fp32"


def _micro_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_fp32_heads_keep_weights_keys_and_fp32_numbers():
    model = _micro_llama()
    ids = torch.randint(0, 97, (2, 9))
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with P.stage_autocast("bf16"):
            low = model(input_ids=ids).logits
    assert low.dtype == torch.bfloat16  # a plain head under autocast
    assert P.for_precision(model, "bf16") is model and P.keep_heads_fp32(model) == 1  # idempotent
    assert type(model.lm_head) is P.FP32Linear and list(model.state_dict()) == keys
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        same = model(input_ids=ids).logits
        with P.stage_autocast("bf16"):
            mixed = model(input_ids=ids).logits
    assert torch.equal(same, ref)  # outside autocast: the fp32 model is unchanged
    assert mixed.dtype == torch.float32
    err_mixed, err_low = (mixed - ref).abs().max().item(), (low.float() - ref).abs().max().item()
    assert 0 < err_mixed < err_low  # bf16 body, fp32 head: closer to fp32 than an all-bf16 forward


def test_for_precision_fp32_leaves_the_model_alone():
    model = _micro_llama()
    P.for_precision(model, "fp32")
    assert type(model.lm_head) is nn.Linear


def test_stage_autocast_fp32_enters_nothing_and_needs_a_resolved_value():
    with P.stage_autocast("fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with P.stage_autocast("bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="resolved"):
        with P.stage_autocast("auto"):
            pass


@pytest.mark.parametrize("precision, want", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_trainer_steps_run_in_the_stage_precision(tmp_path, precision, want):
    """The HF Trainer (accelerate with mixed_precision 'no') adds no autocast of its own, so the stage's
    context reaches its forward passes; weights and their updates stay fp32."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = P.for_precision(_micro_llama().train(), precision)
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6]] * 4, "labels": [[1, 2, 3, 4, 5, 6]] * 4})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, use_cpu=True,
                             report_to=[], save_strategy="no", bf16=False, learning_rate=1e-2)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with P.stage_autocast(precision):
        Trainer(model=model, args=args, train_dataset=data).train()
    assert seen and set(seen) == {want}
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float32 and not torch.equal(w.detach(), before)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_smoke_sft_and_reward_through_the_cli(smoke_base, precision):
    """Both paths end to end on the smoke profile: the record says which one ran, the numbers are finite,
    and the saved policy is fp32 (autocast never changes the checkpoint format)."""
    import json
    import math

    from click.testing import CliRunner
    from safetensors import safe_open

    from bench.cli import main
    from bench.records import read_record
    from bench.runs import run_dir

    name = f"smoke-prec-{precision}"
    for stage in ("sft", "reward"):
        r = CliRunner().invoke(main, [stage, "--profile", "smoke", f"profile.name={name}", f"model.precision={precision}"])
        assert r.exit_code == 0, r.output
        rec = read_record(run_dir(name, stage) / "record.json")
        assert rec["provenance"]["precision"] == precision
        assert all(math.isfinite(m["value"]) for m in rec["metrics"].values() if isinstance(m.get("value"), float))
    assert not torch.is_autocast_enabled("cpu")  # the CLI's context ended with the command
    weights = run_dir(name, "sft") / "model" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
    assert json.loads((run_dir(name, "sft") / "model" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

