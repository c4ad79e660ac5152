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

Everything is chosen on train prompts; validation and test prompts are never used by the gate.
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
