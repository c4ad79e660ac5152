"""Conditional ablation, the ``steer-gated`` variant: ablate the refusal direction only where the prompt
does not read as harmful (after CAST, Lee et al. 2024, "Programming Refusal with Conditional Activation
Steering", arXiv:2409.05907: a condition vector read at the prompt gates a behaviour vector).

Why: on the embedded default the SFT policy refuses most harmful requests but also half of the
borderline-safe ones, yet a linear read-out of its own prompt-end activations separates harmful from
borderline prompts far better than its behaviour does (AUROC about 0.96 on the train split). So the
policy's behaviour is kept where that read-out says "harmful" and the refusal direction is ablated
elsewhere.

The gate, top to bottom:

1. condition direction per layer: difference of the mean prompt-end activations (last prompt token, the
   end of the assistant header) of the first ``n_train`` harmful and benign *train* prompts (by label);
2. gate layer: the layer whose projection best ranks held-out harmful train prompts above benign and
   borderline train prompts (:func:`auroc`);
3. threshold: the ``gate_quantile`` quantile of the held-out harmful prompts' projections, so that share
   of harmful-looking prompts is let through to ablation;
4. at run time (:func:`bench.steer.hooks.steering` with a ``gate`` in the spec): one unsteered pass
   reads each sequence's projection at its prompt end (the last occurrence of the assistant header;
   the last attended token if there is none), and the ablation hooks act only on the rows below the
   threshold, for the prefill and every decoding step that follows;
5. where the input has no chat template (lm-eval's requests), the hooks would read the last token
   instead, which is not where the gate was fitted. There the decision is taken beforehand, per
   document: :func:`bench.steer.hooks.gate_decisions` formats each prompt as generation does and reads
   it with the same code as the hooks (:func:`bench.steer.hooks.gate_ablates`), and
   :mod:`bench.eval.lm_eval_gate` scores each document's requests under plain ablation or unsteered.

Everything above is chosen on train prompts (``steer.gate_fit: mean_diff``); validation and test prompts
are never used by that gate.

The second design (``steer.gate_fit: logistic`` with ``steer.gate_alpha_below``), conditional
activation steering proper: on the default SFT policy with the issue-25 data, the mean-difference
gate reads 18% of benign validation prompts as harmful, and ablating the refusal direction leaves a
quarter of the borderline-safe prompts refused (the SFT policy does not refuse through that one
direction alone). So:

1. condition vector per layer: a logistic read-out of harmful vs benign *and borderline-safe* train
   prompts (:func:`logistic_units`), the borderline ones teaching it what a trigger word without harmful
   intent looks like;
2. gate layer and threshold chosen on the validation split (the split for choosing settings);
3. behaviour: where the prompt reads as harmful, steer-add's addition (refuse); elsewhere the same
   direction at ``gate_alpha_below`` (negative: away from refusing), a bypass that, unlike ablation,
   also moves the SFT policy's refusals that do not run through the one direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a random ``pos`` score > a random ``neg`` score), ties counting one half (Mann-Whitney U / n m)."""
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("auroc: both groups need at least one score")
    p, n = pos.flatten().to(torch.float64), neg.flatten().to(torch.float64)
    gt = (p[:, None] > n[None, :]).to(torch.float64).mean()
    eq = (p[:, None] == n[None, :]).to(torch.float64).mean()
    return float(gt + 0.5 * eq)


def unit_rows(directions: torch.Tensor) -> torch.Tensor:
    """Each row of ``directions`` (L+1, H) scaled to unit norm (a zero row stays zero)."""
    d = directions.to(torch.float64)
    norm = d.norm(dim=-1, keepdim=True)
    return (d / torch.where(norm > 0, norm, torch.ones_like(norm))).to(torch.float32)


