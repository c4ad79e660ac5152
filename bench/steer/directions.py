"""Refusal directions: difference of mean residual-stream activations, groups, and selection.

Part of ``make steer`` (``bench steer --profile P``, see :mod:`bench.steer.recipe`).

Activations
    For each prompt, formatted by :func:`bench.chat.format_prompt` with the generation prompt, we read
    ``output_hidden_states=True`` at the last ``positions`` prompt tokens: the post-instruction tokens
    that the chat template puts between the user message and the assistant's answer (for SmolLM2
    ``<|im_end|> \\n <|im_start|> assistant \\n``). Batches are left-padded, so the last ``positions``
    columns are the same template tokens for every prompt; ``position_ids`` follow the attention mask,
    as in generation. Hidden-state index ``l`` is the embeddings' output for ``l = 0`` and decoder block
    ``l - 1``'s output for ``l >= 1``, all before the final RMSNorm (we set the config's
    ``tie_last_hidden_states = False`` while reading, so transformers does not swap the last entry for
    the normed stream). Means are accumulated in float64.

    A position is written as a negative offset from the end of the prompt: ``-1`` is the last token.

Direction (Arditi et al. 2024, eq. 1)
    ``r[l, p] = mean(refuse group) - mean(comply group)``, per layer and position.

Groups
    ``behaviour``: the model's own greedy answers to the harmful and benign training prompts, judged by
    the suite's refusal detector (``bench.eval.refusal``): prompts it refuses vs prompts it complies with.
    ``label``: harmful vs benign prompt labels. Behaviour grouping falls back to labels, with the reason
    recorded, when either group has fewer than ``min_group`` prompts (the default SmolLM2 base refuses
    little).

Selection (on the validation split; Arditi et al.'s section 3.1 / refusal_direction's select_direction)
    Candidates are every hidden-state index ``1 .. n_layers`` (never the embeddings, whose
    post-instruction activations are the same for every prompt) at every position. Every candidate is
    scored by forward passes alone (:mod:`bench.steer.scan`): bypass (refusal-token log-odds on
    harmful prompts under ablation), induce (the same on benign prompts under addition) and the KL of
    benign next-token distributions under ablation. Candidates in the last ``prune_layer_fraction`` of
    layers (or beyond ``skip_last_layers``), with KL above ``max_harmless_kl`` or with induce <= 0 are
    discarded (the reason is recorded); with ``steer.selection: scan`` the lowest bypass among the
    rest is chosen. With ``steer.selection: generation`` the scan is recorded but the pre-scan rule
    chooses: the ``shortlist`` best by held-out ``d`` (layers ``1 .. n_layers - skip_last_layers``)
    are scored by the detector's refusal rate under ablation (harmful) and addition (benign), and the
    largest summed effect wins (docs/experiments.md#steer-selection-scan says why the default profile
    does this). With ``scan``, generation only measures: the detector's refusal rate on the validation prompts
    unsteered, under ablation and under addition for the ``shortlist`` best survivors (the chosen one
    first; the variants' ``select_*`` metrics), and the alpha grid of steer-add at the chosen
    candidate. Every candidate's scores are returned for the record.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from bench import chat
from bench.precision import generation_autocast
from bench.tensors import position_ids

# --------------------------------------------------------------------------- activations


def prompt_texts(tok, prompts: Sequence[str], system_prompt: str | None) -> list[str]:
    return [chat.format_prompt(tok, p, system_prompt) for p in prompts]


@torch.no_grad()
def iter_activations(model, tok, prompts: Sequence[str], system_prompt: str | None, positions: int,
                     batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, acts)`` per batch; ``acts`` is ``(B, n_layers + 1, positions, H)`` float32
    at the last ``positions`` prompt tokens, ``indices`` the batch's positions in ``prompts``."""
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions}")
    texts = prompt_texts(tok, prompts, system_prompt)
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if lens and min(lens) < positions:
        raise ValueError(f"a prompt has only {min(lens)} tokens, fewer than positions={positions}")
    order = sorted(range(len(texts)), key=lambda i: -lens[i])  # similar lengths share a batch
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    # Keep hidden_states[-1] as the last block's output (pre final norm), like every other entry.
    configs = {id(c): c for c in (model.config, getattr(getattr(model, "model", None), "config", model.config))}
    old_tie = {k: getattr(c, "tie_last_hidden_states", None) for k, c in configs.items()}
    for c in configs.values():
        c.tie_last_hidden_states = False
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True, use_cache=False,
                        logits_to_keep=1)  # only the hidden states are read: the head projects one position
            hs = torch.stack([h[:, -positions:, :] for h in out.hidden_states], dim=1)  # (B, n_layers+1, P, H)
            yield idx, hs.float().cpu()
    finally:
        tok.padding_side = old_side
        model.train(was_training)
        for k, c in configs.items():
            if old_tie[k] is None:
                with contextlib.suppress(AttributeError):
                    delattr(c, "tie_last_hidden_states")
            else:
                c.tie_last_hidden_states = old_tie[k]


