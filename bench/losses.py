"""Every loss and estimator of the suite, as pure functions on tensors.

Why one module: as in OpenRLHF, each objective lives in one place, with the equation it
implements and the paper it comes from, and each has a closed-form test on hand-made tensors
(``tests/test_losses.py``). Nothing here holds state or runs at import; recipes in
``bench/train/`` compose these functions.

Conventions
-----------
* ``B`` batch, ``T`` response length, ``V`` vocabulary size.
* A *mask* is a float or bool tensor of shape (B, T) with 1 on valid response tokens and 0 on
  prompt / padding. Masked-out positions may hold any value (even NaN or -100 labels): every
  function selects with ``torch.where`` instead of multiplying, so garbage never leaks.
* Per-token quantities are aligned: ``logits[:, t]`` is the distribution that produced
  ``labels[:, t]``. Shifting by one (logits of position t-1 predict token t) is the caller's job.
* Scores (reward / cost) are one scalar per sequence, shape (B,).

The DPO family is left to TRL's ``DPOTrainer`` and is not re-implemented here.

Run the tests with ``python -m pytest tests/test_losses.py -q``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    # helpers
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "sequence_logprobs",
    "entropy_from_logits",
    # score models
    "bradley_terry_loss",
    "cost_sign",
    "cost_model_loss",
    # PPO
    "shape_rewards",
    "gae",
    "ppo_policy_loss",
    "value_loss",
    "update_running_moments",
    "normalize_scores",
    "standardize_with_moments",
    # PPO-Lagrangian
    "lagrangian_advantages",
    "lagrange_update",
    "episode_cost_window",
    "label_weighted_mean",
    # PPO with a cost penalty in the reward
    "hinge_cost_penalty",
    "rule_based_reward",
]

Number = float | int
TensorOrNumber = torch.Tensor | Number


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a float or bool mask (nonzero = valid)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_t x_t * m_t over ``dim`` (all elements when ``dim`` is None).

    Masked positions contribute exactly zero even if ``x`` is NaN or inf there.
    """
    m = _as_bool(mask)  # (B, T)
    picked = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # (B, T)
    return picked.sum() if dim is None else picked.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_t x_t m_t / sum_t m_t over ``dim`` (all elements when ``dim`` is None).

    An empty mask (no valid token, globally or in a row when ``dim`` is given) yields 0, not NaN:
    a fully padded row contributes nothing and has zero gradient.
    """
    m = _as_bool(mask)  # (B, T)
    total = masked_sum(x, m, dim)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return total / count.clamp_min(1).to(total.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (over all of them, one scalar).

    var = sum_t m_t (x_t - mu)^2 / (N - 1) with N = sum_t m_t if ``unbiased`` (Bessel), else / N.
    Same definition as TRL's / OpenRLHF's ``masked_var``. Raises ValueError when the mask is empty,
    or holds a single element with ``unbiased=True`` (the variance is undefined there).
    """
    m = _as_bool(mask)  # (B, T)
    n = int(m.sum().item())
    if n == 0:
        raise ValueError("masked_var: the mask selects no element")
    if unbiased and n == 1:
        raise ValueError("masked_var: unbiased variance of a single element is undefined")
    mu = masked_mean(x, m)  # ()
    sq = masked_sum((x - mu) ** 2, m)  # ()
    return sq / (n - 1 if unbiased else n)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise advantages over the valid tokens of the batch, as TRL and OpenRLHF do.

    x' = (x - mu) / sqrt(var + eps), with mu, var (unbiased) over valid entries; if not
    ``shift_mean`` the mean is added back, x' = (x - mu) / sqrt(var + eps) + mu.
    Masked positions are returned as 0.
    """
    m = _as_bool(mask)  # (B, T)
    mu = masked_mean(x, m)  # ()
    var = masked_var(x, m, unbiased=True)  # ()
    out = (x - mu) * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        out = out + mu
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token log-probabilities of ``labels`` under ``logits``, in float32.

    log p(y_t) = logits_t[y_t] - logsumexp_v logits_t[v]  (= gather of log_softmax, without
    materialising the full (B, T, V) log_softmax). Computed in float32 even for fp16/bf16 logits.
    ``logits`` (B, T, V) must already be aligned with ``labels`` (B, T). Masked positions are 0
    (their labels may be -100 or anything). Sum over T for log pi(y|x).
    """
    m = _as_bool(mask)  # (B, T)
    lg = logits.float()  # (B, T, V)
    safe_labels = torch.where(m, labels, torch.zeros_like(labels))  # (B, T)
    picked = lg.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = picked - torch.logsumexp(lg, dim=-1)  # (B, T)
    return torch.where(m, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


CACHE_ROWS = 8  # rows per slice of a vocabulary-wide pass on a CPU: 8 x 49,152 fp32 logits (1.5 MB) stay in cache


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, rows: int = CACHE_ROWS) -> torch.Tensor:
    """log p(y_n) = logits_n[y_n] - logsumexp_v logits_n[v] for flattened rows, in float32.

    ``logits`` (N, V) are the rows that predict a label (a compact head, e.g. transformers'
    boolean ``logits_to_keep``), ``labels`` (N,). The same value as :func:`sequence_logprobs` at those
    positions; on a CPU the log-sum-exp runs in slices of ``rows`` rows, whose logits stay in its cache
    between its passes (max, subtract, exp, sum) instead of streaming an (N, V) tensor from memory
    four times (the log-sum-exp alone: 3.5-4x on random logits of the scorer's shapes,
    docs/experiments.md#speed-levers-after-compact-head; in the whole scorer most of the saving is the
    compact head, #compact-scorer). How a reduction is split can differ with the tensor's shape, so the
    result may differ from one full-tensor ``logsumexp`` in the last bits (float32 rounding; equal on
    every value checked on the AMX host; nothing trains on it: the scorer).
    """
    lg = logits.float()  # (N, V)
    picked = lg.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (N,)
    lse = torch.empty_like(picked)  # (N,)
    step = rows if lg.device.type == "cpu" else max(1, lg.shape[0])  # a GPU has no such cache: one kernel
    for i in range(0, lg.shape[0], step):
        lse[i:i + step] = torch.logsumexp(lg[i:i + step], dim=-1)
    return picked - lse


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, in float32.

    H_t = -sum_v p_t(v) log p_t(v), p_t = softmax(logits_t); terms with p = 0 (e.g. logits of
    -inf) count as 0. Input (B, T, V), output (B, T).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    p = logp.exp()  # (B, T, V)
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return -plogp.sum(dim=-1)  # (B, T)


