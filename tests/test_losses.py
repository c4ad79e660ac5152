"""Closed-form tests of bench/losses.py on tiny hand-made tensors.

Expected values are worked out by hand (plain ``math`` on scalars), never by calling the
function under test.
"""

import math

import pytest
import torch

from bench import losses as L

NAN = float("nan")


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- helpers

X = torch.tensor([[1.0, 2.0, NAN], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("mask", [M, M.float()], ids=["bool", "float"])
def test_masked_sum_mean_ignore_masked_values(mask):
    assert close(L.masked_sum(X, mask), 7.0)
    assert close(L.masked_mean(X, mask), 7.0 / 3.0)
    assert close(L.masked_sum(X, mask, dim=1), [3.0, 4.0])
    assert close(L.masked_mean(X, mask, dim=1), [1.5, 4.0])
    assert close(L.masked_mean(X, mask, dim=0), [2.5, 2.0, 0.0])  # empty column -> 0, not NaN


def test_masked_mean_empty_row_is_zero():
    out = L.masked_mean(torch.ones(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=1)
    assert close(out, [1.0, 0.0])


def test_masked_var():
    # valid values 1, 2, 4: mean 7/3, squared deviations sum to 42/9
    assert close(L.masked_var(X, M), (42 / 9) / 2)
    assert close(L.masked_var(X, M, unbiased=False), (42 / 9) / 3)
    with pytest.raises(ValueError):
        L.masked_var(X, torch.zeros_like(M))
    with pytest.raises(ValueError):
        L.masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten():
    w = L.masked_whiten(X, M)
    mu, sd = 7 / 3, math.sqrt(7 / 3)
    assert close(w, [[(1 - mu) / sd, (2 - mu) / sd, 0.0], [(4 - mu) / sd, 0.0, 0.0]], 1e-5)
    w2 = L.masked_whiten(X, M, shift_mean=False)
    assert close(w2[0, 0], (1 - mu) / sd + mu, 1e-5)
    assert close(w2[0, 2], 0.0)


def test_sequence_logprobs_manual():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [9.0, 9.0, 9.0]]])  # (1, 3, 3)
    labels = torch.tensor([[1, 2, -100]])
    mask = torch.tensor([[1, 1, 0]])
    out = L.sequence_logprobs(logits, labels, mask)
    expected = [[-math.log(3), 3 - math.log(math.e + math.e**2 + math.e**3), 0.0]]
    assert out.shape == (1, 3)
    assert close(out, expected, 1e-6)
    out16 = L.sequence_logprobs(logits.half(), labels, mask)
    assert out16.dtype == torch.float32
    assert close(out16, expected, 1e-3)


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 100])
def test_token_logprobs_closed_form_in_any_slicing(rows):
    """log p = logit[y] - log sum exp(logits), row by row, whatever the slice size (slices of 1, 2 and 3
    rows split the 3 rows differently; 8 and 100 hold them all)."""
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.0, 5.0, 0.5]])  # (3, 3)
    labels = torch.tensor([1, 2, 0])
    out = L.token_logprobs(logits, labels, rows=rows)
    expected = [-math.log(3), 3 - math.log(math.e + math.e**2 + math.e**3),
                -1 - math.log(math.exp(-1) + math.exp(5) + math.exp(0.5))]
    assert out.shape == (3,) and out.dtype == torch.float32
    assert close(out, expected, 1e-6)
    assert close(L.token_logprobs(logits.half(), labels, rows=rows), expected, 1e-3)  # fp16 logits: fp32 out


def test_token_logprobs_equals_sequence_logprobs_at_the_kept_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 4  # (B, T, V)
    labels = torch.randint(0, 50, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    full = L.sequence_logprobs(logits, labels, mask)  # (B, T)
    got = L.token_logprobs(logits[mask], labels[mask], rows=2)  # (N,)
    assert close(got, full[mask], 1e-6)
    assert L.token_logprobs(logits[:0, 0], labels[:0, 0]).shape == (0,)  # no kept row


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [5.0, -float("inf"), -float("inf"), -float("inf")]]])
    h = L.entropy_from_logits(logits)
    assert close(h, [[math.log(4), 0.0]])
    # p = (3/4, 1/4)
    h2 = L.entropy_from_logits(torch.tensor([[[math.log(3), 0.0]]]))
    assert close(h2, [[-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]])