def mean_activations(model, tok, prompts: Sequence[str], system_prompt: str | None = None, positions: int = 5,
                     batch_size: int = 16) -> torch.Tensor:
    """Mean residual-stream activation ``(n_layers + 1, positions, H)``, float64-accumulated."""
    if not prompts:
        raise ValueError("mean_activations: no prompts")
    total: torch.Tensor | None = None
    with generation_autocast(model):  # bf16 models: one cast of the weights per call, not per batch
        for _, acts in iter_activations(model, tok, prompts, system_prompt, positions, batch_size):
            s = acts.to(torch.float64).sum(dim=0)  # (n_layers+1, P, H)
            total = s if total is None else total + s
    return total / len(prompts)


def activations(model, tok, prompts: Sequence[str], system_prompt: str | None = None, positions: int = 5,
                batch_size: int = 16, position_index: int | None = None) -> torch.Tensor:
    """Per-prompt activations in the input order: ``(N, n_layers + 1, positions, H)`` float32, or
    ``(N, n_layers + 1, H)`` at one ``position_index`` (0 .. positions-1, from the left)."""
    out: list[torch.Tensor | None] = [None] * len(prompts)
    with generation_autocast(model):  # bf16 models: one cast of the weights per call, not per batch
        for idx, acts in iter_activations(model, tok, prompts, system_prompt, positions, batch_size):
            if position_index is not None:
                acts = acts[:, :, position_index, :]
            for j, i in enumerate(idx):
                out[i] = acts[j]
    return torch.stack(out)  # type: ignore[arg-type]


def refusal_directions(harm_mean: torch.Tensor, benign_mean: torch.Tensor) -> torch.Tensor:
    """Difference of means per layer and position (same shape as the means)."""
    if harm_mean.shape != benign_mean.shape:
        raise ValueError(f"mean shapes differ: {tuple(harm_mean.shape)} vs {tuple(benign_mean.shape)}")
    return harm_mean - benign_mean


def cohens_d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Standardised effect size of group ``a`` over ``b`` along dim 0 (pooled SD; nan if SD is 0)."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    na, nb = a.shape[0], b.shape[0]
    va = a.var(dim=0, unbiased=True) if na > 1 else torch.zeros_like(a[0])
    vb = b.var(dim=0, unbiased=True) if nb > 1 else torch.zeros_like(b[0])
    pooled = ((na - 1) * va + (nb - 1) * vb) / max(na + nb - 2, 1)
    sd = pooled.sqrt()
    diff = a.mean(dim=0) - b.mean(dim=0)
    return torch.where(sd > 0, diff / sd.clamp(min=1e-300), torch.full_like(diff, math.nan))


def position_offset(index: int, positions: int) -> int:
    """Index 0..positions-1 (left to right among the last tokens) -> negative offset (-1 = last)."""
    return index - positions


def position_index(offset: int, positions: int) -> int:
    return offset + positions


# --------------------------------------------------------------------------- groups


@dataclass
class Groups:
    """The two prompt groups whose means are subtracted (``refuse`` minus ``comply``)."""

    refuse: list[str]
    comply: list[str]
    grouping: str  # the grouping actually used: "behaviour" or "label"
    requested: str
    sizes: dict = field(default_factory=dict)
    fallback_reason: str | None = None

    def record(self) -> dict:
        d = asdict(self)
        d.pop("refuse")
        d.pop("comply")
        d["n_refuse"] = len(self.refuse)
        d["n_comply"] = len(self.comply)
        return d


