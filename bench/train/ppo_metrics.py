"""What a PPO run records about its training: the per-step series row and the summary metrics.

- :func:`episode_values`: the per-episode numbers of one rollout batch (RM reward, CM cost, KL to
  the reference summed over the response, response length, truncation), JSON-ready; the first and
  the last batch's are kept in the checkpoint state.
- :func:`step_metrics`: one row of ``extra.series`` in the record (means of those, the mean
  per-token penalty and entropy, the mean per-token k3 KL ``kl_ref_per_token``; under
  PPO-Lagrangian the multiplier ``lambda`` after the step's update, the ``episode_cost`` it was
  updated from (the window's mean raw CM cost) and the threshold ``cost_threshold`` d; the update's
  loss statistics, seconds).
- :func:`lagrangian_extra`: the record's ``extra.lagrangian`` (d and how it was set, lambda's start
  and end, the steps where lambda rose and where the constraint bound); ``bench.report.lagrangian``
  renders it.
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

from bench.config import PPOSection, PPOVariant
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
                 variant: PPOVariant, seconds: float, episode_cost: float | None = None,
                 cost_threshold: float | None = None) -> dict:
    """One row of the record's series (its keys ``lambda``, ``episode_cost`` and ``cost_threshold``
    are the Lagrange multiplier, the mean raw cost it was updated from and the threshold d, None
    unless the variant is PPO-Lagrangian)."""
    lag = variant.lagrangian
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "step": step,
        "reward": mean(ep["reward"]),
        "cost": mean(ep["cost"]) if ep["cost"] is not None else None,
        "lambda": lagrange_multiplier if lag else None,
        "episode_cost": episode_cost if lag else None,
        "cost_threshold": cost_threshold if lag else None,
        "kl_ref": mean(ep["kl_ref"]),
        "kl_ref_per_token": kl_per_token(ep),
        "penalty": masked_mean(exp["penalty"], s.mask).item(),
        "entropy": masked_mean(exp["entropy"], s.mask).item(),
        "response_length": mean(ep["response_length"]),
        "truncated": mean(ep["truncated"]),
        **upd,
        "seconds": seconds,
    }


def lagrangian_extra(state: TrainState, section: PPOSection) -> dict:
    """The record's ``extra.lagrangian``: the threshold d (CM raw scale), whether it was measured on the
    starting policy ("start") or given ("fixed"), on how many prompts and each label's mean cost and
    weight in d (None when fixed), the episode window, lambda at the start and the end, the steps whose
    update raised lambda and the steps whose episode cost exceeded d (the constraint bound)."""
    info = state.threshold_info or {}
    rose, before = [], section.lambda_init
    for r in state.series:
        if r["lambda"] > before:
            rose.append(r["step"])
        before = r["lambda"]
    return {"threshold": state.cost_threshold,
            "threshold_from": "start" if section.cost_threshold == "start" else "fixed",
            "threshold_prompts": info.get("prompts"), "threshold_by_label": info.get("by_label"),
            "cost_window": section.cost_window,
            "lambda_init": section.lambda_init, "lambda_final": state.series[-1]["lambda"] if state.series else None,
            "lambda_rose_steps": rose,
            "bound_steps": [r["step"] for r in state.series
                            if r.get("episode_cost") is not None and r["episode_cost"] > r["cost_threshold"]]}


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
