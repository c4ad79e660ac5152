"""PPO's optimisation: the update (step 4 of the recipe), its schedule, and the per-step seeds.

:func:`ppo_update`: ``ppo_epochs`` passes over one rollout batch in shuffled mini-batches of
``mini_batch_size`` sequences (one optimiser step each, processed in micro-batches of ``batch_size``):
the clipped policy loss (``losses.ppo_policy_loss``) plus ``vf_coef`` x the clipped value loss of
each critic (``losses.value_loss``; two critics under PPO-Lagrangian), through the backend's
backward / step (``bench.train.ppo_backends``), which clips gradients and steps the optimiser.

:func:`step_seed` / :func:`seed_step`: step k of rank r reseeds torch from (seed, k, r), and the
mini-batch order draws from its own generator seeded from the same number; so the samples and the
mini-batches of step k are the same whether the run was interrupted before it or not.
:func:`planned_steps` / :func:`lr_factor`: the run's number of steps (``max_steps``, else ``epochs``
over the prompts) and the linear learning-rate warmup over ``warmup_ratio`` of them.

Why apart from the recipe: it is the inner loop a reader of ``bench/train/ppo.py`` (``make ppo
PROFILE=...``) can take as one step, and the GPU perf unit (``bench.perf.gpu.unit_7b_lora_ppo``)
measures exactly this function. Tested through the smoke and resume runs of ``tests/test_ppo.py``
(``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import math

import torch

from bench.config import PPOSection
from bench.losses import ppo_policy_loss, sequence_logprobs, value_loss
from bench.train.rollout import Samples


def ppo_update(backend, s: Samples, exp: dict, adv: torch.Tensor, returns: torch.Tensor, section: PPOSection,
               seed: int, step: int, rank: int) -> dict[str, float]:
    """``ppo_epochs`` passes over the rollout in shuffled mini-batches; returns mean loss statistics."""
    g = torch.Generator().manual_seed(step_seed(seed, step, rank) + 1)
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl", "vf_clip_frac")}
    grad_norms: list[float] = []
    n = len(s.prompts)
    for _ in range(section.ppo_epochs):
        perm = torch.randperm(n, generator=g).to(adv.device)
        for mb in perm.split(section.mini_batch_size):
            for idx in mb.split(section.batch_size):
                m = s.mask[idx]  # (b, R)
                logits, values = backend.forward(s.input_ids[idx], s.attention_mask[idx], s.prompt_len,
                                                 section.temperature)  # (b, R, V), (b, R, K)
                logp = sequence_logprobs(logits, s.responses[idx], m)  # (b, R)
                pl, pst = ppo_policy_loss(logp, exp["logp"][idx], adv[idx], m, section.clip_eps)
                vl_total = 0.0
                vf_clip = []
                for k in range(values.shape[-1]):  # reward critic, and cost critic under PPO-Lagrangian
                    vl, vst = value_loss(values[..., k], exp["values"][idx][..., k], returns[idx][..., k], m,
                                         section.value_clip_eps)
                    vl_total = vl_total + vl
                    vf_clip.append(vst["vf_clip_frac"].item())
                backend.backward(pl + section.vf_coef * vl_total)
                norm = backend.step()
                if norm is not None:
                    grad_norms.append(norm)
                stats["policy_loss"].append(pl.item())
                stats["value_loss"].append(float(vl_total.detach()))
                stats["clip_frac"].append(pst["clip_frac"].item())
                stats["approx_kl"].append(pst["approx_kl"].item())
                stats["vf_clip_frac"].append(sum(vf_clip) / len(vf_clip))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    return out


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + (step + 1) * 7_919 + rank * 104_729) % (2**63 - 1)


def seed_step(seed: int, step: int, rank: int) -> None:
    torch.manual_seed(step_seed(seed, step, rank))  # also seeds every CUDA device


def planned_steps(section: PPOSection, n_prompts: int, world: int, group_size: int = 1) -> int:
    if section.max_steps > 0:
        return section.max_steps
    return max(1, math.ceil(section.epochs * n_prompts * group_size / (section.rollout_prompts * world)))


def lr_factor(section: PPOSection, step: int, total_steps: int) -> float:
    """Linear warmup over ``warmup_ratio`` of the steps, then constant."""
    warm = int(section.warmup_ratio * total_steps)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0
