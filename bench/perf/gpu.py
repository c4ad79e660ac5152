"""GPU-only units of `bench perf` (skipped on CPU, with a line in the report saying so).

- :func:`unit_1b_train`: fp16 mixed-precision training tokens/s and model-FLOPs utilisation of a
  randomly initialised Llama of the ``llama-1b`` shape of :mod:`bench.memory_plan` (fp32 master
  weights, autocast fp16, dynamic loss scaling, AdamW: what a V100 runs; no bf16 there).
  MFU = (6 N + 12 L h T) tokens/s / peak dense fp16 FLOP/s of the card (PaLM appendix B;
  N = parameters without the embedding, T = sequence length), with the peak looked up by card name.
- :func:`unit_7b_lora_ppo`: peak GPU memory of one PPO step of our loop (``bench.train.ppo``:
  rollout with the KV cache, experience with the LoRA-disabled reference, clipped update) on a
  ``llama2-7b``-shaped fp16 policy with LoRA, under a 32 GB cap (``set_per_process_memory_fraction``),
  next to the :mod:`bench.memory_plan` estimate of the same step. Rewards are random numbers: the
  reward and cost models add only their frozen weights, which the plan counts separately.

- :func:`unit_1b_deepspeed`: the same 1B training step through DeepSpeed with the shipped
  ``configs/deepspeed/zero2_offload.json`` (fp16 with dynamic loss scaling, ZeRO-2, AdamW on the CPU:
  DeepSpeedCPUAdam, compiled on first use), every ``"auto"`` filled by the PPO recipe's
  :func:`bench.train.ppo_backends.deepspeed_config`: the container's V100 recipe, here on one GPU. Reports
  tokens/s, MFU and peak GPU memory next to the plain-torch unit: the GPU holds fp16 weights and
  gradients only, the optimiser state lives in host memory.

``args["device"] = "cpu"`` with a tiny ``args["shape"]`` runs the same code on CPU (the test suite
uses it to keep these paths importable and runnable where no GPU exists); `bench perf` only calls
them when ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import time

GB = 1e9
# Dense fp16/bf16 tensor-core peak FLOP/s by card name (vendor data sheets; no sparsity).
PEAK_FP16_TFLOPS = {"V100": 125.0, "A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0, "A10": 125.0,
                    "T4": 65.0, "RTX 4090": 165.0, "A6000": 155.0}


def peak_tflops(name: str) -> float | None:
    for key, tf in PEAK_FP16_TFLOPS.items():
        if key.lower() in name.lower():
            return tf
    return None


def _llama(shape, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                      tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model


def _shape(args: dict, default: str):
    from bench.memory_plan import ModelShape, get_shape

    s = args.get("shape", default)
    return ModelShape(**s) if isinstance(s, dict) else get_shape(s)


def _timed_steps(step, steps: int, device: str) -> tuple[list[float], list[float]]:
    """Run ``step()`` (returns the loss) ``steps + 1`` times; step 0 is the untimed warm-up (kernels,
    allocator, extensions). Returns (seconds of the timed steps, loss of every step)."""
    import torch

    secs, losses = [], []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step())
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            secs.append(time.perf_counter() - t0)
    return secs, losses


def _train_result(shape, model, seq: int, batch: int, secs: list[float], device: str) -> dict:
    """What both 1B units report: tokens per step, FLOPs per token (6 N + 12 L h T) and the card's peak."""
    import torch

    n_params = sum(p.numel() for p in model.parameters())
    n_dense = n_params - shape.vocab * shape.hidden  # the input embedding is a lookup, not a matmul
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"shape": shape.name, "params": n_params, "seq_len": seq, "batch": batch, "seconds": secs,
            "tokens_per_step": batch * seq, "flops_per_token": 6 * n_dense + 12 * shape.layers * shape.hidden * seq,
            "device_name": name, "peak_tflops_fp16": peak_tflops(name),
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / GB if device == "cuda" else None}


def _sizes(args: dict) -> tuple[int, int, int]:
    return int(args.get("seq_len", 1024)), int(args.get("batch", 4)), int(args.get("steps", 6))