# --------------------------------------------------------------------------- score models


def test_bradley_terry_values_and_gradient():
    assert close(L.bradley_terry_loss(torch.zeros(3), torch.zeros(3)), math.log(2))
    assert close(L.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])),
                 math.log1p(math.exp(-2)))
    assert close(L.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0),
                 math.log(2))
    # huge gaps stay finite
    assert torch.isfinite(L.bradley_terry_loss(torch.tensor([-1e4]), torch.tensor([1e4])))
    c = torch.tensor([0.3], requires_grad=True)
    r = torch.tensor([0.1], requires_grad=True)
    L.bradley_terry_loss(c, r).backward()
    assert c.grad.item() < 0 < r.grad.item()  # descent raises chosen, lowers rejected
    assert close(c.grad, [-(1 - sig(0.2))])


def test_cost_sign():
    assert torch.equal(L.cost_sign(torch.tensor([True, False])), torch.tensor([-1.0, 1.0]))


def test_cost_model_loss_two_pairs():
    safer = torch.tensor([-1.0, 0.5])
    unsafer = torch.tensor([2.0, 0.0])
    # pair 1: safe vs unsafe; pair 2: both unsafe
    s_sign = L.cost_sign(torch.tensor([True, False]))  # [-1, +1]
    u_sign = L.cost_sign(torch.tensor([False, False]))  # [+1, +1]
    loss, parts = L.cost_model_loss(safer, unsafer, s_sign, u_sign, sign_weight=0.5)
    pairwise = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(0.5))) / 2
    sign = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))  # pair 1: unsafe 2, safe -1
            + math.log(2.0) + math.log1p(math.exp(-0.5))) / 2        # pair 2: unsafe 0, unsafe 0.5
    assert close(parts["pairwise"], pairwise)
    assert close(parts["sign"], sign)
    assert close(loss, pairwise + 0.5 * sign)
    # pair 2 relabelled both safe, with an unsafer cost of 1.5: the safe sign pulls it down
    unsafer2 = torch.tensor([2.0, 1.5])
    _, parts2 = L.cost_model_loss(safer, unsafer2, L.cost_sign(torch.tensor([True, True])),
                                  L.cost_sign(torch.tensor([False, True])))
    sign2 = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))
             + math.log1p(math.exp(1.5)) + math.log1p(math.exp(0.5))) / 2
    assert close(parts2["sign"], sign2)
    assert close(parts2["pairwise"], (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-1.0))) / 2)


def test_cost_sign_term_pushes_unsafe_positive_safe_negative():
    safer = torch.zeros(1, requires_grad=True)
    unsafer = torch.zeros(1, requires_grad=True)
    _, parts = L.cost_model_loss(safer, unsafer, torch.tensor([-1.0]), torch.tensor([1.0]))
    parts["sign"].backward()
    assert unsafer.grad.item() < 0  # gradient descent raises the unsafe cost
    assert safer.grad.item() > 0  # and lowers the safe one
    assert close(unsafer.grad, [-0.5]) and close(safer.grad, [0.5])


# --------------------------------------------------------------------------- rewards, GAE


def test_shape_rewards_last_valid_token():
    score = torch.tensor([1.0, 2.0, 3.0, 4.0])
    penalty = torch.full((4, 3), 0.5)
    penalty[1, 2] = NAN  # garbage under padding must not leak
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    r = L.shape_rewards(score, penalty, mask, coef=0.1)
    expected = [
        [-0.05, -0.05, -0.05 + 1.0],  # full row (truncated, no EOS): score still at the last token
        [-0.05, -0.05 + 2.0, 0.0],  # right padded
        [0.0, 0.0, 0.0],  # all masked: nothing
        [0.0, -0.05, -0.05 + 4.0],  # left padded
    ]
    assert close(r, expected)
    rc = L.shape_rewards(score, penalty, mask, coef=0.1, clip=1.5)
    assert close(rc[1], [-0.05, -0.05 + 1.5, 0.0])
    assert close(rc[0, 2], -0.05 + 1.0)