# ---------------------------------------------------------------------------------------------
# Score models: reward model and cost model
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: TensorOrNumber | None = None,
) -> torch.Tensor:
    """Pairwise Bradley–Terry reward-model loss.

    L = -E[ log sigma(r(x, y_c) - r(x, y_r) - margin) ]
    (Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
    arXiv:2203.02155, eq. 1; the optional margin as in Llama 2, Touvron et al. 2023, eq. 2).
    ``chosen_scores`` and ``rejected_scores`` are (B,); ``margin`` a float or (B,). Uses
    ``F.logsigmoid`` so large score gaps neither overflow nor lose precision. Returns a scalar.
    """
    diff = chosen_scores - rejected_scores  # (B,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def cost_sign(is_safe: torch.Tensor) -> torch.Tensor:
    """Safety sign s(y) of Safe RLHF: +1 for an unsafe (harmful) response, -1 for a safe one.

    (B,) bool -> (B,) float32. With this sign, log sigma(s * c) pushes unsafe costs above zero and
    safe costs below, so that the cost threshold d = 0 means "safe".
    """
    is_safe = _as_bool(is_safe)
    return torch.where(is_safe, -1.0, 1.0).to(torch.float32)


def cost_model_loss(
    safer_costs: torch.Tensor,
    unsafer_costs: torch.Tensor,
    safer_sign: torch.Tensor,
    unsafer_sign: torch.Tensor,
    sign_weight: float = 1.0,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cost-model loss of Safe RLHF (Dai et al. 2023, arXiv:2310.12773, cost-model objective).

    L = -(1/B) sum_i w_i log sigma(c_u,i - c_s,i)                     (pairwise: unsafer costs more)
        - sign_weight * E[ log sigma(s_u c_u) + log sigma(s_s c_s) ]  (sign: absolute safety)

    where c_s, c_u are the costs of the safer / unsafer response of each pair, (B,), and s the
    signs of ``cost_sign`` (+1 unsafe, -1 safe), (B,). With every pair weight w_i = 1 (the default,
    ``pair_weight`` None) this is safe-rlhf's ``values/cost/trainer.py`` (sequence-wise). A weight 0
    marks a pair with no safety order (two safe answers, ``bench.train.policy_answers``): only its
    sign terms count. The pairwise sum is divided by the batch size B, not by sum w: a mean over
    pairs is what data-parallel ranks average exactly (equal halves of a batch), whatever the
    weights on each rank. Returns (loss, {"pairwise", "sign"}) with both parts as positive scalars and
    loss = pairwise + sign_weight * sign.
    """
    if pair_weight is None:
        pairwise = -F.logsigmoid(unsafer_costs - safer_costs).mean()  # ()
    else:
        w = pair_weight.to(safer_costs.dtype)  # (B,)
        pairwise = -(w * F.logsigmoid(unsafer_costs - safer_costs)).mean()  # ()
    sign = -(
        F.logsigmoid(unsafer_sign * unsafer_costs) + F.logsigmoid(safer_sign * safer_costs)
    ).mean()  # ()
    loss = pairwise + sign_weight * sign
    return loss, {"pairwise": pairwise, "sign": sign}


# ---------------------------------------------------------------------------------------------
# PPO: reward shaping, GAE, clipped losses, reward normalisation (regularisers: bench.ppo_losses)
# ---------------------------------------------------------------------------------------------


def shape_rewards(
    score: torch.Tensor,
    penalty: torch.Tensor,
    mask: torch.Tensor,
    coef: TensorOrNumber,
    clip: float | None = None,
) -> torch.Tensor:
    """Per-token PPO rewards: a KL (or JS) penalty on every token, the score on the last one.

    r_t = -coef * penalty_t * m_t + [t = last valid token] * clip(score, -clip, clip)
    (Ziegler et al. 2019, arXiv:1909.08593, eq. 2; Ouyang et al. 2022, eq. 2.)
    ``score`` (B,), ``penalty`` (B, T) e.g. ``kl_penalty(...)``, ``mask`` (B, T) -> (B, T).

    The "last valid token" is the largest t with m_t = 1 in each row, so right padding and left
    padding both work. A row whose mask is all zero gets no reward at all. A row truncated at the
    length limit without EOS still receives its score at its last token: whether to penalise or
    drop truncated responses is the caller's decision (e.g. replace ``score`` first).
    Call under ``torch.no_grad()`` (rewards are constants for PPO).
    """
    m = _as_bool(mask)  # (B, T)
    B, T = m.shape
    zero = torch.zeros((), dtype=penalty.dtype, device=penalty.device)
    rewards = torch.where(m, -coef * penalty, zero)  # (B, T)
    if clip is not None:
        score = score.clamp(-clip, clip)  # (B,)
    pos = torch.arange(T, device=m.device).expand(B, T)  # (B, T)
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values  # (B,)
    has_token = last >= 0  # (B,)
    bonus = torch.where(has_token, score.to(rewards.dtype), zero)  # (B,)
    bonus_map = torch.zeros_like(rewards).scatter(
        1, last.clamp_min(0).unsqueeze(1), bonus.unsqueeze(1)
    )  # (B, T)
    return rewards + bonus_map


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16).

    Reverse-time recursion, with m the mask and V beyond the last valid token taken as 0:
      delta_t = r_t + gamma * V_{t+1} m_{t+1} - V_t
      A_t     = delta_t + gamma * lambda * m_{t+1} * A_{t+1}   (lambda = ``gae_lambda``)
      R_t     = A_t + V_t                       (the value target)
    ``rewards``, ``values``, ``mask`` (B, T) -> (advantages, returns), both (B, T) and 0 on
    masked positions. A hole in the mask ends the recursion there. Inputs are expected detached
    (outputs are PPO's constant targets); wrap in ``torch.no_grad()`` in the recipe.
    """
    m = _as_bool(mask).to(values.dtype)  # (B, T)
    v = values * m  # (B, T)
    r = rewards * m  # (B, T)
    B, T = r.shape
    next_adv = torch.zeros(B, dtype=v.dtype, device=v.device)  # (B,)
    next_value = torch.zeros(B, dtype=v.dtype, device=v.device)  # (B,)
    next_mask = torch.zeros(B, dtype=v.dtype, device=v.device)  # (B,)
    advs = []
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value * next_mask - v[:, t]  # (B,)
        adv = (delta + gamma * gae_lambda * next_mask * next_adv) * m[:, t]  # (B,)
        advs.append(adv)
        next_adv, next_value, next_mask = adv, v[:, t], m[:, t]
    advantages = torch.stack(advs[::-1], dim=1)  # (B, T)
    returns = (advantages + v) * m  # (B, T)
    return advantages, returns


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), as a loss.

    rho_t = exp(logp_t - old_logp_t)
    L = -E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ]   (masked token mean)
    All inputs (B, T). Stats (detached scalars):
      clip_frac: share of valid tokens where the clipped term is the binding one (as TRL);
      approx_kl: masked mean of k3 = (rho - 1) - log rho, an estimate of KL(pi_old || pi).
    """
    m = _as_bool(mask)  # (B, T)
    log_ratio = logp - old_logp  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    surr1 = ratio * advantages  # (B, T)
    surr2 = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages  # (B, T)
    loss = -masked_mean(torch.minimum(surr1, surr2), m)
    with torch.no_grad():
        clip_frac = masked_mean((surr2 < surr1).to(ratio.dtype), m)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, m)
    return loss, {"clip_frac": clip_frac, "approx_kl": approx_kl}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss of PPO implementations (OpenAI baselines ppo2, TRL, OpenRLHF).

    V_clip = V_old + clip(V - V_old, -eps, eps)
    L = 0.5 * E_t[ max((V - R)^2, (V_clip - R)^2) ]      (masked token mean)
    All inputs (B, T). Stats: vf_clip_frac, share of valid tokens where the clipped term is larger.
    """
    m = _as_bool(mask)  # (B, T)
    v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)  # (B, T)
    l_unclipped = (values - returns) ** 2  # (B, T)
    l_clipped = (v_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(l_unclipped, l_clipped), m)
    with torch.no_grad():
        vf_clip_frac = masked_mean((l_clipped > l_unclipped).to(values.dtype), m)
    return loss, {"vf_clip_frac": vf_clip_frac}


