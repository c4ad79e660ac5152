"""What a PPO run records about its training: the per-step series row and the summary metrics.

- :func:`episode_values`: the per-episode numbers of one rollout batch (RM reward, CM cost, KL to
  the reference summed over the response, response length, truncation), JSON-ready; the first and
  the last batch's are kept in the checkpoint state.
- :func:`step_metrics`: one row of ``extra.series`` in the record (means of those, the mean
  per-token penalty and entropy, the mean per-token k3 KL ``kl_ref_per_token``, the Lagrange
  multiplier under PPO-Lagrangian, the update's loss statistics, seconds).
- :func:`summary_extra`: the record's ``extra`` (``kl_ref_per_token_end``: the last batch's mean
  per-token KL to the reference, k3).
- :func:`summary_metrics`: the record's ``metrics`` (first and last batch, with 95% intervals).

Why here: these functions define field names of committed run records, which must not change under
a refactor of the loop; keeping them in one place keeps them stable and easy to find. Used by
``bench/train/ppo.py`` (``make ppo PROFILE=...``); tested through the smoke runs of
``tests/test_ppo.py`` (``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import torch

from bench.config import PPOVariant
from bench.losses import masked_mean
from bench.stats import mean_metric, rate_metric, scalar_metric
from bench.train.ppo_checkpoints import TrainState
from bench.train.rollout import Samples


def episode_values(s: Samples, exp: dict, reward_raw: torch.Tensor, cost_raw: torch.Tensor | None) -> dict:
    """Per-episode numbers of one rollout batch (plain lists, JSON-ready)."""
    length = s.mask.sum(1)  # (B,)
    return {
        "reward": reward_raw.tolist(),
        "cost": cost_raw.tolist() if cost_raw is not None else None,
        "kl_ref": (exp["kl"] * s.mask).sum(1).tolist(),  # k3 summed over the response: KL(pi || ref) per sequence
        "response_length": length.tolist(),
        "truncated": s.truncated.int().tolist(),
    }


def step_metrics(step: int, ep: dict, exp: dict, s: Samples, upd: dict, lagrange_multiplier: float,
                 variant: PPOVariant, seconds: float) -> dict:
    """One row of the record's series (its key ``lambda`` is the Lagrange multiplier, None unless
    the variant is PPO-Lagrangian)."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "step": step,
        "reward": mean(ep["reward"]),
        "cost": mean(ep["cost"]) if ep["cost"] is not None else None,
        "lambda": lagrange_multiplier if variant.lagrangian else None,
        "kl_ref": mean(ep["kl_ref"]),
        "kl_ref_per_token": kl_per_token(ep),
        "penalty": masked_mean(exp["penalty"], s.mask).item(),
        "entropy": masked_mean(exp["entropy"], s.mask).item(),
        "response_length": mean(ep["response_length"]),
        "truncated": mean(ep["truncated"]),
        **upd,
        "seconds": seconds,
    }


def kl_per_token(ep: dict) -> float:
    """Mean per-token KL(pi || ref) of one batch's episodes: the k3 estimate summed over every response
    token, divided by the number of response tokens (token-weighted; ``kl_ref`` is per episode)."""
    tokens = sum(ep["response_length"])
    return sum(ep["kl_ref"]) / tokens if tokens else 0.0


def summary_extra(state: TrainState) -> dict:
    """Record ``extra`` entries: the last rollout batch's mean per-token KL to the reference (the
    starting policy), k3, with its token count; comparable across regularisers and response lengths."""
    last = state.last_episodes
    return {"kl_ref_per_token_end": {"value": kl_per_token(last), "estimator": "k3",
                                     "tokens": int(sum(last["response_length"]))}}


def summary_metrics(state: TrainState, total_steps: int) -> dict[str, dict]:
    """Record metrics: the first and last rollout batch's episodes, with 95% intervals."""
    first, last = state.first_episodes, state.last_episodes
    out = {
        "reward_start": mean_metric(first["reward"]),
        "reward_end": mean_metric(last["reward"]),
        "kl_ref_end": mean_metric(last["kl_ref"]),
        "response_length_end": mean_metric(last["response_length"]),
        "truncated_end": rate_metric(sum(last["truncated"]), len(last["truncated"])),
        "entropy_end": scalar_metric(state.series[-1]["entropy"]),
        "kl_ref_per_token_end": scalar_metric(kl_per_token(last)),  # the regularisers' common yardstick
        "steps": scalar_metric(total_steps),
    }
    if last["cost"] is not None:
        out["cost_start"] = mean_metric(first["cost"])
        out["cost_end"] = mean_metric(last["cost"])
    if state.series[-1]["lambda"] is not None:
        out["lambda_end"] = scalar_metric(state.series[-1]["lambda"])
    return out
