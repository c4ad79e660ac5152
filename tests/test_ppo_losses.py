"""Closed-form tests of bench/ppo_losses.py (the PPO regularisers, the missing-EOS penalty) on tiny
hand-made tensors. Expected values are worked out by hand (plain ``math`` on scalars), never by
calling the function under test."""

import math

import pytest
import torch

from bench import ppo_losses as P


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


# --------------------------------------------------------------------------- KL / JS


def test_kl_estimators_exact():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    assert close(P.kl_penalty(logp, ref, "k1"), [1.0, -1.0])
    assert close(P.kl_penalty(logp, ref, "k2"), [0.5, 0.5])
    assert close(P.kl_penalty(logp, ref, "k3"), [math.exp(-1.0), math.e - 2.0])
    assert close(P.kl_penalty(logp, ref), [1.0, -1.0])  # default k1
    assert close(P.kl_penalty(logp, logp, "k3"), [0.0, 0.0])


def test_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g) * 3, torch.randn(200, generator=g) * 3
    assert (P.kl_penalty(a, b, "k3") >= 0).all()
    assert (P.kl_penalty(a, b, "k2") >= 0).all()


def test_kl_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        P.kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


def test_js_manual_two_token_vocab():
    logits = torch.tensor([[[0.0, 0.0]]])  # p = (1/2, 1/2)
    ref = torch.tensor([[[math.log(3.0), 0.0]]])  # q = (3/4, 1/4)
    p, q = (0.5, 0.5), (0.75, 0.25)
    m = (0.625, 0.375)
    expected = 0.5 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m)) \
        + 0.5 * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m))
    assert close(P.js_divergence_per_token(logits, ref), [[expected]])
    assert close(P.js_divergence_per_token(ref, logits), [[expected]])


def test_js_identity_symmetry_bound_mask():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 4, 7, generator=g) * 4
    b = torch.randn(2, 4, 7, generator=g) * 4
    assert close(P.js_divergence_per_token(a, a), torch.zeros(2, 4))
    ab, ba = P.js_divergence_per_token(a, b), P.js_divergence_per_token(b, a)
    assert close(ab, ba, 1e-6)
    assert (ab > 0).all() and (ab <= math.log(2)).all()
    # disjoint supports reach ln 2 exactly, gradients stay finite
    x = torch.tensor([[[0.0, -1e4]]], requires_grad=True)
    y = torch.tensor([[[-1e4, 0.0]]])
    js = P.js_divergence_per_token(x, y)
    assert close(js, [[math.log(2)]])
    js.sum().backward()
    assert torch.isfinite(x.grad).all()
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]])
    jm = P.js_divergence_per_token(a, b, mask)
    assert close(jm, ab * mask)


# --------------------------------------------------------------------------- sampled-token JS (Sun et al.)


def _logs(*xs):
    return torch.tensor([math.log(x) for x in xs], dtype=torch.float64)


def test_js_sampled_token_hand_values():
    # p = 0.3, q = 0.1: m = 0.2, log(p/m) = log 1.5 > 0, log(q/m) = log 0.5 < 0 (clamped to 0)
    assert close(P.js_sampled_token(_logs(0.3), _logs(0.1)), [0.5 * math.log(1.5)])
    # swapped: the same value (only one clamped term survives, and it depends on |log p - log q|)
    assert close(P.js_sampled_token(_logs(0.1), _logs(0.3)), [0.5 * math.log(1.5)])
    # p = q: m = p, both terms 0
    assert close(P.js_sampled_token(_logs(0.2, 0.7), _logs(0.2, 0.7)), [0.0, 0.0])
    # depends on the ratio only: p = 0.03, q = 0.01 gives the same as 0.3, 0.1
    assert close(P.js_sampled_token(_logs(0.03), _logs(0.01)), [0.5 * math.log(1.5)])


def test_js_sampled_token_matches_sun_et_al_clamped_form():
    g = torch.Generator().manual_seed(3)
    logp, ref = -torch.rand(50, generator=g) * 6, -torch.rand(50, generator=g) * 6
    out = P.js_sampled_token(logp, ref)
    for lp, lq, o in zip(logp.tolist(), ref.tolist(), out.tolist()):
        log_m = math.log(0.5 * (math.exp(lp) + math.exp(lq)))
        want = 0.5 * (max(0.0, lp - log_m) + max(0.0, lq - log_m))
        assert abs(o - want) < 1e-5


def test_js_sampled_token_expansion_symmetry_and_bound():
    # near r = 0: |r|/4 - r^2/16 + r^4/384 (first order, unlike the exact JS, which is second order)
    for r in (1e-3, -1e-3, 0.05, -0.05, 0.2):
        got = P.js_sampled_token(torch.tensor([r], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)).item()
        assert abs(got - (abs(r) / 4 - r * r / 16 + r ** 4 / 384)) < 1e-7
    # symmetric in the log-ratio, increasing in |r|, bounded by ln(2)/2
    r = torch.linspace(0, 40, 200, dtype=torch.float64)
    pos = P.js_sampled_token(r, torch.zeros_like(r))
    neg = P.js_sampled_token(-r, torch.zeros_like(r))
    assert close(pos, neg, 1e-12)
    assert (pos[1:] >= pos[:-1]).all()
    assert (pos <= math.log(2) / 2).all() and close(pos[-1:], [math.log(2) / 2], 1e-9)


def test_sampled_js_is_first_order_exact_js_second_order():
    # two-token vocabulary, pi = (1/2 + d, 1/2 - d), ref = (1/2, 1/2), sampled token 0:
    # r = log(1 + 2d) ~ 2d, sampled JS ~ |r|/4 ~ d/2; exact JS ~ (1/8) sum d^2/q = d^2/2
    d = 1e-2
    lp = torch.tensor([[[math.log(0.5 + d), math.log(0.5 - d)]]], dtype=torch.float64)
    lq = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    exact = P.js_divergence_per_token(lp, lq).item()  # float32 inside: relative tolerance
    sampled = P.js_sampled_token(lp[..., 0], lq[..., 0]).item()
    r = math.log(1 + 2 * d)
    assert abs(exact / (d * d / 2) - 1) < 1e-2
    assert abs(sampled - (r / 4 - r * r / 16 + r ** 4 / 384)) < 1e-7  # float32 inside
    assert sampled > 50 * exact  # the same small step costs ~1/d times more under the sampled term


# --------------------------------------------------------------------------- missing end of turn


def test_missing_eos_penalty():
    score = torch.tensor([0.5, -1.0, 2.0])
    truncated = torch.tensor([False, True, True])
    assert close(P.missing_eos_penalty(score, truncated, 1.0), [0.5, -2.0, 1.0])
    assert close(P.missing_eos_penalty(score, truncated, 0.25), [0.5, -1.25, 1.75])
    assert P.missing_eos_penalty(score, truncated, 0.0) is score