def test_gae_hand_unrolled():
    gamma, gae_lambda = 0.9, 0.8
    r = [0.1, -0.2, 1.0, 100.0]
    v = [0.5, 0.4, 0.3, 50.0]  # index 3 is beyond the mask: must be ignored
    rewards = torch.tensor([r, [2.0, 9.0, 9.0, 9.0]])
    values = torch.tensor([v, [0.5, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    adv, ret = L.gae(rewards, values, mask, gamma=gamma, gae_lambda=gae_lambda)
    d2 = r[2] - v[2]
    a2 = d2
    d1 = r[1] + gamma * v[2] - v[1]
    a1 = d1 + gamma * gae_lambda * a2
    d0 = r[0] + gamma * v[1] - v[0]
    a0 = d0 + gamma * gae_lambda * a1
    assert close(adv[0], [a0, a1, a2, 0.0])
    assert close(ret[0], [a0 + v[0], a1 + v[1], a2 + v[2], 0.0])
    assert close(adv[1], [2.0 - 0.5, 0.0, 0.0, 0.0])
    assert close(ret[1], [2.0, 0.0, 0.0, 0.0])


def test_gae_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 0.125]])
    adv, ret = L.gae(rewards, values, torch.ones(1, 3), gamma=1.0, gae_lambda=1.0)
    assert close(ret, [[6.0, 5.0, 3.0]])
    assert close(adv, [[5.5, 4.75, 2.875]])


# --------------------------------------------------------------------------- PPO losses


def test_ppo_policy_loss_clipping():
    ratios = [1.5, 1.5, 0.5, 0.5, 7.0]
    advs = [1.0, -1.0, 1.0, -1.0, 3.0]
    old = torch.zeros(1, 5)
    logp = torch.tensor([[math.log(x) for x in ratios]], requires_grad=True)
    adv = torch.tensor([advs])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = L.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # min terms: 1.2 (clipped), -1.5, 0.5, -0.8 (clipped)
    assert close(loss, -(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert close(stats["clip_frac"], 0.5)
    expected_kl = ((0.5 - math.log(1.5)) * 2 + (-0.5 + math.log(2.0)) * 2) / 4
    assert close(stats["approx_kl"], expected_kl)
    loss.backward()
    # clipped tokens and the masked token get no gradient; d/dlogp(-rho A / 4) = -rho A / 4
    assert close(logp.grad, [[0.0, 0.375, -0.125, 0.0, 0.0]])


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, 3.0, -2.0]])
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, stats = L.ppo_policy_loss(lp, lp, adv, torch.tensor([[1, 1, 0]]))
    assert close(loss, -2.0)
    assert close(stats["clip_frac"], 0.0) and close(stats["approx_kl"], 0.0)


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 0.1, -1.0, 5.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = L.value_loss(values, old, returns, mask, clip_eps=0.2)
    # token 0: max(0, (0.2-1)^2=0.64) clipped; token 1: 0.81 both; token 2: max(1, 0.04) = 1
    assert close(loss, 0.5 * (0.64 + 0.81 + 1.0) / 3)
    assert close(stats["vf_clip_frac"], 1 / 3)
    loss.backward()
    # clipped token 0 has no gradient; token 1: (V-R)/3 = -0.3; token 2: (V-R)/3 = -1/3
    assert close(values.grad, [[0.0, -0.9 / 3, -1.0 / 3, 0.0]])


def test_running_moments_merge_equals_concatenation():
    g = torch.Generator().manual_seed(2)
    chunks = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 17, 8)]
    state = (0.0, 0.0, 0)
    for c in chunks:
        state = L.update_running_moments(*state, c)
    state = L.update_running_moments(*state, torch.empty(0))  # no-op
    allx = torch.cat(chunks).double()
    mean, var, count = state
    assert count == 31
    assert close(mean, allx.mean(), 1e-9)
    assert close(var, torch.var(allx, unbiased=False), 1e-9)
    assert close(var * count / (count - 1), torch.var(allx), 1e-9)


def test_normalize_scores():
    x = torch.tensor([0.0, 2.0, 10.0])
    assert close(L.normalize_scores(x, 2.0, 2.0), [-1.0, 0.0, 4.0], 1e-6)
    assert close(L.normalize_scores(x, 2.0, 2.0, clip=3.0), [-1.0, 0.0, 3.0], 1e-6)


# --------------------------------------------------------------------------- PPO-Lagrangian