def _default_detect_many() -> Callable:
    from bench.eval import refusal

    return refusal.detect_many


def form_groups(harmful: Sequence[str], benign: Sequence[str], grouping: str = "behaviour", min_group: int = 8,
                answer: Callable[[list[str]], list[str]] | None = None,
                detect_many: Callable | None = None) -> Groups:
    """Groups for the difference of means.

    ``answer`` maps prompts to the model's greedy answers (needed for ``behaviour``);
    ``detect_many`` defaults to ``bench.eval.refusal.detect_many`` (looked up at call time).
    """
    harmful, benign = list(harmful), list(benign)
    label_sizes = {"harmful": len(harmful), "benign": len(benign)}
    if grouping == "label":
        return Groups(harmful, benign, "label", "label", {"by_label": label_sizes})
    if grouping != "behaviour":
        raise ValueError(f"grouping must be 'behaviour' or 'label', got {grouping!r}")
    if answer is None:
        raise ValueError("behaviour grouping needs an `answer` function (greedy generation)")
    detect_many = detect_many or _default_detect_many()
    prompts = harmful + benign
    labels = ["harmful"] * len(harmful) + ["benign"] * len(benign)
    verdicts = detect_many(answer(prompts), prompts)
    refused = [bool(v.is_refusal) for v in verdicts]
    by_label = {lab: {"refuse": sum(r for r, l in zip(refused, labels) if l == lab),
                      "comply": sum(not r for r, l in zip(refused, labels) if l == lab)}
                for lab in ("harmful", "benign")}
    refuse = [p for p, r in zip(prompts, refused) if r]
    comply = [p for p, r in zip(prompts, refused) if not r]
    sizes = {"behaviour": {"refuse": len(refuse), "comply": len(comply), "by_label": by_label},
             "by_label": label_sizes}
    if len(refuse) < min_group or len(comply) < min_group:
        reason = (f"behaviour grouping gave {len(refuse)} refused and {len(comply)} complied prompts among "
                  f"{len(prompts)} greedy answers (min_group={min_group}); fell back to label grouping")
        return Groups(harmful, benign, "label", "behaviour", sizes, reason)
    return Groups(refuse, comply, "behaviour", "behaviour", sizes)


# --------------------------------------------------------------------------- selection


def candidate_layers(num_layers: int, skip_last_layers: int) -> list[int]:
    """Hidden-state indices allowed as candidates: ``1 .. n_layers - skip`` (at least ``[1]``)."""
    return list(range(1, max(num_layers - skip_last_layers, 1) + 1))


def separability_scores(directions: torch.Tensor, val_harm: torch.Tensor, val_benign: torch.Tensor) -> torch.Tensor:
    """Held-out ``d`` per (layer, position): projections of validation activations
    ``(N, n_layers + 1, P, H)`` on the unit directions ``(n_layers + 1, P, H)``."""
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    unit = unit.to(torch.float64)
    ph = torch.einsum("nlph,lph->nlp", val_harm.to(torch.float64), unit)
    pb = torch.einsum("nlph,lph->nlp", val_benign.to(torch.float64), unit)
    return cohens_d(ph, pb)  # (n_layers+1, P)


@dataclass
class Selection:
    layer: int
    position: int  # negative offset from the prompt's end (-1 = last token)
    score: float  # the chosen candidate's bypass score (refusal log-odds on harmful val under ablation)
    baseline: dict  # unsteered refusal rates (generation) and refusal scores (forward pass) on validation
    candidates: list[dict]  # every candidate: d, bypass, induce, kl, filtered (reason or None), chosen
    note: str | None = None  # set when no candidate passed every filter (which tier decided)
    add_alpha: float | None = None  # steer-add's alpha (chosen on validation when a grid was given)
    alpha_grid: list[dict] | None = None  # [{alpha, add_refusal_benign}] at the chosen layer/position
    harmless_kl: float | None = None  # the chosen candidate's KL on harmless val under ablation
    scan: dict | None = None  # the scan's settings: refusal tokens, prune fraction, KL bound, counts

    def record(self) -> dict:
        return asdict(self)


