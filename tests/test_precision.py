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


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_fp32_heads_keep_weights_keys_and_fp32_numbers():
    model = _micro_llama()
    ids = torch.randint(0, 97, (2, 9))
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with _bf16():
            low = model(input_ids=ids).logits
    assert low.dtype == torch.bfloat16  # a plain head under autocast
    assert P.keep_heads_fp32(model) == 1 and P.keep_heads_fp32(model) == 1  # idempotent
    assert type(model.lm_head) is P.FP32Linear and list(model.state_dict()) == keys
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        same = model(input_ids=ids).logits
        with _bf16():
            mixed = model(input_ids=ids).logits
    assert torch.equal(same, ref)  # outside autocast: the fp32 model is unchanged
    assert mixed.dtype == torch.float32
    err_mixed, err_low = (mixed - ref).abs().max().item(), (low.float() - ref).abs().max().item()
    assert 0 < err_mixed < err_low  # bf16 body, fp32 head: closer to fp32 than an all-bf16 forward


def _q_dtypes(model) -> list:
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_for_precision_bf16_wraps_every_forward_and_survives_deepcopy():
    import copy

    model = P.for_precision(_micro_llama(), "bf16")
    seen = _q_dtypes(model)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        out = model(input_ids=ids).logits  # no context of the caller's
    assert seen == [torch.bfloat16] and out.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    assert P.for_precision(model, "bf16").forward.__func__ is model.forward.__func__  # idempotent
    twin = copy.deepcopy(model)  # TRL's reference model: the copy's forward must run the copy's weights
    with torch.no_grad():
        twin.model.embed_tokens.weight.mul_(2.0)
        assert not torch.equal(twin(input_ids=ids).logits, out) and torch.equal(model(input_ids=ids).logits, out)
    with pytest.raises(ValueError, match="resolved"):
        P.for_precision(_micro_llama(), "auto")


def test_for_precision_fp32_leaves_the_model_alone():
    model = P.for_precision(_micro_llama(), "fp32")
    assert type(model.lm_head) is nn.Linear and "forward" not in vars(model)
    with P.generation_autocast(model):
        assert not torch.is_autocast_enabled("cpu")


def test_generation_autocast_gives_the_per_forward_tokens():
    """The outer context only shares one cast of the weights over the call: the same tokens."""
    model = P.for_precision(_micro_llama(), "bf16")
    ids = torch.randint(1, 97, (3, 6))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        inner = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        with P.generation_autocast(model):
            assert torch.is_autocast_enabled("cpu")
            outer = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert torch.equal(inner, outer)


def _weight_casts(model, ids, ctx) -> int:
    """fp32 -> bf16 casts of the model's weights during the second of two forwards inside ``ctx``."""
    from cast_count import weight_casts

    with torch.no_grad(), ctx:
        model(input_ids=ids)
        return weight_casts(model, lambda: model(input_ids=ids))


def test_generation_autocast_casts_frozen_weights_once_and_restores_them():
    """Frozen weights (a LoRA base, a reference model) are cast once per call like trainable ones (autocast
    caches only weights that require grad), with the same tokens, and come out frozen again, even on error."""
    import contextlib

    model = P.for_precision(_micro_llama(), "bf16")
    ids = torch.randint(1, 97, (3, 6))
    frozen = [w for n, w in model.named_parameters() if "layers.0" in n]
    for w in frozen:
        w.requires_grad_(False)
    per_forward = _weight_casts(model, ids, contextlib.nullcontext())
    assert per_forward > 0 and _weight_casts(model, ids, P.generation_autocast(model)) == 0
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        inner = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    with P.generation_autocast(model):
        assert not torch.is_grad_enabled() and all(w.requires_grad for w in frozen)
        outer = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert torch.equal(inner, outer)
    assert not any(w.requires_grad for w in frozen) and torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with P.generation_autocast(model):
            raise RuntimeError("boom")
    assert not any(w.requires_grad for w in frozen)


def _stale(m, i, o) -> float:
    """How far a linear layer's output is from the same product on its *current* weights, computed
    afresh outside autocast in the output's dtype (0 when the forward used the current weights)."""
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        fresh = nn.functional.linear(i[0].to(o.dtype), m.weight.to(o.dtype),
                                     None if m.bias is None else m.bias.to(o.dtype))
    return (o.detach() - fresh).abs().max().item()


