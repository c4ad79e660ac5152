"""GPU-only units of `bench perf` (skipped on CPU, with a line in the report saying so).

- :func:`unit_1b_train`: fp16 mixed-precision training tokens/s and model-FLOPs utilisation of a
  randomly initialised Llama of the ``llama-1b`` shape of :mod:`bench.memory_plan` (fp32 master
  weights, autocast fp16, dynamic loss scaling, AdamW: what a V100 runs; no bf16 there).
  MFU = (6 N + 12 L h T) tokens/s / peak dense fp16 FLOP/s of the card (PaLM appendix B;
  N = parameters without the embedding, T = sequence length), with the peak looked up by card name.
- :func:`unit_7b_lora_ppo`: peak GPU memory of one PPO-Lagrangian step of our loop (``bench.train.ppo``:
  rollout with the KV cache, experience with the LoRA-disabled reference and the two-column value
  head, reward and cost scoring, Lagrangian advantages, clipped update) on a ``llama2-7b``-shaped fp16
  policy with LoRA, with ``llama2-7b``-shaped fp16 reward and cost models held as the PPO code holds
  them on a GPU (host RAM, each copied to the GPU for its scoring pass: ``ppo_models.on_scoring_device``),
  under a 32 GB cap (``set_per_process_memory_fraction``), next to the :mod:`bench.memory_plan`
  estimate of the same step, phase by phase. All weights are random (no download); the score models
  read the sampled token ids directly (no text round trip, there is no tokenizer for a random shape).

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

import contextlib
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


@contextlib.contextmanager
def _default_dtype(dtype):
    """Build models directly in ``dtype`` (a 7B model built in fp32 first would need 27 GB on the way)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _score_model(shape, device, dtype):
    """A random-init score model (LM head replaced by a 1-output linear, as ``bench.score_model`` builds
    them) of ``shape``, in ``dtype`` on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                      tie_word_embeddings=False, max_position_embeddings=4096, num_labels=1, pad_token_id=0)
    with _default_dtype(dtype), torch.device(device):
        return LlamaForSequenceClassification(cfg).eval().requires_grad_(False)


def _phase_peak(device: str, reserved: list[float]) -> float | None:
    """Peak allocated GB since the last call (the peak reserved GB goes to ``reserved``), then resets
    the counters; None off CUDA."""
    import torch

    if device != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated() / GB
    reserved.append(torch.cuda.max_memory_reserved() / GB)
    torch.cuda.reset_peak_memory_stats()
    return peak


def unit_7b_lora_ppo(args: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from bench.config import LoraSection, PPOSection, PPOVariant
    from bench.memory_plan import PlanSettings, stage_plan
    from bench.train.ppo_advantages import ppo_advantages
    from bench.train.ppo_backends import TorchBackend
    from bench.train.ppo_models import offloads_score_models, on_scoring_device
    from bench.train.ppo_update import ppo_update
    from bench.train.rollout import PolicyWithValueHead, Samples, experience, micro_slices, response_mask

    device = args.get("device", "cuda")
    shape = _shape(args, "llama2-7b")
    cap_gb = float(args.get("cap_gb", 32))
    prompts, p_len, new = int(args.get("prompts", 4)), int(args.get("prompt_len", 256)), int(args.get("max_new_tokens", 256))
    rank = int(args.get("lora_rank", 16))
    dtype = torch.float16 if device == "cuda" else torch.float32
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    section = PPOSection(trainable="lora", lora=LoraSection(r=rank, alpha=2 * rank, dropout=0.0, target_modules=targets),
                         rollout_prompts=prompts, mini_batch_size=prompts, batch_size=1, ppo_epochs=1,
                         max_new_tokens=new, max_length=p_len + new + 1, gradient_checkpointing=True)
    variant = PPOVariant(lagrangian=True)
    offload = offloads_score_models(device)
    out = {"shape": shape.name, "cap_gb": cap_gb, "prompts": prompts, "prompt_len": p_len, "max_new_tokens": new,
           "lora_rank": rank, "gradient_checkpointing": True, "variant": "ppo-lag",
           "score_models": "offload" if offload else "on the device"}
    plan = stage_plan("ppo", shape, PlanSettings(n_gpus=1, seq_len=p_len + new, micro_batch=1, act_ckpt=True,
                                                 tuning="lora", lora_rank=rank, zero_stage=0, offload_optimizer=False))
    out["plan_gb_total"] = plan.total_gb  # the whole PPO-Lagrangian step: policy side + a visiting score model
    out["plan_gb_policy_side"] = plan.total_gb - plan.gb("score models")
    out["plan_peak"] = plan.peak
    out["plan_phases_gb"] = {k: v / GB for k, v in plan.phases.items()}
    t0 = time.perf_counter()
    # The reward and cost models: built on the device before the cap (fast random init), then held in
    # host RAM and marked with the device they score on, exactly as ppo_models.load_score_model does.
    scorers = {}
    for kind in ("reward", "cost"):
        m = _score_model(shape, device, dtype)
        if offload:
            m = m.to("cpu")
            m.bench_scoring_device = torch.device(device)
        scorers[kind] = m
    out["score_model_params"] = sum(p.numel() for p in scorers["reward"].parameters())
    if device == "cuda":
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * GB / total))
        torch.cuda.reset_peak_memory_stats()
    out["setup_s"] = time.perf_counter() - t0
    phases: dict[str, float | None] = {}
    reserved: list[float] = []
    try:
        with _default_dtype(dtype):
            base = _llama(shape, device, dtype)
        policy = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
        policy.gradient_checkpointing_enable()
        policy.enable_input_require_grads()
        module = PolicyWithValueHead(policy, shape.hidden, n_values=2).to(device=device)
        module.value_head.to(torch.float32)
        backend = TorchBackend(module, section)
        phases["load"] = _phase_peak(device, reserved)
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
        phases["rollout"] = _phase_peak(device, reserved)
        exp = experience(backend.module, None, s, variant, section)
        phases["experience"] = _phase_peak(device, reserved)
        scores, copy_s = {}, []
        for kind, m in scorers.items():  # one at a time, as ppo.train_step scores reward then cost
            t1 = time.perf_counter()
            with torch.no_grad(), on_scoring_device(m) as dev_m:
                if device == "cuda":
                    torch.cuda.synchronize()
                copy_s.append(time.perf_counter() - t1)
                vals = [dev_m(input_ids=s.input_ids[sl], attention_mask=s.attention_mask[sl]).logits[:, 0].float()
                        for sl in micro_slices(prompts, section.batch_size)]
            scores[kind] = torch.cat(vals)  # (B,)
        out["score_copy_s"] = copy_s
        phases["scoring"] = _phase_peak(device, reserved)
        adv = ppo_advantages(scores["reward"], exp["penalty"], exp["values"], mask, coef=0.05, gamma=1.0,
                             gae_lambda=0.95, reward_clip=5.0, cost=scores["cost"], lagrange_multiplier=1.0)
        backend.module.train()
        ppo_update(backend, s, exp, adv.advantages, adv.returns, section, 0, 0, 0)
        phases["policy step"] = _phase_peak(device, reserved)
        out["fits"] = True
    except torch.OutOfMemoryError as e:
        out["fits"] = False
        out["error"] = f"out of memory under the {cap_gb:g} GB cap: {str(e).splitlines()[0]}"
        phases["failed phase"] = _phase_peak(device, reserved)
    out["seconds"] = [time.perf_counter() - t0]
    if device == "cuda":
        out["phase_peak_gb"] = phases
        out["peak_gpu_mem_gb"] = max(v for v in phases.values() if v is not None)
        out["peak_gpu_reserved_gb"] = max(reserved)
        out["device_name"] = torch.cuda.get_device_name(0)
    return out