def select_direction(model, tok, directions: torch.Tensor, val_harmful: Sequence[str], val_benign: Sequence[str],
                     *, positions: int, skip_last_layers: int, add_alpha: float, shortlist: int,
                     refusal_rate: Callable[[list[str]], float], add_alpha_grid: Sequence[float] = (),
                     system_prompt: str | None = None, batch_size: int = 16,
                     prune_layer_fraction: float = 0.2, max_harmless_kl: float | None = 0.1,
                     refusal_openers: Sequence[str] | None = None, decides: str = "scan", readout=None,
                     progress: Callable[[str], None] = lambda s: None) -> Selection:
    """Pick (layer, position) as described in the module docstring.

    ``directions``: ``(n_layers + 1, positions, H)``. The forward-pass scan
    (:func:`bench.steer.scan.scan_candidates`) scores every candidate and decides: the lowest bypass
    among candidates that pass :func:`bench.steer.scan.filter_reason`. ``refusal_rate(prompts)`` runs
    greedy generation on the (currently steered) model and returns the detector's refusal rate; it
    only *measures* the ``shortlist`` best survivors (by bypass; the chosen one first) for the record
    and the variants' ``select_*`` metrics, and picks steer-add's alpha from ``add_alpha_grid``.
    ``readout``: what the scan reads (:func:`bench.steer.scan.build_readout`); None: the reference's
    first-token read-out on ``refusal_openers``.
    """
    from bench.steer import scan
    from bench.steer.hooks import steering

    num_layers = directions.shape[0] - 1
    layers = list(range(1, num_layers + 1))  # every layer but the embeddings; the filter prunes
    vh = activations(model, tok, val_harmful, system_prompt, positions, batch_size)
    vb = activations(model, tok, val_benign, system_prompt, positions, batch_size)
    d = separability_scores(directions, vh, vb)
    norms = directions.norm(dim=-1)
    cands = []
    for l in layers:
        for p in range(positions):
            dv = float(d[l, p])
            cands.append({"layer": l, "position": position_offset(p, positions), "norm": float(norms[l, p]),
                          "d": dv if math.isfinite(dv) else None})
    openers = list(refusal_openers or scan.DEFAULT_REFUSAL_OPENERS)
    ref_ids, ref_toks = scan.refusal_token_ids(tok, openers)
    if readout is None:
        readout = scan.FirstTokenReadout(tok, prompt_texts(tok, val_harmful, system_prompt),
                                         prompt_texts(tok, val_benign, system_prompt), ref_ids, batch_size)
    progress(f"selection: scanning {len(cands)} candidates by forward passes ({readout.info()})")
    score_base = scan.scan_candidates(model, directions, cands, readout, positions=positions,
                                      add_alpha=add_alpha, progress=progress)
    for c in cands:
        c["filtered"] = scan.filter_reason(c, num_layers, prune_layer_fraction=prune_layer_fraction,
                                           skip_last_layers=skip_last_layers, max_kl=max_harmless_kl)
    if decides == "generation":
        best, note = None, None  # chosen below, by generation, among the top `shortlist` by held-out d
    elif decides == "scan":
        best, note = scan.choose(cands)
    else:
        raise ValueError(f"select_direction: decides must be 'scan' or 'generation', got {decides!r}")
    counts = {"n_candidates": len(cands), "n_kept": sum(c["filtered"] is None for c in cands)}
    for reason in ("pruned", "skip_last_layers", "kl", "induce", "nan"):
        counts[f"n_{reason}"] = sum(c["filtered"] == reason for c in cands)
    scan_info = {**readout.info(), "refusal_tokens": ref_toks, "refusal_token_ids": ref_ids,
                 "refusal_openers": openers,
                 "prune_layer_fraction": prune_layer_fraction, "pruned_from_layer": scan.pruned_from(num_layers, prune_layer_fraction),
                 "max_harmless_kl": max_harmless_kl, "min_induce": 0.0, "add_alpha": add_alpha,
                 "decides": ("forward-pass scan (lowest bypass among kept candidates)" if decides == "scan" else
                             "generation (largest ablation + addition effect among the top shortlist by held-out d, "
                             "layers 1..n_layers - skip_last_layers; the scan and its filter are recorded, not applied)"),
                 **counts}
    if best is not None:
        progress(f"selection: {counts}; chose layer {best['layer']} position {best['position']} "
                 f"(bypass {best['bypass']:.2f} vs unsteered {score_base['refusal_score_harmful']:.2f}, "
                 f"induce {best['induce']:.2f}, KL {best['kl']:.4f})" + (f"; {note}" if note else ""))
        # Generation measures (does not choose) the best survivors' refusal rates on validation.
        pool = scan.choice_pool(cands)[0]  # the tier the choice was made in
        short = [best] + [c for c in sorted(pool, key=lambda c: c["bypass"]) if c is not best][:max(1, shortlist) - 1]
    else:
        allowed = set(candidate_layers(num_layers, skip_last_layers))
        ranked = sorted((c for c in cands if c["layer"] in allowed),
                        key=lambda c: -(c["d"] if c["d"] is not None else -math.inf))
        short = ranked[:max(1, shortlist)]
        progress(f"selection: {counts}; generating for the top {len(short)} by held-out d")
    known = getattr(readout, "unsteered_refusal", None)  # the read-out generated these already
    base_h = known["refusal_harmful"] if known else refusal_rate(list(val_harmful))
    base_b = known["refusal_benign"] if known else refusal_rate(list(val_benign))
    baseline = {"refusal_harmful": base_h, "refusal_benign": base_b,
                "n_harmful": len(val_harmful), "n_benign": len(val_benign), **score_base}
    for c in short:
        r = directions[c["layer"], position_index(c["position"], positions)].to(torch.float32)
        with steering(model, r, mode="ablate"):
            abl = refusal_rate(list(val_harmful))
            abl_b = refusal_rate(list(val_benign))  # the side effect: ablation should not add benign refusals
        with steering(model, r, mode="add", layer=c["layer"], alpha=add_alpha):
            add = refusal_rate(list(val_benign))
        c.update({"ablate_refusal_harmful": abl, "ablate_refusal_benign": abl_b, "add_refusal_benign": add,
                  "ablate_effect": base_h - abl, "add_effect": add - base_b})
        progress(f"  layer {c['layer']} pos {c['position']}: bypass={c['bypass']:.2f} kl={c['kl']:.4f}, "
                 f"ablate harmful {base_h:.2f}->{abl:.2f}, benign {base_b:.2f}->{abl_b:.2f}; add {base_b:.2f}->{add:.2f}")
    if best is None:
        best = max(short, key=lambda c: (c["ablate_effect"] + c["add_effect"], c["d"] if c["d"] is not None else -math.inf))
        if best["ablate_effect"] + best["add_effect"] <= 0:
            note = (f"no shortlisted candidate raised benign or lowered harmful refusal on the validation prompts "
                    f"(unsteered: harmful {base_h:.2f}, benign {base_b:.2f}); chosen by held-out separability d")
        progress(f"selection: chose layer {best['layer']} position {best['position']} by generation "
                 f"(KL {best['kl']:.4f}, filter: {best['filtered'] or 'kept'})" + (f"; {note}" if note else ""))
    for c in cands:
        c["shortlisted"] = "ablate_effect" in c
        c["chosen"] = c is best
    alpha, grid = add_alpha, None
    if add_alpha_grid:
        # Addition's strength is chosen on validation too: the alpha that raises benign refusal most.
        r = directions[best["layer"], position_index(best["position"], positions)].to(torch.float32)
        grid = []
        for a in sorted(set(float(x) for x in add_alpha_grid)):
            if a == add_alpha:  # measured already: the chosen candidate has its add pass
                rate = best["add_refusal_benign"]
            else:
                with steering(model, r, mode="add", layer=best["layer"], alpha=a):
                    rate = refusal_rate(list(val_benign))
            grid.append({"alpha": a, "add_refusal_benign": rate})
            progress(f"  alpha {a:g}: add {base_b:.2f}->{rate:.2f}")
        alpha = max(grid, key=lambda g: (g["add_refusal_benign"], -g["alpha"]))["alpha"]
    return Selection(best["layer"], best["position"], best["bypass"], baseline, cands, note, alpha, grid,
                     best["kl"], scan_info)