def logistic_units(pos: torch.Tensor, neg: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> torch.Tensor:
    """Per layer, the unit weight vector of an L2-regularised logistic regression telling ``pos``
    (N, L+1, H) from ``neg`` (M, L+1, H): ``(L+1, H)``, oriented so that ``pos`` projects higher.

    Each layer: features standardised by the pooled mean and standard deviation, classes weighted to
    count equally, loss = mean weighted log-loss + ``l2`` * |w|^2 (L-BFGS, ``steps`` iterations), then
    the weights mapped back to the raw residual stream (w / sd), where the gate projects. A mean
    difference is the right condition vector when the two groups differ in one direction with
    similar spread; a logistic read-out also uses the directions in which the borderline-safe
    prompts differ from the harmful ones (on the default SFT policy: validation AUROC 1.00 against
    0.98 for harmful vs borderline, docs/experiments.md#steer-gate-logistic)."""
    x = torch.cat([pos, neg]).to(torch.float64)  # (N+M, L+1, H)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(torch.float64)
    wts = torch.where(y > 0, 0.5 / len(pos), 0.5 / len(neg))
    out = torch.zeros(x.shape[1], x.shape[2], dtype=torch.float64)
    for layer in range(x.shape[1]):
        xl = x[:, layer]
        mu, sd = xl.mean(0), xl.std(0).clamp_min(1e-6)
        z = (xl - mu) / sd
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (wts * torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, reduction="none")).sum()
            loss = loss + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        out[layer] = w.detach() / sd
    return unit_rows(out)


def choose_gate(units: torch.Tensor, harmful: torch.Tensor, others: Sequence[torch.Tensor], quantile: float) -> dict:
    """Gate layer and threshold from held-out prompt-end activations.

    ``units`` (L+1, H) unit condition directions; ``harmful`` (N, L+1, H) activations of prompts that
    should keep the policy's behaviour; ``others`` activations (M_k, L+1, H) of prompts that should be
    ablated (benign, borderline). Layer = argmax over l >= 1 of AUROC(harmful > others) of the projection
    x_l . u_l (ties: the lower layer); threshold = the ``quantile`` quantile of the harmful projections
    at that layer. Returns ``{layer, threshold, auroc (per layer), ...}``.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"gate quantile must be in [0, 1), got {quantile}")
    rest = torch.cat(list(others))
    scores = {layer: auroc(harmful[:, layer] @ units[layer], rest[:, layer] @ units[layer])
              for layer in range(1, units.shape[0])}
    layer = max(scores, key=lambda k: (scores[k], -k))
    h = harmful[:, layer] @ units[layer]
    threshold = float(torch.quantile(h.to(torch.float64), quantile))
    return {"layer": layer, "threshold": threshold, "auroc": scores[layer], "auroc_per_layer": scores,
            "quantile": quantile}


def n_kept(units: torch.Tensor, acts: torch.Tensor, layer: int, threshold: float) -> int:
    """How many prompts project at or above the threshold (left unablated)."""
    return int(((acts[:, layer] @ units[layer]) >= threshold).sum())


def generation_header(tok) -> list[int]:
    """Token ids that the chat template adds to open the assistant's turn (the generation prompt)."""
    from bench.chat import messages

    msgs = messages("x")
    with_prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError("the chat template's generation prompt is not a suffix of the closed turn")
    return tok(with_prompt[len(without):], add_special_tokens=False)["input_ids"]


def prompt_end_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, header: Sequence[int]) -> torch.Tensor:
    """Per row (B,), the index of the last token of the last complete ``header`` occurrence among the
    attended tokens; rows without one use their last attended token."""
    B, T = input_ids.shape
    attn = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    last_attended = torch.where(attn, torch.arange(T, device=input_ids.device), -1).max(dim=1).values  # (B,)
    k = len(header)
    out = last_attended.clone()
    if k == 0 or k > T:
        return out
    h = torch.as_tensor(list(header), device=input_ids.device)
    windows = input_ids.unfold(1, k, 1)  # (B, T-k+1, k)
    hit = (windows == h).all(dim=-1) & attn.unfold(1, k, 1).all(dim=-1)  # (B, T-k+1)
    ends = torch.where(hit, torch.arange(k - 1, T, device=input_ids.device), -1).max(dim=1).values  # (B,)
    return torch.where(ends >= 0, ends, out)
