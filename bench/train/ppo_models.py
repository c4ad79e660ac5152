"""What the PPO recipe loads before its first step: the policy, its reference, the score models.

- :func:`load_policy`: the initial policy and tokenizer (the verified base, or the SFT stage's
  model, as ``ppo.policy_init`` says); :func:`setup_trainable` makes it trainable (full | lora |
  top_layers, through ``bench.models.configure_trainable`` as every stage) with dropout off.
- :func:`load_reference`: a frozen copy of the initial policy for full / top_layers training (LoRA
  needs none: its reference is the same network with the adapters disabled, see
  ``bench.train.rollout.reference_logits``).
- :func:`load_score_model`: the reward or cost model named by its stage's record; a missing
  required one is a RecordError that names the ``make`` target to run. On a GPU the score models
  are *offloaded*: they stay in host memory and visit the GPU only for their scoring pass
  (:func:`on_scoring_device`, used by ``bench.train.rollout.score_responses``), one at a time.
  On CPU the device is the host and nothing moves: the CPU path is unchanged.

Why offload the score models (issue 24, "7B PPO-Lagrangian on one 32 GB V100"): under ZeRO-2 every
GPU holds whole copies of every model it computes with; policy, reward and cost model of a 7B
run are ~40 GB of fp16 weights, more than a 32 GB V100. The policy must stay (it generates and
trains every step; under LoRA its reference is the same network with the adapters off, and the
critic is a value head on it), but the reward and cost models run one no-grad forward per step.
Kept in host RAM they cost one host-to-device copy per scoring pass (~13 GB each at 7B, a few
seconds over PCIe, against minutes of generation per step) and the GPU holds at most one of them
at a time: the plan (``python -m bench.memory_plan llama2-7b``) then puts LoRA PPO-Lagrangian at
about 28 GB per GPU. The other design of the LoRA-PPO paper (reward and cost heads as adapters
on the policy's own frozen backbone) would also save the host RAM, but changes how the reward and
cost stages train; the weights a pass sees and the numbers it computes are the same here whether a
model stays on the GPU or visits it. The copy back is free: the host tensors are kept and only
re-attached (frozen weights never change).

Why dropout off: the importance ratio of the first mini-batch must be exactly 1 (as in TRL and
OpenRLHF). Why apart from the recipe: model loading is where a run fails before training (missing
records, dtype choices), and the recipe reads top to bottom without it. Used by
``bench/train/ppo.py`` (``make ppo PROFILE=...``); tested in ``tests/test_ppo.py``
(``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bench.config import PPOSection, ProfileConfig
from bench.records import RecordError
from bench.runs import find_record


def load_policy(cfg: ProfileConfig, section: PPOSection):
    """The initial policy and its tokenizer: the verified base, or the SFT stage's model."""
    from bench.models import load_pretrained, policy_init_dir

    return load_pretrained(policy_init_dir(cfg, section.policy_init), cfg.model)


def setup_trainable(policy: nn.Module, section: PPOSection) -> nn.Module:
    """``bench.models.configure_trainable`` (full | lora | top_layers, as every stage), then dropout off
    (LoRA dropout included: the first PPO ratio must be exactly 1) and gradient checkpointing if set."""
    from bench.models import configure_trainable

    policy = configure_trainable(policy, section)
    for m in policy.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    if section.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if hasattr(policy, "enable_input_require_grads"):
            policy.enable_input_require_grads()
    return policy


def load_reference(cfg: ProfileConfig, section: PPOSection, device: torch.device) -> nn.Module:
    """A frozen copy of the initial policy (full / top_layers training), in eval mode."""
    from bench.models import load_pretrained, policy_init_dir

    ref, _ = load_pretrained(policy_init_dir(cfg, section.policy_init), cfg.model)
    if section.deepspeed and section.fp16:
        ref = ref.half()
    return ref.to(device).eval().requires_grad_(False)


def offloads_score_models(device: torch.device | str) -> bool:
    """Whether score models computing on ``device`` are kept in host memory between scoring passes:
    on every GPU (see the module docstring); never on CPU, where host and device are one."""
    return torch.device(device).type == "cuda"


def load_score_model(cfg: ProfileConfig, kind: str, required: bool, device: torch.device):
    """The reward or cost model named by its stage's record, or (None, None) when optional and absent.

    On a GPU (:func:`offloads_score_models`) the model stays in host memory, marked with the device
    it scores on; :func:`on_scoring_device` brings it there for a pass."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.models import torch_dtype

    p = cfg.profile.name
    rec = find_record(p, kind)
    path = Path(rec["artifacts"]["model_dir"]) if rec and "model_dir" in rec.get("artifacts", {}) else None
    if path is None or not path.exists():
        if not required:
            return None, None
        why = f"record names {path}, which does not exist" if rec else "no record"
        raise RecordError(f"ppo needs the {kind} model of profile '{p}' ({why}); run `make {kind} PROFILE={p}` first")
    tok = None
    if (path / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    dtype = torch.float16 if (cfg.ppo and cfg.ppo.deepspeed and cfg.ppo.fp16) else torch_dtype(cfg.model.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code)
    from bench.precision import for_precision

    model = for_precision(model.eval().requires_grad_(False), cfg.model.precision)
    if offloads_score_models(device):
        model.bench_scoring_device = torch.device(device)
        return model, tok
    return model.to(device), tok


def scoring_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes its scores: its marked GPU if offloaded, else where its weights are."""
    return getattr(model, "bench_scoring_device", None) or next(model.parameters()).device


@contextlib.contextmanager
def on_scoring_device(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its weights on its scoring device for the ``with`` block, then back in host memory.

    A no-op for a model that is not offloaded (the CPU path, or a model already on its device).
    The host tensors are kept and re-attached afterwards (``tensor.data`` swap, as ``Module.to``
    does): nothing is copied back, and the GPU copies are freed to the caching allocator, where the
    policy's next step reuses them."""
    device = getattr(model, "bench_scoring_device", None)
    if device is None:
        yield model
        return
    tensors = list(model.parameters()) + list(model.buffers())
    host = [t.data for t in tensors]
    try:
        for t, h in zip(tensors, host):
            t.data = h.to(device, non_blocking=True)
        yield model
    finally:
        for t, h in zip(tensors, host):
            t.data = h
