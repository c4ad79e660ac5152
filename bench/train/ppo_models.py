"""What the PPO recipe loads before its first step: the policy, its reference, the score models.

- :func:`load_policy`: the initial policy and tokenizer (the verified base, or the SFT stage's
  model, as ``ppo.policy_init`` says); :func:`setup_trainable` makes it trainable (full | lora |
  top_layers, through ``bench.models.configure_trainable`` as every stage) with dropout off.
- :func:`load_reference`: a frozen copy of the initial policy for full / top_layers training (LoRA
  needs none: its reference is the same network with the adapters disabled, see
  ``bench.train.rollout.reference_logits``).
- :func:`load_score_model`: the reward or cost model named by its stage's record; a missing
  required one is a RecordError that names the ``make`` target to run.

Why dropout off: the importance ratio of the first mini-batch must be exactly 1 (as in TRL and
OpenRLHF). Why apart from the recipe: model loading is where a run fails before training (missing
records, dtype choices), and the recipe reads top to bottom without it. Used by
``bench/train/ppo.py`` (``make ppo PROFILE=...``); tested in ``tests/test_ppo.py``
(``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

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


def load_score_model(cfg: ProfileConfig, kind: str, required: bool, device: torch.device):
    """The reward or cost model named by its stage's record, or (None, None) when optional and absent."""
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
    return model.to(device).eval().requires_grad_(False), tok