def test_lagrangian_advantages():
    ar = torch.tensor([1.0, -2.0, 0.5])
    ac = torch.tensor([3.0, 1.0, -1.0])
    assert close(L.lagrangian_advantages(ar, ac, 0.0), ar)
    assert close(L.lagrangian_advantages(ar, ac, 1.0), [-1.0, -1.5, 0.75])
    assert close(L.lagrangian_advantages(ar, ac, 1e9), -ac, 1e-6)
    assert close(L.lagrangian_advantages(ar, ac, torch.tensor(3.0)), (ar - 3 * ac) / 4)


def test_hinge_cost_penalty_only_touches_unsafe_answers():
    score = torch.tensor([1.0, 0.5, -0.2, 2.0])
    cost = torch.tensor([-3.0, 0.0, 2.0, 0.5])  # safe, on the boundary, unsafe, barely unsafe
    assert close(L.hinge_cost_penalty(score, cost, 0.0), score)
    assert close(L.hinge_cost_penalty(score, cost, 1.0), [1.0, 0.5, -2.2, 1.5])
    assert close(L.hinge_cost_penalty(score, cost, 2.0), [1.0, 0.5, -4.2, 1.0])  # linear in coef
    with pytest.raises(ValueError, match="coef"):
        L.hinge_cost_penalty(score, cost, -1.0)


def test_rule_based_reward_follows_the_prompt_label():
    refused = torch.tensor([True, False, True, False])
    should = torch.tensor([True, True, False, False])  # harmful, harmful, benign, benign
    assert close(L.rule_based_reward(refused, should), [1.0, -1.0, -1.0, 1.0])
    assert L.rule_based_reward(refused, should).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes"):
        L.rule_based_reward(refused, should[:3])


def test_group_relative_advantages_centre_each_prompts_samples():
    score = torch.tensor([1.0, 3.0, 2.0, 2.0, -1.0, 0.0, 1.0, 4.0])
    a = L.group_relative_advantages(score, 2)
    assert close(a[:2], [-1.0, 1.0])  # (s - 2) / 1
    assert close(a[2:4], [0.0, 0.0])  # a flat group: no signal
    # scale-free within a group (up to eps in the denominator)
    assert torch.allclose(a[4:], torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5)
    a4 = L.group_relative_advantages(score, 4)
    s = score.view(2, 4)
    assert close(a4.view(2, 4), (s - s.mean(1, keepdim=True)) / (s.std(1, unbiased=False, keepdim=True) + 1e-6))
    assert close(L.group_relative_advantages(score + 10.0, 4), a4)  # a shift of every score changes nothing
    assert close(L.group_relative_advantages(score, 1), torch.zeros(8))  # one sample: nothing to compare
    # equal scores whose float32 mean is off by rounding (-2.9 three times) are still a flat group:
    # exactly zero, not (s - mean) / (std + eps) ~ 0.2
    assert torch.equal(L.group_relative_advantages(torch.full((3,), -2.9), 3), torch.zeros(3))
    with pytest.raises(ValueError, match="groups of 3"):
        L.group_relative_advantages(score, 3)


def test_lagrange_update_direction_and_cap_floats():
    up = L.lagrange_update(0.0, mean_episode_cost=2.0, threshold=1.0, lr=0.1)
    assert isinstance(up, float) and close(up, 0.1)  # 0 + 0.1 * e^0 * (2 - 1)
    down = L.lagrange_update(math.log(2.0), mean_episode_cost=0.0, threshold=1.0, lr=0.1)
    assert close(down, math.log(2.0) - 0.2)  # step scales with lambda = 2
    assert math.exp(down) < 2.0
    capped = L.lagrange_update(0.0, 2.0, 1.0, 0.1, lambda_max=1.05)
    assert close(capped, math.log(1.05))
    assert close(L.lagrange_update(0.0, 1.0, 1.0, 0.1), 0.0)  # on the threshold: no move


def test_lagrange_update_tensors():
    log_lambda = torch.tensor(0.0, requires_grad=True)
    new = L.lagrange_update(log_lambda, torch.tensor(3.0), 1.0, 0.5)
    assert isinstance(new, torch.Tensor) and new.dim() == 0 and not new.requires_grad
    assert close(new, 1.0)
    assert close(L.lagrange_update(log_lambda, torch.tensor(3.0), 1.0, 0.5, lambda_max=2.0),
                 math.log(2.0))
    assert L.lagrange_update(log_lambda, torch.tensor(-1.0), 1.0, 0.5).item() < 0.0