def test_a_context_around_training_feeds_stale_weights():
    """Why ``for_precision`` wraps each forward: inside one autocast context the cast of a weight is
    cached, and an optimizer step on the fp32 weight is not seen by the next forward."""
    lin = nn.Linear(8, 8)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    stale = []
    lin.register_forward_hook(lambda m, i, o: stale.append(_stale(m, i, o)))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            lin(x).float().pow(2).sum().backward()
            opt.step()
    assert stale[0] == 0 and stale[1] > 0
    wrapped = P.autocast_forward(nn.Linear(8, 8))
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    stale.clear()
    wrapped.register_forward_hook(lambda m, i, o: stale.append(_stale(m, i, o)))
    for _ in range(2):
        wrapped(x).float().pow(2).sum().backward()
        opt.step()
    assert stale == [0, 0]


@pytest.mark.parametrize("precision, want", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_trainer_steps_see_the_updated_weights(tmp_path, precision, want):
    """Each training step's forward runs in the model's precision and on the weights the previous
    step wrote (a first version, one context around the whole stage, trained SFT on step 1's cast)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = P.for_precision(_micro_llama().train(), precision)
    dtypes, stale = [], []

    def hook(m, i, o):
        dtypes.append(o.dtype)
        stale.append(_stale(m, i, o))

    for layer in model.model.layers:
        layer.self_attn.q_proj.register_forward_hook(hook)
        layer.mlp.down_proj.register_forward_hook(hook)
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6]] * 3, "labels": [[1, 2, 3, 4, 5, 6]] * 3})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=3, use_cpu=True,
                             report_to=[], save_strategy="no", bf16=False, learning_rate=1e-2)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    Trainer(model=model, args=args, train_dataset=data).train()
    assert len(dtypes) == 12 and set(dtypes) == {want}
    assert max(stale) == 0.0  # every step multiplied by the weights of that step
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float32 and not torch.equal(w.detach(), before)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_smoke_stages_through_the_cli(smoke_base, precision, monkeypatch):
    """Both paths end to end on the smoke profile, through the real recipes (TRL's SFT and DPO patch the
    forward with a fused LM head that calls the backbone; the reward model is a sequence classifier):
    every training forward of the top (trained) block runs in the profile's precision on the weights of
    its step, the record says which precision ran, and the saved policy is fp32."""
    import json
    import math

    from click.testing import CliRunner
    from safetensors import safe_open

    import bench.train.dpo as dpo_recipe
    import bench.train.reward_cost as rc_recipe
    import bench.train.sft as sft_recipe
    from bench.cli import main
    from bench.records import read_record
    from bench.runs import run_dir

    seen: dict[str, list] = {}

    def watch(stage, model):
        def hook(m, i, o):
            if torch.is_grad_enabled():  # training forwards (not the tracking pass's no-grad generation)
                seen.setdefault(stage, []).append((o.dtype, _stale(m, i, o)))
        blocks = model.base_model.layers if hasattr(model.base_model, "layers") else model.model.layers
        blocks[-1].self_attn.q_proj.register_forward_hook(hook)

    for mod, name in ((sft_recipe, "sft"), (dpo_recipe, "dpo")):
        orig = mod.load_trainable_policy
        monkeypatch.setattr(mod, "load_trainable_policy",
                            lambda *a, _o=orig, _n=name, **k: (lambda out: (watch(_n, out[0]), out)[1])(_o(*a, **k)))
    orig_build = rc_recipe.build_score_model
    monkeypatch.setattr(rc_recipe, "build_score_model",
                        lambda *a, **k: (lambda out: (watch("reward", out[0]), out)[1])(orig_build(*a, **k)))
    name = f"smoke-prec-{precision}"
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    for stage in ("sft", "reward", "dpo"):
        r = CliRunner().invoke(main, [stage, "--profile", "smoke", f"profile.name={name}", f"model.precision={precision}"])
        assert r.exit_code == 0, r.output
        assert not torch.is_autocast_enabled("cpu")  # nothing leaks out of a stage
        assert seen.get(stage), f"{stage}: no training forward seen"
        assert {d for d, _ in seen[stage]} == {want}, stage
        assert max(x for _, x in seen[stage]) == 0.0, f"{stage}: a forward used stale weights"
        for rec_path in run_dir(name, stage).parent.glob("*/record.json"):
            rec = read_record(rec_path)
            if rec["stage"] == stage:
                assert rec["provenance"]["precision"] == precision
                assert all(math.isfinite(m["value"]) for m in rec["metrics"].values()
                           if isinstance(m.get("value"), float))
    weights = run_dir(name, "sft") / "model" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
    assert json.loads((run_dir(name, "sft") / "model" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
