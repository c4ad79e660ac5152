"""Forward-pass scan of every refusal-direction candidate, as in Arditi et al. (2024) / refusal_direction.

Part of ``make steer`` (``bench steer --profile P``): :func:`bench.steer.directions.select_direction`
calls :func:`scan_candidates` on the validation prompts, filters with :func:`filter_reason` and, with
``steer.selection: scan``, picks the surviving candidate with the lowest bypass score (with
``generation`` the scan is recorded and plotted but does not choose). No generation: one forward pass per prompt
batch and intervention, reading only the next-token distribution at the last prompt token (the
first generated position).

Scores per candidate ``(layer, position)`` with direction ``r`` (the raw difference of means):

- ``bypass``: mean :func:`refusal_score` of the harmful validation prompts with ``r`` ablated
  from every residual write (lower: ablation removes refusal better).
- ``induce``: mean :func:`refusal_score` of the harmless (benign) validation prompts with ``r``
  added (``alpha * r``) at the candidate's layer (higher: addition induces refusal).
- ``kl``: mean :func:`next_token_kl` between the unsteered and the ablated next-token distributions
  on the harmless validation prompts: the side effect of ablation on text it should leave alone.

Refusal tokens
    refusal_direction scores refusal by the probability of the model's typical refusal openers at the
    first answer token (Llama-3 / Gemma: ``"I"``; Qwen: ``"I"``, ``"As"``). We take the *first token*
    of each opener in ``steer.refusal_openers`` (default :data:`DEFAULT_REFUSAL_OPENERS`) as the
    tokenizer splits it at the start of the assistant turn; for SmolLM2 that is ``I``, ``As``,
    ``Sorry`` and ``Unfortunately``. ``I`` also opens compliant answers (``I'd be happy to``), so the
    unsteered scores are recorded next to the steered ones: the scan reads differences, not levels.

Filter (refusal_direction's ``filter_fn``; :func:`filter_reason`)
    a candidate is discarded when a score is not finite, when its layer is in the last
    ``prune_layer_fraction`` of the model (hidden-state index ``l >= int(n_layers * (1 - fraction))``,
    the same cut as the reference's ``resid_pre`` layer index), when it is beyond ``skip_last_layers``,
    when ``kl > max_kl``, or when ``induce <= 0`` (addition does not make refusal tokens more likely
    than not). The reason is recorded per candidate.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from bench.config import REFUSAL_OPENERS as DEFAULT_REFUSAL_OPENERS  # the steer section's default (one owner)
from bench.tensors import position_ids

# --------------------------------------------------------------------------- pure functions


def refusal_score(logits: torch.Tensor, refusal_ids: Sequence[int], eps: float = 1e-8) -> torch.Tensor:
    """Log-odds of the refusal tokens at one position (refusal_direction's ``refusal_score``).

    ``logits``: ``(B, V)`` next-token logits. With ``p = softmax(logits)`` and ``R`` the refusal tokens,
    ``P_R = sum_{t in R} p_t`` and ``score = log(P_R + eps) - log(1 - P_R + eps)``; float64, ``(B,)``.
    """
    if not len(refusal_ids):
        raise ValueError("refusal_score: no refusal tokens")
    p = torch.softmax(logits.to(torch.float64), dim=-1)  # (B, V)
    pr = p[:, list(refusal_ids)].sum(dim=-1)  # (B,)
    return torch.log(pr + eps) - torch.log(1.0 - pr + eps)


def next_token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q) = sum_v P_v (log P_v - log Q_v)`` per row of ``(B, V)`` logits, with
    ``P = softmax(logits_p)`` (unsteered) and ``Q = softmax(logits_q)`` (steered); float64, ``(B,)``.
    Computed with log-softmax (exact; no epsilon), so it is 0 for equal rows and >= 0 always."""
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"next_token_kl: shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    lp = torch.log_softmax(logits_p.to(torch.float64), dim=-1)
    lq = torch.log_softmax(logits_q.to(torch.float64), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1).clamp(min=0.0)


def pruned_from(num_layers: int, prune_layer_fraction: float) -> int:
    """First hidden-state index in the pruned tail: ``int(n_layers * (1 - fraction))`` (the reference's
    cut; ``fraction = 0`` prunes nothing, i.e. returns ``n_layers + 1``)."""
    if not 0.0 <= prune_layer_fraction < 1.0:
        raise ValueError(f"prune_layer_fraction must be in [0, 1), got {prune_layer_fraction}")
    return num_layers + 1 if prune_layer_fraction == 0 else int(num_layers * (1.0 - prune_layer_fraction))


def filter_reason(cand: dict, num_layers: int, *, prune_layer_fraction: float = 0.2, skip_last_layers: int = 0,
                  max_kl: float | None = 0.1, min_induce: float | None = 0.0) -> str | None:
    """Why ``cand`` (``{"layer", "bypass", "induce", "kl"}``) is discarded, or None if it is kept.
    Order: non-finite score, pruned layer, ``skip_last_layers``, KL above ``max_kl``,
    ``induce <= min_induce``. ``None`` bounds switch a test off."""
    vals = [cand.get(k) for k in ("bypass", "induce", "kl")]
    if any(v is None or not math.isfinite(v) for v in vals):
        return "nan"
    if cand["layer"] >= pruned_from(num_layers, prune_layer_fraction):
        return "pruned"
    if cand["layer"] > num_layers - skip_last_layers:
        return "skip_last_layers"
    if max_kl is not None and cand["kl"] > max_kl:
        return "kl"
    if min_induce is not None and cand["induce"] <= min_induce:
        return "induce"
    return None


def choose(cands: list[dict]) -> tuple[dict, str | None]:
    """The candidate with the lowest bypass among those with ``filtered is None``; when none survives,
    the lowest bypass among the least-filtered tier (not pruned and within the KL bound, then not
    pruned, then any finite), with a note saying so."""
    finite = [c for c in cands if c.get("filtered") != "nan"]
    if not finite:
        raise ValueError("every candidate has a non-finite score")
    tiers = [("", lambda c: c["filtered"] is None),
             ("no candidate passed every filter; chosen among unpruned candidates within the KL bound",
              lambda c: c["filtered"] in (None, "induce")),
             ("no unpruned candidate is within the KL bound; chosen among unpruned candidates",
              lambda c: c["filtered"] in (None, "induce", "kl")),
             ("every candidate is pruned; chosen among all", lambda c: True)]
    for note, ok in tiers:
        pool = [c for c in finite if ok(c)]
        if pool:
            return min(pool, key=lambda c: (c["bypass"], c["layer"], c["position"])), (note or None)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- model side


def refusal_token_ids(tok, openers: Sequence[str] = DEFAULT_REFUSAL_OPENERS) -> tuple[list[int], list[str]]:
    """First token of each opener (deduplicated, in order) and its text."""
    ids: list[int] = []
    for o in openers:
        enc = tok(o, add_special_tokens=False)["input_ids"]
        if enc and enc[0] not in ids:
            ids.append(int(enc[0]))
    if not ids:
        raise ValueError(f"refusal_token_ids: no tokens from {list(openers)!r}")
    return ids, [tok.decode([i]) for i in ids]


def encode_batches(tok, texts: Sequence[str], batch_size: int) -> list[dict]:
    """Left-padded batches of already formatted prompts with ``position_ids`` from the attention mask."""
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
            enc["position_ids"] = position_ids(enc["attention_mask"])  # (B, L)
            out.append(dict(enc))
        return out
    finally:
        tok.padding_side = old


@torch.no_grad()
def last_logits(model, batches: list[dict]) -> torch.Tensor:
    """Next-token logits at the last prompt token, ``(N, V)`` float32 (only that position is projected)."""
    rows = []
    for enc in batches:
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out = model(**enc, use_cache=False, logits_to_keep=1)
        rows.append(out.logits[:, -1, :].float().cpu())
    return torch.cat(rows)


def scan_candidates(model, tok, directions: torch.Tensor, cands: list[dict], texts_harmful: Sequence[str],
                    texts_harmless: Sequence[str], refusal_ids: Sequence[int], *, positions: int, add_alpha: float,
                    batch_size: int, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Fill ``bypass``, ``induce`` and ``kl`` into each of ``cands`` (``{"layer", "position"}``,
    position a negative offset) and return the unsteered baselines. ``texts_*`` are formatted prompts."""
    from bench.steer.hooks import steering

    was_training = model.training
    model.eval()
    try:
        bh = encode_batches(tok, texts_harmful, batch_size)
        bb = encode_batches(tok, texts_harmless, batch_size)
        base_h = last_logits(model, bh)
        base_b = last_logits(model, bb)
        baseline = {"refusal_score_harmful": float(refusal_score(base_h, refusal_ids).mean()),
                    "refusal_score_harmless": float(refusal_score(base_b, refusal_ids).mean())}
        for i, c in enumerate(cands):
            r = directions[c["layer"], positions + c["position"]].to(torch.float32)  # offset -> index
            with steering(model, r, mode="ablate"):
                abl_h = last_logits(model, bh)
                abl_b = last_logits(model, bb)
            with steering(model, r, mode="add", layer=c["layer"], alpha=add_alpha):
                add_b = last_logits(model, bb)
            c["bypass"] = float(refusal_score(abl_h, refusal_ids).mean())
            c["induce"] = float(refusal_score(add_b, refusal_ids).mean())
            c["kl"] = float(next_token_kl(base_b, abl_b).mean())
            if (i + 1) % 10 == 0 or i + 1 == len(cands):
                progress(f"  scan {i + 1}/{len(cands)}")
    finally:
        model.train(was_training)
    return baseline


@torch.no_grad()
def harmless_kl(model, tok, texts_harmless: Sequence[str], batch_size: int, steer_ctx: Callable) -> float:
    """Mean :func:`next_token_kl` on harmless prompts between the unsteered model and the model inside
    ``steer_ctx()`` (a context manager factory, e.g. ``lambda: steering(model, spec)``)."""
    batches = encode_batches(tok, texts_harmless, batch_size)
    base = last_logits(model, batches)
    with steer_ctx():
        steered = last_logits(model, batches)
    return float(next_token_kl(base, steered).mean())


# --------------------------------------------------------------------------- plot


def plot_scan(cands: list[dict], baseline: dict, path, *, max_kl: float | None, title: str = ""):
    """Three panels (bypass, induce, KL) against layer, one line per position; filtered-out candidates
    as hollow markers, kept ones filled, the chosen one starred; unsteered baselines dashed, the
    KL bound dotted (KL on a log axis), the pruned layers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import save_png

    positions = sorted({c["position"] for c in cands})
    pruned = [c["layer"] for c in cands if c.get("filtered") in ("pruned", "skip_last_layers")]
    panels = [("bypass", "bypass: refusal score, harmful, ablated (lower better)", baseline.get("refusal_score_harmful")),
              ("induce", "induce: refusal score, harmless, added (> 0 kept)", baseline.get("refusal_score_harmless")),
              ("kl", "KL(unsteered || ablated), harmless next token", None)]
    def val(c: dict, key: str) -> float:
        v = c.get(key)
        v = math.nan if v is None else float(v)
        return max(v, 1e-6) if key == "kl" else v  # KL on a log axis

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, name, base) in zip(axes, panels):
        for j, p in enumerate(positions):
            cs = sorted((c for c in cands if c["position"] == p), key=lambda c: c["layer"])
            color = f"C{j}"
            ax.plot([c["layer"] for c in cs], [val(c, key) for c in cs], color=color, lw=1.2, label=f"position {p}")
            kept = [c for c in cs if c.get("filtered") is None]
            ax.scatter([c["layer"] for c in kept], [val(c, key) for c in kept], color=color, s=14, zorder=3)
            out = [c for c in cs if c.get("filtered") is not None]
            ax.scatter([c["layer"] for c in out], [val(c, key) for c in out], facecolors="none",
                       edgecolors=color, s=14, zorder=3)
        for c in cands:
            if c.get("chosen"):
                ax.scatter([c["layer"]], [val(c, key)], marker="*", s=160, color="black", zorder=4, label="chosen")
        if base is not None:
            ax.axhline(base, color="gray", ls="--", lw=1, label="unsteered")
        if key == "kl" and max_kl is not None:
            ax.axhline(max_kl, color="red", ls=":", lw=1, label="KL bound")
            ax.set_yscale("log")
        if key == "induce":
            ax.axhline(0.0, color="red", ls=":", lw=1)
        if pruned:
            ax.axvspan(min(pruned) - 0.5, max(pruned) + 0.5, color="gray", alpha=0.12, lw=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("layer (hidden-state index)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[0].legend(handles, labels, fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path, dpi=100, legend=False)
