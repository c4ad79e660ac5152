"""The PPO regularisers and the missing-end-of-turn penalty, as pure functions on tensors.

Beside ``bench.losses`` (same conventions: ``B`` batch, ``T`` response length, ``V`` vocabulary, masks
(B, T) with 1 on response tokens) and split from it to keep each module readable. Each function has
its equation, its source and a closed-form test in ``tests/test_ppo_losses.py``
(``python -m pytest tests/test_ppo_losses.py -q``). Used by ``bench/train/rollout.py`` (the per-token
penalty of each PPO variant, ``PENALTIES``) and ``bench/train/ppo.py`` (the score of a response).

- :func:`kl_penalty`: Schulman's k1 / k2 / k3 estimates of KL(pi || ref) from the sampled token.
- :func:`js_sampled_token`: Sun et al.'s (2023) clamped sampled-token Jensen-Shannon term
  (``regulariser: js``), first order in the log-ratio, with the KL coefficient.
- :func:`js_divergence_per_token`: the exact full-vocabulary JS (``regulariser: js_exact``), second
  order in the log-ratio (about KL/4 near identity), with its own coefficient ``js_coef``.
- :func:`missing_eos_penalty`: a constant taken off the score of responses without end of turn
  (TRL's ``missing_eos_penalty``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "KL_ESTIMATORS",
    "kl_penalty",
    "js_sampled_token",
    "js_divergence_per_token",
    "missing_eos_penalty",
]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a float or bool mask (nonzero = valid)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def _kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


#: Schulman's per-sample estimators of KL(pi || pi_ref) for tokens sampled from pi.
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of the sampled tokens.

    With log r = ref_logp - logp (J. Schulman, "Approximating KL divergence", 2020,
    http://joschu.net/blog/kl-approx.html):
      k1 = -log r = logp - ref_logp           unbiased, can be negative
      k2 = 0.5 * (log r)^2                    biased, low variance, >= 0
      k3 = (r - 1) - log r                    unbiased, >= 0
    Shapes (B, T) -> (B, T). Unknown ``kind`` raises ValueError listing the known ones.
    """
    try:
        estimator = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}"
        ) from None
    return estimator(logp, ref_logp)


def js_divergence_per_token(
    logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Full-distribution Jensen–Shannon divergence between policy and reference, per position.

    JS(p, q) = 0.5 KL(p || m) + 0.5 KL(q || m),  m = (p + q) / 2,
    with p = softmax(logits_t), q = softmax(ref_logits_t), log m = logaddexp(log p, log q) - ln 2.
    Symmetric, 0 iff p = q, bounded by ln 2. Computed in float32 in log space; terms with p = 0
    count as 0 (and have finite gradients). Near identity it is second order: with p = q + d,
    JS = (1/8) sum_v d_v^2 / q_v + O(d^3), a quarter of KL(p || q) = (1/2) sum_v d_v^2 / q_v + O(d^3).
    This is *not* the quantity Sun et al. 2023 penalise (that is :func:`js_sampled_token`); it is
    the ``js_exact`` regulariser, with its own coefficient (``ppo.js_coef``).
    ``logits``, ``ref_logits`` (B, T, V) -> (B, T); positions with mask 0 are 0.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)  # (B, T, V)
    logm = torch.logaddexp(logp, logq) - math.log(2.0)  # (B, T, V)
    p, q = logp.exp(), logq.exp()  # (B, T, V)
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    # Replace log-values where the weight is 0 so that 0 * (-inf) never occurs, even in backward.
    kl_pm = (p * (torch.where(p > 0, logp, zero) - torch.where(p > 0, logm, zero))).sum(-1)
    kl_qm = (q * (torch.where(q > 0, logq, zero) - torch.where(q > 0, logm, zero))).sum(-1)
    js = (0.5 * (kl_pm + kl_qm)).clamp(min=0.0, max=math.log(2.0))  # (B, T)
    if mask is not None:
        js = torch.where(_as_bool(mask), js, zero)
    return js


def js_sampled_token(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Sun et al.'s per-token Jensen-Shannon term, from the sampled token's log-probs only.

    With p = pi(y_t), q = ref(y_t) the probabilities of the *sampled* token and m = (p + q) / 2:

        js_t = 1/2 * [ max(0, log p - log m) + max(0, log q - log m) ]

    Source: S. Sun, D. Gupta, M. Iyyer, "Exploring the impact of low-rank adaptation on the
    performance, efficiency, and regularization of RLHF" (2023, arXiv:2309.09055); their code
    (github.com/SimengSun/alpaca_farm_lora, ``alpaca_farm/rl/ppo_trainer.py``, ``_shape_reward``,
    ``kl_term_variant == "jensen_shannon"``) computes exactly this and subtracts ``kl_coef`` x it
    per token, the same coefficient (and controller) as their KL variants; ``regulariser: js``
    therefore uses ``ppo.kl_coef``.

    Only one of the two clamped terms is non-zero (m lies between p and q), so with the log-ratio
    r = log p - log q the term depends on |r| alone (symmetric in pi and ref):

        js_t = 1/2 * log(2 / (1 + exp(-|r|))) = 1/2 * (ln 2 - softplus(-|r|))
             = |r|/4 - r^2/16 + r^4/384 + O(r^6)       (near r = 0: first order, about |r|/4)

    It is 0 iff p = q, increasing in |r|, bounded by ln(2)/2. It is not an unbiased estimate of the
    divergence JS(pi, ref) (which is second order in r): it is a clamped, symmetrised sampled-token
    quantity. Computed in float32 in the stable softplus form. (B, T), (B, T) -> (B, T).
    """
    r = logp.float() - ref_logp.float()  # (B, T)
    return 0.5 * (math.log(2.0) - F.softplus(-r.abs()))


def missing_eos_penalty(score: torch.Tensor, truncated: torch.Tensor, penalty: float) -> torch.Tensor:
    """score - penalty on every response without an end-of-turn token (``truncated``, (B,) bool).

    As TRL's ``missing_eos_penalty`` (PPO/RLOO/Online-DPO configs): a response cut at
    ``max_new_tokens`` is unfinished text, and scoring it as if complete lets the policy learn that
    not stopping is free. (B,), (B,) -> (B,); ``penalty`` 0 returns ``score`` unchanged.
    """
    if penalty == 0:
        return score
    return score - penalty * truncated.to(score.dtype)
