"""PPO's advantages and value targets, as one pure function of tensors and plain numbers.

:func:`ppo_advantages` is the composition the recipe applies to each rollout batch, between the
scores and the policy update (each piece is a closed-form-tested function of ``bench.losses``):

1. reward stream: the score on each response's last token and ``-coef x penalty`` on every token
   (``shape_rewards``, score clipped to ``reward_clip``), GAE with ``gamma`` and ``gae_lambda``
   against the reward critic (values column 0): advantages and the critic's returns;
2. the policy's advantage is then either the GAE advantage *whitened* over the batch's valid tokens
   (``group_size == 1``), or, with ``group_size`` g > 1 (GRPO / RLOO), each response's score relative
   to its prompt's group (``group_relative_advantages``; 0 for a group that scored alike) on its last
   token plus the regulariser's penalty-to-go (the undiscounted reward-to-go of the
   ``-coef x penalty`` tokens); the value-head GAE still supplies the critic's returns;
3. PPO-Lagrangian (``cost`` given): a second stream on the CM cost *on the cost critic's scale*
   with the penalty at ``+coef`` (so that the combined advantage carries the penalty at strength
   ``coef`` whatever the multiplier, as in safe-rlhf), clipped to ``reward_clip`` like the score,
   GAE against the cost critic (values column 1), whitened, and the policy's advantage becomes
   (A_r - lambda A_c) / (1 + lambda) with lambda the ``lagrange_multiplier`` (the one combination
   rule, ``losses.lagrangian_advantages``). The recipe passes the cost standardised exactly as it
   passes the score: c' = (c - mean) / std with the running moments (mean, unbiased std) of every raw
   CM cost so far over all ranks, this batch included (``bench.train.ppo.cost_score``,
   ``losses.standardize_with_moments``; raw when ``normalize_rewards`` is off). Why: the CM puts
   safe answers near -6 and unsafe near +5; a raw cost near -5 on the last token is a level the
   zero-initialised cost critic never fits in a short run, and after whitening the cost advantage
   then tracks the token position instead of the cost. lambda itself is updated from the *raw* cost
   against the threshold d on the CM's scale (``bench.train.ppo.update_lagrange_multiplier``), never
   from what this stream sees.

Why one pure function: the composition (which stream is whitened, where the penalty enters with
which sign, which GAE feeds the critic) is where a PPO implementation silently goes wrong; here it
is testable on hand-made tensors (``tests/test_ppo.py::test_ppo_advantages_*``,
``python -m pytest tests/test_ppo.py -q -k advantages``) without a model or a config.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from bench.losses import gae, group_relative_advantages, lagrangian_advantages, masked_whiten, shape_rewards


class Advantages(NamedTuple):
    advantages: torch.Tensor  # (B, T) what the clipped policy loss sees
    returns: torch.Tensor  # (B, T, K) value targets: K = 1 (reward critic) or 2 (reward, cost critics)
    group_advantages: torch.Tensor | None  # (B,) group-relative score advantages (group_size > 1), else None


# Sums a tensor over the ranks of a step (an all-reduce); None in one process.
SumOverRanks = Callable[[torch.Tensor], torch.Tensor] | None


def whiten(adv: torch.Tensor, mask: torch.Tensor, sum_over_ranks: SumOverRanks = None, eps: float = 1e-8) -> torch.Tensor:
    """Whitened advantages over the step's valid tokens; a step with fewer than two valid tokens has no
    variance and is left as is.

    In one process this is ``masked_whiten`` over the batch. When the step's rollouts are split over
    ranks, ``sum_over_ranks`` (an all-reduce sum) makes the mean and the unbiased variance those of the
    whole step, so every rank whitens with the statistics one process would use:
    mu = sum_r sum_t m x / N, var = sum_r sum_t m (x - mu)^2 / (N - 1), N = sum_r sum_t m."""
    if sum_over_ranks is None:
        return masked_whiten(adv, mask) if mask.sum() >= 2 else adv
    m = mask.bool()  # (B, T)
    x = adv.to(torch.float64)
    n = sum_over_ranks(m.sum().to(torch.float64))  # ()
    if n < 2:
        return adv
    mu = sum_over_ranks(torch.where(m, x, 0.0).sum()) / n
    var = sum_over_ranks(torch.where(m, (x - mu) ** 2, 0.0).sum()) / (n - 1)
    out = ((x - mu) * torch.rsqrt(var + eps)).to(adv.dtype)  # (B, T)
    return torch.where(m, out, torch.zeros((), dtype=adv.dtype, device=adv.device))


def ppo_advantages(score: torch.Tensor, penalty: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *,
                   coef: float, gamma: float, gae_lambda: float, reward_clip: float | None = None,
                   group_size: int = 1, cost: torch.Tensor | None = None,
                   lagrange_multiplier: float = 0.0, sum_over_ranks: SumOverRanks = None) -> Advantages:
    """Advantages and returns of one rollout batch (see the module docstring for the composition).

    ``score`` (B,) the PPO score of each response; ``penalty`` (B, T) the per-token regulariser (KL,
    JS or 0); ``values`` (B, T, K) the critics' old values; ``mask`` (B, T) valid response tokens;
    ``coef`` the regulariser's coefficient; ``gamma`` / ``gae_lambda`` GAE's discount and lambda;
    ``group_size`` consecutive rows sampled from one prompt; ``cost`` (B,) the CM cost on the cost
    critic's scale (standardised like ``score``; see the module docstring) for PPO-Lagrangian's second
    stream (None: one stream) and ``lagrange_multiplier`` its lambda >= 0;
    ``sum_over_ranks`` when the step's rollouts are split over ranks (see :func:`whiten`).
    """
    rewards = shape_rewards(score, penalty, mask, coef, clip=reward_clip)  # (B, T)
    adv, ret_r = gae(rewards, values[..., 0], mask, gamma, gae_lambda)
    group_adv = None
    if group_size == 1:
        adv = whiten(adv, mask, sum_over_ranks)
    else:  # GRPO-style: the score relative to the prompt's group, plus the penalty-to-go
        group_adv = group_relative_advantages(score, group_size).to(score.device)  # (B,); 0 for a flat group
        shaped = shape_rewards(group_adv, penalty, mask, coef, clip=None)
        adv, _ = gae(shaped, torch.zeros_like(shaped), mask, 1.0, 1.0)  # (B, T) reward-to-go
    returns = [ret_r]
    if cost is not None:  # PPO-Lagrangian: the cost stream, the penalty with the opposite sign
        costs = shape_rewards(cost, penalty, mask, -coef, clip=reward_clip)
        adv_c, ret_c = gae(costs, values[..., 1], mask, gamma, gae_lambda)
        adv = lagrangian_advantages(adv, whiten(adv_c, mask, sum_over_ranks), lagrange_multiplier)  # (B, T)
        returns.append(ret_c)
    return Advantages(adv, torch.stack(returns, dim=-1), group_adv)  # returns (B, T, K)