def unit_1b_train(args: dict) -> dict:
    import torch

    device = args.get("device", "cuda")
    shape = _shape(args, "llama-1b")
    seq, batch, steps = _sizes(args)
    model = _llama(shape, device, torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    x = torch.randint(0, shape.vocab, (batch, seq), device=device)

    def step() -> float:
        with torch.autocast(device, dtype=amp_dtype):
            loss = model(input_ids=x, labels=x).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    secs, _ = _timed_steps(step, steps, device)
    return _train_result(shape, model, seq, batch, secs, device)


def unit_1b_deepspeed(args: dict) -> dict:
    import os

    import deepspeed
    import torch

    from bench.config import REPO_ROOT, PPOSection
    from bench.train.ppo_backends import deepspeed_config

    shape = _shape(args, "llama-1b")
    seq, batch, steps = _sizes(args)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29513", "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    section = PPOSection(deepspeed=str(REPO_ROOT / "configs" / "deepspeed" / "zero2_offload.json"), fp16=True,
                         batch_size=batch, mini_batch_size=batch, learning_rate=1e-4)
    conf = deepspeed_config(section, world=1, hidden_size=shape.hidden)
    torch.cuda.reset_peak_memory_stats()
    model = _llama(shape, "cuda", torch.float32).train()
    t0 = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=conf)
    init_s = time.perf_counter() - t0  # includes compiling/loading the CPU Adam extension
    x = torch.randint(0, shape.vocab, (batch, seq), device="cuda")

    def step() -> float:
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        return loss.item()

    secs, losses = _timed_steps(step, steps, "cuda")
    zero = conf["zero_optimization"]
    return {**_train_result(shape, model, seq, batch, secs, "cuda"), "init_s": init_s, "losses": losses,
            "loss_scale": float(engine.optimizer.cur_scale) if hasattr(engine.optimizer, "cur_scale") else None,
            "deepspeed": deepspeed.__version__, "zero_stage": zero["stage"], "offload": zero["offload_optimizer"]["device"]}


def unit_7b_lora_ppo(args: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from bench.config import LoraSection, PPOSection, PPOVariant
    from bench.losses import gae, masked_whiten, shape_rewards
    from bench.memory_plan import PlanSettings, stage_plan
    from bench.train.ppo_backends import TorchBackend
    from bench.train.ppo_update import ppo_update
    from bench.train.rollout import PolicyWithValueHead, Samples, experience, response_mask

    device = args.get("device", "cuda")
    shape = _shape(args, "llama2-7b")
    cap_gb = float(args.get("cap_gb", 32))
    prompts, p_len, new = int(args.get("prompts", 4)), int(args.get("prompt_len", 256)), int(args.get("max_new_tokens", 256))
    rank = int(args.get("lora_rank", 16))
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * GB / total))
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.float16 if device == "cuda" else torch.float32
    section = PPOSection(trainable="lora", lora=LoraSection(r=rank, alpha=2 * rank, dropout=0.0,
                                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "gate_proj", "up_proj", "down_proj"]),
                         rollout_prompts=prompts, mini_batch_size=prompts, batch_size=1, ppo_epochs=1,
                         max_new_tokens=new, max_length=p_len + new + 1, gradient_checkpointing=True)
    out = {"shape": shape.name, "cap_gb": cap_gb, "prompts": prompts, "prompt_len": p_len, "max_new_tokens": new,
           "lora_rank": rank, "gradient_checkpointing": True}
    plan = stage_plan("ppo", shape, PlanSettings(n_gpus=1, seq_len=p_len + new, micro_batch=1, act_ckpt=True,
                                                 tuning="lora", lora_rank=rank, zero_stage=0, offload_optimizer=False))
    # The measured step has no reward/cost model and a value head on the policy instead of a critic model.
    out["plan_gb_policy_side"] = (plan.total_bytes - plan.parts.get("frozen weights", 0.0)) / GB
    out["plan_gb_total"] = plan.total_gb
    t0 = time.perf_counter()
    try:
        base = _llama(shape, device, dtype)
        policy = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                 target_modules=list(section.lora.target_modules), task_type="CAUSAL_LM"))
        policy.gradient_checkpointing_enable()
        policy.enable_input_require_grads()
        module = PolicyWithValueHead(policy, shape.hidden).to(device=device)
        module.value_head.to(torch.float32)
        backend = TorchBackend(module, section)
        backend.module.eval()
        ids = torch.randint(3, shape.vocab, (prompts, p_len), device=device)
        attn = torch.ones_like(ids)
        with torch.no_grad():
            gen = policy.generate(input_ids=ids, attention_mask=attn, do_sample=True, top_k=0, max_new_tokens=new,
                                  min_new_tokens=new, pad_token_id=0, eos_token_id=[2], use_cache=True)
        responses = gen[:, p_len:]
        mask, truncated = response_mask(responses, [2])
        s = Samples([""] * prompts, torch.cat([ids, responses], 1), torch.cat([attn, mask.long()], 1), p_len,
                    responses, mask, truncated, [""] * prompts)
        exp = experience(backend.module, None, s, PPOVariant(), section)
        score = torch.randn(prompts, device=mask.device)
        rewards = shape_rewards(score, exp["penalty"], mask, 0.05, clip=5.0)
        adv, ret = gae(rewards, exp["values"][..., 0], mask, 1.0, 0.95)
        backend.module.train()
        ppo_update(backend, s, exp, masked_whiten(adv, mask), ret[..., None], section, 0, 0, 0)
        out["fits"] = True
    except torch.OutOfMemoryError as e:
        out["fits"] = False
        out["error"] = f"out of memory under the {cap_gb:g} GB cap: {str(e).splitlines()[0]}"
    out["seconds"] = [time.perf_counter() - t0]
    if device == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / GB
        out["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / GB
        out["device_name"] = torch.cuda.get_device_name(0)
    return out