def update_running_moments(
    mean: float, var: float, count: int, x: torch.Tensor
) -> tuple[float, float, int]:
    """Merge the moments of a new batch into running ones (Chan et al. 1979 parallel update).

    State (mean, var, count) with ``var`` the *population* variance (divide by count) of all
    values seen so far; start from (0.0, 0.0, 0). For a batch with n_b, mu_b, var_b (population):
      delta = mu_b - mu,  n' = n + n_b
      mu'   = mu + delta * n_b / n'
      var'  = (n var + n_b var_b + delta^2 n n_b / n') / n'
    Computed in float64; returns plain Python numbers, so the state is JSON-serialisable (for
    checkpoints and run records). The unbiased variance is var * n / (n - 1). All of ``x`` is used
    (flattened); an empty ``x`` returns the state unchanged. Used for reward normalisation as in
    TRL's / OpenRLHF's ``RunningMoments``.
    """
    xb = x.detach().double().flatten()
    n_b = xb.numel()
    if n_b == 0:
        return float(mean), float(var), int(count)
    mu_b = xb.mean().item()
    var_b = xb.var(unbiased=False).item()
    n = int(count)
    tot = n + n_b
    delta = mu_b - float(mean)
    new_mean = float(mean) + delta * n_b / tot
    m2 = float(var) * n + var_b * n_b + delta * delta * n * n_b / tot
    return new_mean, m2 / tot, tot


