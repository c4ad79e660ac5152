"""The V100 memory plan: parameter counts of the named shapes, closed-form values on a toy shape
worked out by hand, the monotonic properties any sane plan has, the plan's PPO components against
the models the PPO code actually builds (smoke shape), and the generated tables in docs/memory.md
matching the code."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shlex
from pathlib import Path

import pytest

from bench.memory_plan import (
    ALLGATHER_BUCKET,
    BYTES_16,
    GB,
    OVERLAP_COMM,
    SHAPES,
    STAGES,
    ModelShape,
    PlanSettings,
    activation_bytes,
    get_shape,
    main,
    memory_plan,
    plan_table,
    stage_plan,
)

REPO = Path(__file__).resolve().parents[1]

# layers=2, h=8, I=16, heads=2, kv_heads=1 (kv dim 4), vocab=10, untied LM head.
TOY = ModelShape("toy", "none/toy", layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10,
                 tied_embeddings=False)
# n=4, 3 tokens per sequence, 1 example per micro-batch, ZeRO-2 + offload, no fixed overhead.
TOY_SETTINGS = PlanSettings(n_gpus=4, seq_len=3, micro_batch=1, lora_rank=2, overhead_gb=0.0)


def test_named_shapes_have_their_published_parameter_counts():
    assert SHAPES["llama2-7b"].params == 6_738_415_616
    assert SHAPES["llama-1b"].params == 1_235_814_400  # Llama-3.2-1B
    assert SHAPES["tinyllama-1.1b"].params == 1_100_048_384
    assert SHAPES["qwen2.5-0.5b"].params == 494_032_768
    assert SHAPES["smollm2-135m"].params == 134_515_008


def test_get_shape_names_the_known_shapes():
    assert get_shape("llama2-7b") is SHAPES["llama2-7b"]
    assert get_shape(TOY) is TOY
    with pytest.raises(KeyError, match="known: llama2-7b"):
        get_shape("llama-3-405b")


def test_toy_shape_by_hand():
    # layer: q,k,v 8*(8+2*4)=128, o 64, MLP 3*8*16=384, norms 16 -> 592
    assert TOY.layer_params == 592
    # embed 80 + 2 layers 1184 + final norm 8 + LM head 80
    assert TOY.params == 1352
    assert TOY.score_params == 1352 - 80 + 8  # scalar head instead of the LM head
    # per layer r*(d_in+d_out): q 16, k 12, v 12, o 16, gate 24, up 24, down 24 = 128; x 2 layers x r=2
    assert TOY.lora_params(2) == 512
    assert TOY.lora_params(2, ("q_proj", "v_proj")) == 2 * 2 * (16 + 12)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        TOY.lora_params(2, ("qkv",))
    # a = 20 h + 4 kv + 8 I
    assert TOY.act_bytes_per_token_layer() == 20 * 8 + 4 * 4 + 8 * 16 == 304


def test_toy_reward_plan_by_hand():
    p = stage_plan("reward", TOY, TOY_SETTINGS)
    assert p.parts["weights"] == 2 * 1280
    assert p.parts["grads"] == 2 * 1280 / 4  # ZeRO-2 partitions fp16 grads
    assert p.parts["optimizer"] == 0  # offloaded
    assert p.parts["buckets"] == 2 * (1280 + 64) * 4.5  # min(allgather, T) + min(h^2, T), overlap_comm
    assert p.parts["activations"] == 6 * 2 * 304  # 2 sequences x 3 tokens, 2 layers
    assert p.total_bytes == 18944
    assert p.cpu_bytes == (12 + 4) * 1280 / 4
    ckpt = stage_plan("reward", TOY, TOY_SETTINGS, act_ckpt=True)
    assert ckpt.parts["activations"] == 6 * (2 * 2 * 8 + 304)  # layer inputs + one recomputed layer
    assert stage_plan("cost", TOY, TOY_SETTINGS).parts == p.parts


def test_toy_dpo_and_ppo_plans_by_hand():
    dpo = stage_plan("dpo", TOY, TOY_SETTINGS)
    assert dpo.parts["frozen weights"] == 2 * 1352  # full fine-tuning keeps a reference copy
    # policy step: 6 tokens x 2 layers x 304 + 10 bytes x 6 tokens x vocab 10 (> reference forward)
    assert dpo.parts["activations"] == 3648 + 600
    assert dpo.total_bytes == 2704 + 676 + 12744 + 2704 + 4248

    sft = stage_plan("sft", TOY, TOY_SETTINGS)
    assert "frozen weights" not in sft.parts  # no reference
    assert sft.parts["activations"] == 3 * 2 * 304 + 10 * 3 * 10  # one sequence, loss over the logits
    assert sft.total_bytes == 2704 + 676 + 2 * (1352 + 64) * 4.5 + 2124 == 18248
    assert sft.cpu_bytes == 16 * 1352 / 4

    ppo = stage_plan("ppo", TOY, TOY_SETTINGS, tuning="lora")
    # policy: base 1352 + adapters 512 + value head 2 x (8 + 1) = 1882 params, 530 trainable; no critic model
    assert ppo.parts["weights"] == 2 * 1882
    assert ppo.parts["grads"] == 2 * 530 / 4
    assert ppo.parts["buckets"] == 2 * (530 + 64) * 4.5
    assert "frozen weights" not in ppo.parts  # LoRA: the reference is the policy with adapters off
    # phases: rollout max(KV 96, 3 x (6 x 10 + 304)); policy step 3 x 2 x 304 + 10 x 3 x 10; scoring 3 x 304
    assert ppo.phases == {"rollout": 1092, "policy step": 2124, "scoring": 912}
    # offloaded: one score model (2 x 1280 bytes) visits the GPU while scoring, which makes it the peak
    assert ppo.peak == "scoring" and ppo.parts["score models"] == 2 * 1280 and ppo.parts["activations"] == 912
    assert ppo.total_bytes == 3764 + 265 + 5346 + 2560 + 912 == 12847
    assert ppo.cpu_bytes == 16 * 530 / 4 + 2 * 2 * 1280  # optimizer + reward and cost models in host RAM

    resident = stage_plan("ppo", TOY, TOY_SETTINGS, tuning="lora", score_models="resident")
    assert resident.parts["score models"] == 2 * 2 * 1280 and resident.peak == "policy step"
    assert resident.total_bytes == 3764 + 265 + 5346 + 5120 + 2124 and resident.cpu_bytes == 16 * 530 / 4
    no_cm = stage_plan("ppo", TOY, TOY_SETTINGS, tuning="lora", cost_model=False)
    assert no_cm.total_bytes == ppo.total_bytes and no_cm.cpu_bytes == ppo.cpu_bytes - 2 * 1280
    full = stage_plan("ppo", TOY, TOY_SETTINGS)
    assert full.parts["frozen weights"] == 2 * 1352  # the reference copy


def test_llama2_7b_full_fine_tuning_does_not_fit_16gb():
    for stage in ("sft", "reward", "dpo", "ppo"):
        for ckpt in (False, True):
            p = stage_plan(stage, "llama2-7b", n_gpus=8, act_ckpt=ckpt)
            assert p.gb("weights") >= 13.2  # fp16 weights replicated under ZeRO-2
            assert not p.fits(16), (stage, ckpt, p.total_gb)
    assert stage_plan("dpo", "llama2-7b").gb("weights") == pytest.approx(13.48, abs=0.01)
    assert stage_plan("reward", "llama2-7b", act_ckpt=True, tuning="lora").fits(16)
    assert stage_plan("reward", "llama2-7b").fits(32)
    assert stage_plan("ppo", "llama2-7b", tuning="lora", act_ckpt=True, zero_stage=3).fits(16)


def test_llama2_7b_ppo_lagrangian_fits_32gb_with_offloaded_score_models():
    """Issue 24: LoRA PPO-Lagrangian at 7B on one 32 GB V100 under ZeRO-2, as the profile runs it."""
    lora_qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")  # configs/llama2-7b-v100.yaml ppo.lora
    for ckpt, mb, targets in itertools.product((False, True), (1, 2), (lora_qkvo, None)):
        kw = dict(tuning="lora", act_ckpt=ckpt, micro_batch=mb, **({"lora_targets": targets} if targets else {}))
        p = stage_plan("ppo", "llama2-7b", **kw)
        assert p.fits(32) and p.total_gb < 29.5 and p.peak == "scoring", (kw, p.total_gb)
        assert p.gb("score models") == pytest.approx(13.2, abs=0.05)  # one visiting score model
        assert not stage_plan("ppo", "llama2-7b", score_models="resident", **kw).fits(32)
    assert not stage_plan("ppo", "llama2-7b", tuning="full", act_ckpt=True).fits(32)  # + a reference copy


GRID = list(itertools.product(["llama2-7b", "tinyllama-1.1b", "qwen2.5-0.5b"], STAGES, ("full", "lora"),
                              (False, True), (0, 1, 2, 3), (True, False)))


@pytest.mark.parametrize("shape,stage,tuning,ckpt,zero,offload", GRID[::7])
def test_more_gpus_never_increase_memory_per_gpu(shape, stage, tuning, ckpt, zero, offload):
    totals = [stage_plan(stage, shape, n_gpus=n, tuning=tuning, act_ckpt=ckpt, zero_stage=zero,
                         offload_optimizer=offload).total_bytes for n in (1, 2, 4, 8, 16, 32, 64)]
    assert totals == sorted(totals, reverse=True)


@pytest.mark.parametrize("shape", ["llama2-7b", "llama-1b", "tinyllama-1.1b", "qwen2.5-0.5b", "smollm2-135m"])
def test_lora_checkpointing_offload_and_zero_only_lower_memory(shape):
    for stage, ckpt, n in itertools.product(STAGES, (False, True), (2, 8, 16)):
        kw = dict(n_gpus=n, act_ckpt=ckpt)
        full, lora = stage_plan(stage, shape, tuning="full", **kw), stage_plan(stage, shape, tuning="lora", **kw)
        assert lora.total_bytes < full.total_bytes and lora.cpu_bytes < full.cpu_bytes
        for tuning in ("full", "lora"):
            off = stage_plan(stage, shape, tuning=tuning, n_gpus=n, act_ckpt=False)
            on = stage_plan(stage, shape, tuning=tuning, n_gpus=n, act_ckpt=True)
            if stage == "ppo":  # the peak may be the scoring pass, which checkpointing does not touch
                assert on.phases["policy step"] < off.phases["policy step"] and on.total_bytes <= off.total_bytes
            else:
                assert on.parts["activations"] < off.parts["activations"] and on.total_bytes < off.total_bytes
            gpu_opt = stage_plan(stage, shape, tuning=tuning, offload_optimizer=False, **kw)
            cpu_opt = stage_plan(stage, shape, tuning=tuning, offload_optimizer=True, **kw)
            assert cpu_opt.total_bytes < gpu_opt.total_bytes and gpu_opt.cpu_bytes < cpu_opt.cpu_bytes
            assert gpu_opt.cpu_bytes == (2 * 2 * get_shape(shape).score_params if stage == "ppo" else 0)
            resident = stage_plan(stage, shape, tuning=tuning, score_models="resident", **kw)
            assert cpu_opt.total_bytes <= resident.total_bytes  # offloading score models never costs GPU memory
            totals = [stage_plan(stage, shape, tuning=tuning, zero_stage=z, offload_optimizer=False, **kw).total_bytes
                      for z in (0, 1, 2, 3)]
            # ZeRO-3 adds a gathered working set (two layers or the embedding), which partitioning
            # over 2 GPUs may not repay for an embedding-heavy small model; from 8 GPUs it always does.
            assert totals[:3] == sorted(totals[:3], reverse=True)
            if n >= 8:
                assert totals[3] < totals[2]


def test_longer_sequences_and_bigger_micro_batches_need_more_activations():
    shape = SHAPES["tinyllama-1.1b"]
    for stage in STAGES:
        acts = [stage_plan(stage, shape, seq_len=s).parts["activations"] for s in (128, 256, 512, 1024)]
        assert acts == sorted(acts) and len(set(acts)) == 4
        one, four = stage_plan(stage, shape, micro_batch=1), stage_plan(stage, shape, micro_batch=4)
        if stage == "ppo":  # every phase scales with the tokens; which phase peaks may change
            assert four.phases == pytest.approx({k: 4 * v for k, v in one.phases.items()})
        else:
            assert four.parts["activations"] == pytest.approx(4 * one.parts["activations"])
    assert activation_bytes(shape, 100, act_ckpt=True) < activation_bytes(shape, 100, act_ckpt=False)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="tuning"):
        PlanSettings(tuning="qlora")
    with pytest.raises(ValueError, match="zero_stage"):
        PlanSettings(zero_stage=4)
    with pytest.raises(ValueError, match="n_gpus"):
        PlanSettings(n_gpus=0)
    with pytest.raises(ValueError, match="score_models"):
        PlanSettings(score_models="gpu")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_plan("sft-rlhf", TOY)


def test_plan_table_says_what_fits():
    table = plan_table("llama2-7b", gpus=[16, 32])
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) == len(memory_plan("llama2-7b")) == 16
    assert "| 16 GB | 32 GB |" in table and "meta-llama/Llama-2-7b-hf" in table and "no separate critic" in table
    assert [r.split("|")[1].strip() for r in rows[::4]] == ["sft", "reward / cost", "dpo", "ppo"]
    first = rows[4].split("|")
    assert first[1].strip() == "reward / cost" and first[2].strip() == "full" and first[3].strip() == "off"
    assert [c.strip() for c in first[-4:-2]] == ["**no**", "fits"]  # full 7B RM: 32 GB only
    assert all(re.search(r"\| (fits|\*\*no\*\*) \| (fits|\*\*no\*\*) \|", r) for r in rows)
    total = float(re.search(r"\*\*(\d+\.\d)\*\*", rows[4]).group(1))
    assert total == pytest.approx(stage_plan("reward", "llama2-7b").total_bytes / GB, abs=0.05)
    ppo_lora = rows[-1].split("|")
    assert ppo_lora[1].strip() == "ppo" and ppo_lora[2].strip() == "lora" and "scoring" in rows[-1]
    assert [c.strip() for c in ppo_lora[-4:-2]] == ["**no**", "fits"]  # LoRA PPO-Lagrangian at 7B: 32 GB


def test_cli(capsys):
    assert main(["tinyllama-1.1b", "--n-gpus", "16", "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "16 GPUs, seq len 1024" in out and "tinyllama-1.1b" in out
    assert main(["nope"]) == 2
    assert "known: llama2-7b" in capsys.readouterr().err
    assert main(["llama2-7b", "--score-models", "resident", "--lora-targets", "q_proj", "v_proj"]) == 0
    out = capsys.readouterr().out
    assert "resident on every GPU" in out and "LoRA rank 16 on q_proj, v_proj." in out
    assert main(["llama2-7b", "--lora-targets", "qkv"]) == 2


def test_defaults_mirror_the_deepspeed_configs():
    for name in ("zero2_offload", "zero2"):
        zero = json.loads((REPO / "configs" / "deepspeed" / f"{name}.json").read_text())["zero_optimization"]
        assert zero["allgather_bucket_size"] == ALLGATHER_BUCKET
        assert zero["overlap_comm"] is OVERLAP_COMM
        assert zero["reduce_bucket_size"] == "auto"  # = hidden^2, as the plan assumes
    assert PlanSettings().zero_stage == 2 and PlanSettings().offload_optimizer


def test_docs_tables_are_generated_from_the_code():
    doc = (REPO / "docs" / "memory.md").read_text()
    blocks = re.findall(r"<!-- memory-plan: (.*?) -->\n(.*?)<!-- /memory-plan -->", doc, flags=re.S)
    assert len(blocks) >= 2 and blocks[0][0] == "llama2-7b"
    for args, table in blocks:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(shlex.split(args)) == 0
        assert table.strip() == buf.getvalue().strip(), \
            f"docs/memory.md is stale: paste the output of `python -m bench.memory_plan {args}`"


@pytest.mark.slow
def test_activation_estimate_matches_saved_tensors_of_a_real_llama():
    """`a = 20 h + 4 kv + 8 I` against what autograd actually saves in an fp16 transformers Llama with
    SDPA (CPU; parameters excluded). Measured ~4% above (embedding and final norm, spread over layers)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    shape = ModelShape("tiny", "none/tiny", layers=4, hidden=256, intermediate=688, heads=8, kv_heads=4,
                       vocab=1000, tied_embeddings=False)
    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, num_hidden_layers=shape.layers, vocab_size=shape.vocab,
                      attn_implementation="sdpa")
    model = LlamaModel(cfg).to(torch.float16).train()
    tokens = 256
    ids = torch.randint(0, shape.vocab, (1, tokens))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes() -> int:
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids)
        return sum(v for k, v in seen.items() if k not in params)

    measured = saved_bytes()
    assert activation_bytes(shape, tokens, act_ckpt=False) == pytest.approx(measured, rel=0.15)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    kept = saved_bytes()  # layer inputs (+ embedding/final norm); one layer is recomputed in backward
    assert tokens * shape.layers * 2 * shape.hidden <= kept <= activation_bytes(shape, tokens, act_ckpt=True)