def normalize_scores(
    x: torch.Tensor, mean: TensorOrNumber, std: TensorOrNumber, clip: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Standardise scores: x' = (x - mean) / (std + eps), then clamp to [-clip, clip] if given."""
    out = (x - mean) / (std + eps)
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


def standardize_with_moments(x: torch.Tensor, moments: tuple[float, float, int]) -> torch.Tensor:
    """Scores standardised with running moments (:func:`update_running_moments`' state
    (mean, population var, count)): (x - mean) / (std + eps) with the unbiased std
    sqrt(var * n / (n - 1)) (1 while n <= 1). PPO standardises the RM score with the moments of every
    raw score so far, and PPO-Lagrangian its CM cost likewise (the cost critic's scale)."""
    mean, var, n = moments
    std = math.sqrt(var * n / (n - 1)) if n > 1 else 1.0
    return normalize_scores(x, mean, std)


# ---------------------------------------------------------------------------------------------
# PPO-Lagrangian (Safe RLHF)
# ---------------------------------------------------------------------------------------------


def lagrangian_advantages(
    adv_reward: torch.Tensor, adv_cost: torch.Tensor, lagrange_multiplier: TensorOrNumber
) -> torch.Tensor:
    """Combined advantage of PPO-Lagrangian (Dai et al. 2023, Safe RLHF, arXiv:2310.12773, §3.3).

    A = (A_r - lambda * A_c) / (1 + lambda)
    The policy maximises J_r - lambda (J_c - d); dividing by 1 + lambda keeps the advantage scale
    bounded as lambda grows (safe-rlhf ``ppo_lag/trainer.py``). lambda = 0 gives A_r, lambda -> inf
    gives -A_c. Shapes (B, T) -> (B, T); ``lagrange_multiplier`` (lambda) a float or 0-dim tensor
    (detached).
    """
    return (adv_reward - lagrange_multiplier * adv_cost) / (1.0 + lagrange_multiplier)


def lagrange_update(
    log_lambda: TensorOrNumber,
    mean_episode_cost: TensorOrNumber,
    threshold: float,
    lr: float,
    lambda_max: float | None = None,
) -> TensorOrNumber:
    """One dual-ascent step on the Lagrange multiplier, parameterised as log lambda.

    Safe RLHF (Dai et al. 2023, eqs. 11-13) solves min_theta max_{lambda>=0}
    -J_r(theta) + lambda (J_c(theta) - d). With lambda = exp(log_lambda) (which keeps lambda > 0),
    safe-rlhf (``safe_rlhf/algorithms/ppo_lag/trainer.py``, ``PPOLagTrainer.rl_step``) minimises
    loss(log_lambda) = -(J_c - d) * exp(log_lambda) with ``torch.optim.SGD`` (lr ``lambda_lr``, no
    momentum), then clamps log_lambda to log(lambda_max). This is that SGD step in closed form:
      d loss / d log_lambda = -lambda (J_c - d)
      log_lambda <- log_lambda + lr * lambda * (J_c - d)
    so lambda grows while the mean episode cost J_c exceeds the threshold d and shrinks below it; the
    step scales with lambda itself (multiplicative growth/decay of lambda). J_c is the mean raw cost
    of the recent episodes (:func:`episode_cost_window`). If ``lambda_max`` is given, the result is
    clamped to log(lambda_max).

    Accepts floats or 0-dim tensors: returns a Python float when ``log_lambda`` is a number,
    else a new detached tensor of its dtype and device.
    """
    if isinstance(log_lambda, torch.Tensor):
        with torch.no_grad():
            multiplier = log_lambda.detach().exp()
            gap = torch.as_tensor(
                mean_episode_cost, dtype=log_lambda.dtype, device=log_lambda.device
            ) - threshold
            new = log_lambda.detach() + lr * multiplier * gap
            if lambda_max is not None:
                new = new.clamp(max=math.log(lambda_max))
            return new
    gap = float(mean_episode_cost) - threshold
    new = float(log_lambda) + lr * math.exp(log_lambda) * gap
    if lambda_max is not None:
        new = min(new, math.log(lambda_max))
    return new


def episode_cost_window(window: Sequence[float], costs: Sequence[float], size: int) -> tuple[list[float], float]:
    """The episode-cost window of PPO-Lagrangian and its mean J_c (what :func:`lagrange_update` reads).

    safe-rlhf keeps ``deque(maxlen=episode_cost_window_size)``, extends it with every rollout's raw CM
    cost and updates lambda from its mean. Here: ``window`` (the costs kept so far, oldest first)
    extended by this step's ``costs`` and cut to the newest ``size``; ``size == 0`` keeps this step's
    costs only (J_c = the batch mean). Returns (the new window, its mean); plain floats, JSON-ready
    (the window lives in the checkpointed train state).
      J_c = (1 / |W|) sum_{c in W} c,   W = last_size(window ++ costs)
    """
    kept = list(costs) if size == 0 else (list(window) + list(costs))[-size:]
    if not kept:
        raise ValueError("episode_cost_window: no episode costs")
    return [float(c) for c in kept], math.fsum(kept) / len(kept)


def label_weighted_mean(values: Sequence[float], labels: Sequence[str | None],
                        weights: dict[str, float] | None = None) -> tuple[float, dict]:
    """Post-stratified mean: the mean of each label's values, weighted by ``weights`` (a label's share
    of the population the mean should describe):
      m = sum_l w_l mean_{i: label_i = l} v_i / sum_l w_l    (l over the labels present in ``labels``)
    ``weights`` None, or none of the present labels weighted: the plain mean of all values. Returns
    (m, {label: {"mean", "n", "weight"}}) with the weights normalised over the present labels.
    PPO-Lagrangian's ``cost_threshold: start`` measures the starting policy's cost on validation prompts
    drawn evenly across labels and weights it to the training stream's label mix, so d is the starting
    policy's expected cost on the prompts PPO trains on (the unsafe share differs by label)."""
    if len(values) != len(labels) or not values:
        raise ValueError(f"label_weighted_mean: {len(values)} values for {len(labels)} labels")
    groups: dict = {}
    for v, lab in zip(values, labels):
        groups.setdefault(lab, []).append(float(v))
    w = {lab: float((weights or {}).get(lab, 0.0)) for lab in groups}
    total = math.fsum(w.values())
    if total <= 0:  # unweighted: every value counts once
        w, total = {lab: len(g) / len(values) for lab, g in groups.items()}, 1.0
    out = {lab: {"mean": math.fsum(g) / len(g), "n": len(g), "weight": w[lab] / total} for lab, g in groups.items()}
    return math.fsum(o["mean"] * o["weight"] for o in out.values()), out


def hinge_cost_penalty(score: torch.Tensor, cost: torch.Tensor, coef: float) -> torch.Tensor:
    """Reward shaped by the cost model, penalising only responses it judges unsafe.

        s'_i = s_i - coef * max(0, c_i)

    s: (B,) PPO scores (the normalised RM score); c: (B,) raw CM costs, whose sign head was trained so
    that c > 0 means unsafe (``cost_sign``; the cost threshold d = 0 means "safe"). Returns (B,).

    Why a hinge rather than Safe RLHF's s - lambda c: the CM ranks *every* refusal as the least costly
    answer, benign prompts included, so a raw cost term rewards refusing everywhere (measured: PPO-
    Lagrangian with a binding threshold raised over-refusal on benign validation prompts from 0.38 to
    0.50 in 8 steps). Clipped at the CM's own safe/unsafe boundary, the cost adds nothing on safe
    answers, so on benign prompts the RM alone decides (helpful beats refusing), while an unsafe
    completion of a harmful request loses ``coef`` per unit of cost. ``coef`` is fixed (reward
    shaping, the fixed-lambda baseline of Safe RLHF), not a learned multiplier.
    """
    if coef < 0:
        raise ValueError(f"hinge_cost_penalty: coef must be >= 0, got {coef}")
    return score - coef * cost.clamp(min=0)


def rule_based_reward(is_refusal: torch.Tensor, should_refuse: torch.Tensor) -> torch.Tensor:
    """Rule-based reward on behaviour (in the spirit of Mu et al. 2024, "Rule Based Rewards for
    Language Model Safety", with a refusal detector as the grader):

        r_i = +1  if refused_i == should_refuse_i
        r_i = -1  otherwise

    is_refusal: (B,) bool, the detector's verdict on the sampled response (refuse or partial);
    should_refuse: (B,) bool, from the prompt's label (harmful / unsafe-contrast: refuse; benign /
    borderline: help). Returns (B,) float32. Added to the RM score with a coefficient, it supplies the
    harm-conditioned signal that neither score model gives on the policy's own text (measured on the
    default profile: the RM rewards compliance on harmful prompts, and the CM costs the policy's
    compliance and its refusals alike, -4.59 vs -4.96).
    """
    if is_refusal.shape != should_refuse.shape:
        raise ValueError(f"rule_based_reward: shapes differ, {tuple(is_refusal.shape)} vs {tuple(should_refuse.shape)}")
    agree = is_refusal.bool() == should_refuse.bool()
    return torch.where(agree, 1.0, -1.0).to(torch.float32)


def group_relative_advantages(score: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage of each sampled response (GRPO, Shao et al. 2024, arXiv:2402.03300,
    sec. 4.1.2; the leave-in mean of RLOO, Ahmadian et al. 2024, arXiv:2402.14740):

        A_i = (s_i - mean_g(s)) / (std_g(s) + eps)

    over the ``group_size`` responses sampled for the same prompt (consecutive rows of ``score``, (B,)
    with B a multiple of ``group_size``; std is the population std). A group whose responses all score
    the same (std <= eps, so rounding in the mean cannot make a signal) gets exactly A = 0: no push. That is what makes the signal *conditional*: a prompt moves
    the policy only where its own samples differ, towards the better ones for that prompt, whereas a
    batch-wide baseline lets the prompts that dominate the batch push one behaviour everywhere.
    Returns (B,) float32.
    """
    if group_size < 1 or score.dim() != 1 or score.numel() % group_size:
        raise ValueError(f"group_relative_advantages: {tuple(score.shape)} scores do not split into groups of {group_size}")
    s = score.float().view(-1, group_size)  # (G, g)
    mean = s.mean(dim=1, keepdim=True)  # (G, 1)
    std = s.std(dim=1, unbiased=False, keepdim=True)  # (G, 1)
    adv = torch.where(std > eps, (s - mean) / (std + eps), torch.zeros_like(s))  # (G, g)
    return adv.reshape(-1)