# --------------------------------------------------------------------------- plan vs code


@pytest.fixture
def smoke_score_records(score_runs):
    """Random reward and cost models on the smoke base config, with the records PPO reads them from."""
    return score_runs


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_ppo_plan_counts_the_models_the_ppo_code_builds(smoke_cfg, smoke_score_records):
    """The plan's PPO components against the models ``bench.train.ppo.set_up`` builds for PPO-Lagrangian
    on the smoke profile (same loaders, CPU): parameter counts must agree exactly (tolerance 0), since
    every weight, gradient, bucket and host-RAM figure of the plan is bytes per parameter times them."""
    import dataclasses

    import torch

    from bench.train.ppo_models import (
        load_policy,
        load_reference,
        load_score_model,
        offloads_score_models,
        scoring_device,
        setup_trainable,
    )
    from bench.train.rollout import PolicyWithValueHead

    section = smoke_cfg.require("ppo")
    assert section.trainable == "lora" and any(v.lagrangian for v in section.variants.values())
    torch.manual_seed(0)
    policy, _ = load_policy(smoke_cfg, section)
    c = policy.config
    shape = ModelShape("smoke", "-", layers=c.num_hidden_layers, hidden=c.hidden_size,
                       intermediate=c.intermediate_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                       vocab=c.vocab_size, tied_embeddings=c.tie_word_embeddings)
    assert _numel(policy) == shape.params
    module = PolicyWithValueHead(setup_trainable(policy, section), c.hidden_size, n_values=2)  # as set_up does
    settings = PlanSettings(n_gpus=1, seq_len=section.max_length, micro_batch=section.batch_size, tuning="lora",
                            lora_rank=section.lora.r, lora_targets=tuple(section.lora.target_modules),
                            overhead_gb=0.0)
    plan = stage_plan("ppo", shape, settings)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert plan.parts["weights"] == BYTES_16 * _numel(module)  # base + adapters + value head, no critic
    assert plan.parts["grads"] == BYTES_16 * trainable  # one GPU: the whole gradient
    assert plan.cpu_bytes - 2 * BYTES_16 * shape.score_params == 16 * trainable  # offloaded Adam + fp32 grads
    assert "frozen weights" not in plan.parts  # LoRA: set_up loads no reference

    rm, _ = load_score_model(smoke_cfg, "reward", required=True, device=torch.device("cpu"))
    cm, _ = load_score_model(smoke_cfg, "cost", required=True, device=torch.device("cpu"))
    assert _numel(rm) == _numel(cm) == shape.score_params
    resident = stage_plan("ppo", shape, dataclasses.replace(settings, score_models="resident"))
    assert resident.parts["score models"] == BYTES_16 * (_numel(rm) + _numel(cm))
    if plan.peak == "scoring":  # offloaded: one of them visits the GPU
        assert plan.parts["score models"] == BYTES_16 * _numel(rm)

    full = dataclasses.replace(section, trainable="full")
    ref = load_reference(smoke_cfg, full, torch.device("cpu"))
    assert stage_plan("ppo", shape, dataclasses.replace(settings, tuning="full")).parts["frozen weights"] \
        == BYTES_16 * _numel(ref)

    # Where the code holds the score models: on CPU nothing moves; on a GPU they stay in host memory.
    assert not offloads_score_models("cpu") and offloads_score_models("cuda")
    assert scoring_device(rm).type == "cpu" and not hasattr(rm, "bench_scoring_device")
    gpu_rm, _ = load_score_model(smoke_cfg, "reward", required=True, device=torch.device("cuda"))
    assert next(gpu_rm.parameters()).device.type == "cpu" and scoring_device(gpu_rm) == torch.device("cuda")


def test_offloaded_score_model_visits_its_device_and_comes_back_unchanged(smoke_cfg, smoke_score_records):
    """``on_scoring_device`` swaps the weights in for the pass and re-attaches the very same host
    tensors after it (no copy back); the scores equal those of the model left in place."""
    import torch

    from bench.train.ppo_models import load_score_model, on_scoring_device
    from bench.train.rollout import score_responses

    rm, tok = load_score_model(smoke_cfg, "reward", required=True, device=torch.device("cpu"))
    prompts, responses = ["How do I bake bread?", "Tell me a joke."], ["Knead, rise, bake.", "No."]
    plain = score_responses(rm, tok, prompts, responses, None, batch_size=2)
    ptrs = [t.data_ptr() for t in list(rm.parameters()) + list(rm.buffers())]
    rm.bench_scoring_device = torch.device("cpu")  # an offloaded model whose device is the host itself
    seen = []
    with on_scoring_device(rm) as m:
        seen = [t.device.type for t in m.parameters()]
    assert set(seen) == {"cpu"}
    assert [t.data_ptr() for t in list(rm.parameters()) + list(rm.buffers())] == ptrs
    assert torch.equal(score_responses(rm, tok, prompts, responses, None, batch_size=2), plain)
