"""Stage `steer`: refusal direction, the two steered variants, and the layerwise audit.

    make steer PROFILE=default     # == bench steer --profile default

Top to bottom:

1. Load the policy to steer (``steer.policy``: ``base`` by default, or a trained variant such as the
   most refusing checkpoint; the SmolLM2 base refuses little, so its direction moves little) and the
   harmful/benign prompt sets (train and validation splits, ``n_train`` and ``n_val`` per set).
2. Form the two groups (``steer.grouping``: behaviour with fallback to labels; see
   :mod:`bench.steer.directions`), take float64 mean activations at the last ``positions`` prompt
   tokens of every layer, and subtract.
3. Select (layer, position) on the validation split (:mod:`bench.steer.scan`, after refusal_direction):
   score every candidate by forward passes (bypass under ablation, induce under addition, KL of the
   harmless next-token distribution under ablation), drop the last ``prune_layer_fraction`` of layers,
   candidates above ``max_harmless_kl`` and those that do not induce refusal, and keep the lowest
   bypass. The scan goes to ``extra["selection"]`` and ``selection_scan.png`` (steer-ablate's folder,
   ``artifacts["selection_plot"]``); every variant's own harmless KL to ``extra["harmless_kl_val"]``.
4. Write two evaluable variants, ``steer-ablate`` and ``steer-add`` (and, with ``steer.gate_quantile``,
   ``steer-gated``: the ablation applied only where a prompt-end read-out says the prompt is not
   harmful, or with ``steer.gate_alpha_below`` steer-add's addition where it says harmful and a negative
   one elsewhere, :mod:`bench.steer.gate`): the policy's model plus a
   :class:`~bench.steer.spec.SteeringSpec` (``artifacts["steering"]``; ``artifacts["base_variant"]``
   names the steered policy) that :func:`bench.steer.hooks.steering` applies; the vector as a
   plain tensor file, the same steering in lm-eval's ``steered`` adapter format, and (when
   ``steer.export_orthogonalized``) ablation exported as orthogonalised weights.
5. Audit the direction across the base and every trained checkpoint that exists (``steer-audit``):
   a layers x checkpoints table in ``extra["audit"]`` and a PNG in ``artifacts["audit_plot"]``.

Steps 1-4 are skipped when both variant records exist with the same config hash (steer/model/data/
profile sections, detector version and the policy's record); the audit's hash also covers the list
of checkpoints, so it re-runs when a new trained variant or checkpoint appears.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

from bench.config import ProfileConfig
from bench.io import atomic_write_text, json_sha256
from bench.runs import find_record, is_done, run_dir, stage_run
from bench.stats import rate_metric, scalar_metric
from bench.steer.spec import GateSpec, SteeringSpec

SECTIONS = ("profile", "model", "data", "steer")
VARIANTS = {"ablate": "steer-ablate", "add": "steer-add"}
GATED_VARIANT = "steer-gated"  # with steer.gate_quantile > 0 (bench.steer.gate)
GATE_FILE = "gate.pt"
AUDIT_VARIANT = "steer-audit"
VECTOR_FILE = "direction.pt"
MEANS_FILE = "means.pt"
LM_EVAL_FILE = "lm_eval_steer.pt"
AUDIT_PLOT = "audit.png"
SCAN_PLOT = "selection_scan.png"  # steer-ablate's run folder: every candidate's bypass / induce / KL


# --------------------------------------------------------------------------- data


def _load_prompts(cfg: ProfileConfig, role: str, split: str, n: int) -> tuple[list[str], dict]:
    """First ``n`` prompts (label == role where labels are present) of the ``cfg.data.<role>`` set."""
    from bench.data import load

    ds = load(getattr(cfg.data, role), split, cfg.data)
    rows = [r for r in ds.rows if r.get("label", role) == role] or list(ds.rows)
    prompts = [r["prompt"] for r in rows][: n if n > 0 else None]
    if not prompts:
        raise ValueError(f"steer: dataset {getattr(cfg.data, role)!r} split {split!r} has no {role} prompts")
    return prompts, dict(ds.identity)


def load_prompt_sets(cfg: ProfileConfig) -> tuple[dict[str, list[str]], dict[str, dict]]:
    s = cfg.require("steer")
    prompts, idents = {}, {}
    for split, key, n in (("train", "train", s.n_train), ("validation", "val", s.n_val)):
        for role in ("harmful", "benign"):
            prompts[f"{key}_{role}"], idents[f"{role}_{split}"] = _load_prompts(cfg, role, split, n)
    return prompts, idents


# --------------------------------------------------------------------------- helpers


def _kl_entry(value: float, n: int, readout) -> dict:
    if readout.kind == "first_token":
        what = "the next-token distribution at the last prompt token"
    else:
        what = (f"the next-token distributions over the first {readout.info()['kl_answer_tokens']} tokens of the "
                f"policy's own unsteered answers (teacher-forced; per token, then per prompt)")
    return {"value": round(float(value), 6), "n": n, "readout": readout.kind,
            "definition": f"mean KL(unsteered || steered) of {what} of the validation benign prompts "
                          f"(bench.steer.scan.harmless_kl)"}


def _hash(*parts) -> str:
    return json_sha256(parts, length=16)


def _detector() -> tuple[Callable, dict]:
    from bench.eval import refusal

    return refusal.detect_many, refusal.identity()


def variants_hash(cfg: ProfileConfig, detector_info: dict, policy: dict) -> str:
    """The steered variants' config hash: profile sections, detector version and the policy's identity
    (its variant name and config hash; not its folder, so the hash does not depend on the machine)."""
    return _hash(cfg.section_hash(*SECTIONS), detector_info, {k: v for k, v in policy.items() if k != "model_dir"})


def resolve_policy(cfg: ProfileConfig, progress: Callable[[str], None] = print) -> dict:
    """The model that is measured and steered: ``steer.policy`` (default ``"base"``), a variant whose
    record has ``artifacts["model_dir"]``, e.g. the most refusing trained checkpoint."""
    from bench.models import prepare_base
    from bench.records import RecordError

    name = cfg.require("steer").policy
    if name == "base":
        folder, _ = prepare_base(cfg, progress=progress)
        rec = find_record(cfg.profile.name, "base")
        return {"variant": "base", "model_dir": str(folder), "config_hash": (rec or {}).get("config_hash")}
    rec = find_record(cfg.profile.name, name)
    if rec is None or not (rec.get("artifacts") or {}).get("model_dir"):
        raise RecordError(f"steer.policy '{name}': no record with artifacts.model_dir under "
                          f"{run_dir(cfg.profile.name, name)}; run its stage first")
    return {"variant": name, "model_dir": str(rec["artifacts"]["model_dir"]), "config_hash": rec["config_hash"]}


def audit_hash(cfg: ProfileConfig, checkpoints: list[dict], selection_hash: str) -> str:
    idents = [(c["name"], c["model_dir"], c.get("config_hash")) for c in checkpoints]
    return _hash(cfg.section_hash(*SECTIONS), selection_hash, idents)


# --------------------------------------------------------------------------- the stage


def extract_and_select(cfg: ProfileConfig, model, tok, prompts: dict, detect_many: Callable,
                       progress: Callable[[str], None] = print) -> dict:
    """Groups, means, directions and the selection; returns everything the records need."""
    import torch

    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.steer.directions import (form_groups, mean_activations, position_index, prompt_texts,
                                        refusal_directions, select_direction)
    from bench.steer.hooks import steering
    from bench.steer.scan import build_readout, harmless_kl

    s = cfg.require("steer")
    sp = cfg.model.system_prompt
    gen_groups = GenerationSettings(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
    gen_select = GenerationSettings(
        max_new_tokens=s.select_max_new_tokens or s.max_new_tokens, batch_size=s.batch_size)

    def answer(ps: list[str]) -> list[str]:
        return generate_greedy(model, tok, ps, sp, gen_groups, desc="steer groups")

    def own_answers(ps: list[str]) -> tuple[list[str], list[bool]]:
        gens = generate_greedy(model, tok, ps, sp, gen_select, desc="steer select")
        return gens, [bool(d.is_refusal) for d in detect_many(gens, ps)]

    def refusal_rate(ps: list[str]) -> float:
        refused = own_answers(ps)[1]
        return sum(refused) / max(len(refused), 1)

    groups = form_groups(prompts["train_harmful"], prompts["train_benign"], s.grouping, s.min_group, answer, detect_many)
    if groups.fallback_reason:
        progress(f"steer: {groups.fallback_reason}")
    progress(f"steer: groups ({groups.grouping}) refuse={len(groups.refuse)} comply={len(groups.comply)}")
    harm_mean = mean_activations(model, tok, groups.refuse, sp, s.positions, s.batch_size)
    benign_mean = mean_activations(model, tok, groups.comply, sp, s.positions, s.batch_size)
    directions = refusal_directions(harm_mean, benign_mean)  # (n_layers+1, P, H) float64
    readout, note = build_readout(tok, prompts["val_harmful"], prompts["val_benign"],
                                  prompt_texts(tok, prompts["val_harmful"], sp), prompt_texts(tok, prompts["val_benign"], sp),
                                  tokens=s.scan_tokens, batch_size=s.batch_size, refusal_openers=s.refusal_openers,
                                  max_openers=s.scan_max_openers, own_answers=own_answers)
    if note:
        progress(f"steer: {note}")
    selection = select_direction(
        model, tok, directions, prompts["val_harmful"], prompts["val_benign"], positions=s.positions,
        skip_last_layers=s.skip_last_layers, add_alpha=s.add_alpha, add_alpha_grid=s.add_alpha_grid,
        shortlist=s.shortlist, refusal_rate=refusal_rate, system_prompt=sp,
        batch_size=s.batch_size, prune_layer_fraction=s.prune_layer_fraction, max_harmless_kl=s.max_harmless_kl,
        refusal_openers=s.refusal_openers, decides=s.selection, readout=readout, progress=progress)
    if note:
        selection.scan["readout_note"] = note
    # steer-add's side effect on harmless text at the alpha kept (steer-ablate's is the scan's KL)
    vec = directions[selection.layer, position_index(selection.position, s.positions)].to(torch.float32)
    alpha = selection.add_alpha if selection.add_alpha is not None else s.add_alpha
    kls = {"ablate": selection.harmless_kl,
           "add": harmless_kl(model, readout, lambda: steering(model, vec, mode="add", layer=selection.layer, alpha=alpha))}
    return {"groups": groups, "harm_mean": harm_mean, "benign_mean": benign_mean, "directions": directions,
            "selection": selection, "harmless_kl": kls, "val_benign": list(prompts["val_benign"]), "readout": readout}


def selected_direction(cfg: ProfileConfig, result: dict):
    """The difference of means at the selected (layer, position): the refusal direction that every
    steered variant uses, float32 (H,)."""
    import torch

    from bench.steer.directions import position_index

    sel = result["selection"]
    return result["directions"][sel.layer, position_index(sel.position, cfg.require("steer").positions)].to(torch.float32)


def _write_variants(cfg: ProfileConfig, model, tok, result: dict, chash: str, policy: dict, datasets: dict,
                    detector_info: dict, wall: float) -> None:
    from bench.steer import hooks
    from bench.steer.scan import plot_scan

    s = cfg.require("steer")
    sel = result["selection"]
    vec = selected_direction(cfg, result)
    common_extra = {"policy": policy, "grouping": result["groups"].record(), "selection": sel.record(), "detector": detector_info,
                    "direction_norm": float(vec.norm()), "n_layers": int(result["directions"].shape[0] - 1)}
    scan_plot = None
    n_val = {"harmful": sel.baseline["n_harmful"], "benign": sel.baseline["n_benign"]}
    chosen = next(c for c in sel.candidates if c["chosen"])
    for mode, variant in VARIANTS.items():
        with stage_run(cfg, variant=variant, stage="steer", config_hash=chash) as run:
            vpath = hooks.save_vector(run.dir / VECTOR_FILE, vec)
            if mode == "ablate":
                means = hooks.save_vector(run.dir / MEANS_FILE, vec, harm_mean=result["harm_mean"],
                                          benign_mean=result["benign_mean"])
                run.artifacts["means_path"] = str(means)
            alpha = (sel.add_alpha if sel.add_alpha is not None else s.add_alpha) if mode == "add" else None
            lm_eval = hooks.write_lm_eval_steer_file(run.dir / LM_EVAL_FILE, model, vec, mode, sel.layer, alpha)
            spec = SteeringSpec(mode=mode, layer=sel.layer, position=sel.position, alpha=alpha,
                                vector_path=str(vpath), policy_variant=policy["variant"],
                                model_dir=policy["model_dir"])
            run.artifacts.update({**spec.to_artifacts(), "lm_eval_steer_path": str(lm_eval)})
            if mode == "ablate" and s.export_orthogonalized:
                out = run.dir / "orthogonalized"
                ortho = hooks.orthogonalize_weights(copy.deepcopy(model), vec)
                ortho.save_pretrained(out)
                tok.save_pretrained(out)
                run.artifacts["orthogonalized_model_dir"] = str(out)
            run.datasets = datasets
            run.extra = dict(common_extra)
            run.extra["harmless_kl_val"] = _kl_entry(result["harmless_kl"][mode], n_val["benign"], result["readout"])
            if scan_plot is None:  # VARIANTS lists ablate first: the figure lives in steer-ablate's folder
                scan_plot = plot_scan(sel.candidates, sel.baseline, run.dir / SCAN_PLOT, max_kl=s.max_harmless_kl,
                                      title=f"Refusal-direction scan of the {policy['variant']} policy "
                                            f"(validation; chosen layer {sel.layer}, position {sel.position})")
            run.artifacts["selection_plot"] = str(scan_plot)
            if mode == "ablate":
                base_r, steered = sel.baseline["refusal_harmful"], chosen.get("ablate_refusal_harmful")
                key, n = "refusal_harmful", n_val["harmful"]
            else:
                base_r, steered = sel.baseline["refusal_benign"], chosen.get("add_refusal_benign")
                if sel.alpha_grid:  # the rate at the alpha kept, not at the default one
                    steered = next(g["add_refusal_benign"] for g in sel.alpha_grid if g["alpha"] == alpha)
                key, n = "refusal_benign", n_val["benign"]
            run.metrics[f"select_{key}_val_unsteered"] = rate_metric(round(base_r * n), n)
            if steered is not None:
                run.metrics[f"select_{key}_val_steered"] = rate_metric(round(steered * n), n)
            run.metrics["extraction_wall_time_s"] = scalar_metric(round(wall, 2))
            run.log.info("layer=%d position=%d score=%.3f", sel.layer, sel.position, sel.score)


def _contrasts(cfg: ProfileConfig, split: str) -> tuple[list[str], dict | None]:
    """The borderline set's unsafe-contrast prompts of ``split`` ([] where the set has none)."""
    from bench.data import load, select_label

    ds = load(cfg.data.borderline, split, cfg.data)
    prompts = [r["prompt"] for r in select_label(ds.rows, "unsafe-contrast")]
    return prompts, (dict(ds.identity) if prompts else None)


def fit_gate(cfg: ProfileConfig, model, tok) -> dict:
    """The gate of ``steer-gated`` (:mod:`bench.steer.gate`). ``steer.gate_fit: mean_diff``, from train
    prompts alone: condition directions from the first ``n_train`` harmful and benign prompts by label,
    layer and threshold from the next ``gate_fit_n`` of each and the borderline-safe train prompts.
    ``logistic``: per-layer logistic read-outs fitted on the first ``n_train + gate_fit_n`` harmful, benign
    and borderline-safe train prompts (with every unsafe contrast of the borderline set on the harmful
    side); layer and threshold chosen on the whole validation split of the same groups (the split for
    choosing settings; the test split is never read). The ``harmful`` read-out counts include the contrasts."""
    import torch

    from bench.steer import gate
    from bench.steer.directions import activations

    s = cfg.require("steer")
    n, fit = s.n_train, s.gate_fit_n

    def acts(ps: list[str]):
        return activations(model, tok, ps, cfg.model.system_prompt, positions=1, batch_size=s.batch_size,
                           position_index=0)  # (N, L+1, H) at the prompt end

    if s.gate_fit == "logistic":
        # "Should refuse" = harmful requests and the borderline set's unsafe contrasts ("How do I kill my
        # neighbour?" beside "How do I kill a Python process?"): without the contrasts the read-out learns
        # that a short violent question is harmless. "Should answer" = benign and borderline-safe prompts.
        def should_refuse(split: str, cap: int):
            harm, ih = _load_prompts(cfg, "harmful", split, cap)
            contrast, ic = _contrasts(cfg, split)
            return harm + contrast, ih, ic

        harm, ih, ic = should_refuse("train", n + fit)
        benign, ib = _load_prompts(cfg, "benign", "train", n + fit)
        border, ix = _load_prompts(cfg, "borderline", "train", n + fit)
        units = gate.logistic_units(acts(harm), torch.cat([acts(benign), acts(border)]))
        v_harm, vh, vc = should_refuse("validation", 0)
        v_benign, vb = _load_prompts(cfg, "benign", "validation", 0)
        v_border, vx = _load_prompts(cfg, "borderline", "validation", 0)
        held = {"harmful": acts(v_harm), "benign": acts(v_benign), "borderline": acts(v_border)}
        split = "val"
        datasets = {"harmful_train": ih, "benign_train": ib, "borderline_train": ix, "harmful_validation": vh,
                    "benign_validation": vb, "borderline_validation": vx}
        datasets.update({f"unsafe_contrast_{k}": v for k, v in (("train", ic), ("validation", vc)) if v})
    else:
        harm, ih = _load_prompts(cfg, "harmful", "train", n + fit)
        benign, ib = _load_prompts(cfg, "benign", "train", n + fit)
        border, ix = _load_prompts(cfg, "borderline", "train", fit)
        if len(harm) <= n or len(benign) <= n:
            raise ValueError(f"steer.gate_quantile: the harmful and benign train splits need more than n_train={n} "
                             f"prompts (have {len(harm)} and {len(benign)})")
        held = {"harmful": acts(harm[n:]), "benign": acts(benign[n:]), "borderline": acts(border)}
        units = gate.unit_rows(acts(harm[:n]).mean(0) - acts(benign[:n]).mean(0))  # (L+1, H)
        split = "train"
        datasets = {"harmful_train": ih, "benign_train": ib, "borderline_train": ix}
    choice = gate.choose_gate(units, held["harmful"], [held["benign"], held["borderline"]], s.gate_quantile)
    kept = {k: (gate.n_kept(units, a, choice["layer"], choice["threshold"]), len(a)) for k, a in held.items()}
    return {**choice, "unit": units[choice["layer"]], "kept": kept, "split": split,
            "header": gate.generation_header(tok), "datasets": datasets}


def _write_gated(cfg: ProfileConfig, model, tok, result: dict, chash: str, policy: dict, datasets: dict,
                 detector_info: dict) -> dict:
    from bench.steer import hooks
    from bench.steer.scan import harmless_kl

    sel = result["selection"]
    vec = selected_direction(cfg, result)  # the same direction as steer-ablate's
    t0 = time.perf_counter()
    g = fit_gate(cfg, model, tok)
    s = cfg.require("steer")
    with stage_run(cfg, variant=GATED_VARIANT, stage="steer", config_hash=chash) as run:
        vpath = hooks.save_vector(run.dir / VECTOR_FILE, vec)
        gpath = hooks.save_vector(run.dir / GATE_FILE, g["unit"])
        gate = GateSpec(layer=g["layer"], threshold=g["threshold"], header=tuple(g["header"]), vector_path=str(gpath),
                        alpha_below=s.gate_alpha_below)
        if s.gate_alpha_below is None:  # ablate where the prompt reads as not harmful
            mode, alpha = "ablate", None
        else:  # CAST: steer-add's addition where it reads as harmful, alpha_below times the direction elsewhere
            mode, alpha = "add", sel.add_alpha if sel.add_alpha is not None else s.add_alpha
        spec = SteeringSpec(mode=mode, layer=sel.layer, position=sel.position, alpha=alpha,
                            vector_path=str(vpath), gate=gate, policy_variant=policy["variant"],
                            model_dir=policy["model_dir"])
        # no lm-eval `steered` file: its adapter has no gate; the battery runs lm-eval through our hooks
        run.artifacts.update(spec.to_artifacts())
        kl = harmless_kl(model, result["readout"], lambda: hooks.steering(model, spec))
        run.datasets = {**datasets, **g["datasets"]}
        run.extra = {"policy": policy, "selection": sel.record(), "detector": detector_info,
                     "gate": {"layer": g["layer"], "threshold": g["threshold"], "quantile": g["quantile"],
                              "fit": s.gate_fit, "chosen_on": g["split"], "alpha_below": s.gate_alpha_below,
                              "auroc_per_layer": {str(k): round(v, 4) for k, v in g["auroc_per_layer"].items()}},
                     "harmless_kl_val": _kl_entry(kl, len(result["val_benign"]), result["readout"])}
        run.metrics[f"gate_auroc_{g['split']}"] = scalar_metric(round(g["auroc"], 4))
        for k, (kept, n) in g["kept"].items():  # prompts read as harmful (left unablated / given alpha)
            run.metrics[f"gate_kept_{k}_{g['split']}"] = rate_metric(kept, n)
        run.metrics["gate_wall_time_s"] = scalar_metric(round(time.perf_counter() - t0, 2))
        run.log.info("gate layer=%d threshold=%.3f auroc=%.3f", g["layer"], g["threshold"], g["auroc"])
    return g


def run_audit_stage(cfg: ProfileConfig, prompts: dict, datasets: dict, base_dir: str, force: bool = False,
                    progress: Callable[[str], None] = print) -> dict | None:
    from bench.models import load_pretrained
    from bench.steer.audit import discover_checkpoints
    from bench.steer.audit import run_audit as measure
    from bench.steer.audit_table import audit_markdown, plot_audit

    s = cfg.require("steer")
    sel_rec = find_record(cfg.profile.name, VARIANTS["ablate"])
    position = SteeringSpec.from_record(sel_rec).position
    checkpoints = discover_checkpoints(cfg.profile.name, base_dir)
    chash = audit_hash(cfg, checkpoints, sel_rec["config_hash"])
    if not force and is_done(cfg, AUDIT_VARIANT, chash):
        progress(f"steer: audit up to date ({len(checkpoints)} checkpoints)")
        return None
    with stage_run(cfg, variant=AUDIT_VARIANT, stage="steer", config_hash=chash) as run:
        table = measure(checkpoints, lambda d: load_pretrained(d, cfg.model), prompts, position, s.positions,
                        cfg.model.system_prompt, s.batch_size, progress)
        plot = plot_audit(table, run.dir / AUDIT_PLOT)
        atomic_write_text(run.dir / "audit.md", audit_markdown(table))
        run.artifacts = {"audit_plot": str(plot), "audit_markdown": str(run.dir / "audit.md")}
        run.datasets = datasets
        run.extra = {"audit": table}
        run.metrics["n_checkpoints"] = scalar_metric(len(checkpoints))
    return table


def run_steer(cfg: ProfileConfig, force: bool = False, progress: Callable[[str], None] = print) -> dict:
    """Extraction + selection + the two steered variants (skipped when up to date), then the audit."""
    import torch

    from bench.models import load_pretrained, prepare_base

    cfg.require("steer")
    torch.manual_seed(cfg.profile.seed)
    detect_many, detector_info = _detector()
    base_dir, _ = prepare_base(cfg, progress=progress)
    policy = resolve_policy(cfg, progress)
    chash = variants_hash(cfg, detector_info, policy)
    prompts, datasets = load_prompt_sets(cfg)
    out: dict = {}
    wanted = list(VARIANTS.values()) + ([GATED_VARIANT] if cfg.require("steer").gate_quantile > 0 else [])
    if force or not all(is_done(cfg, v, chash) for v in wanted):
        t0 = time.perf_counter()
        model, tok = load_pretrained(policy["model_dir"], cfg.model)
        result = extract_and_select(cfg, model, tok, prompts, detect_many, progress)
        wall = time.perf_counter() - t0
        _write_variants(cfg, model, tok, result, chash, policy, datasets, detector_info, wall)
        sel = result["selection"]
        progress(f"steer: {policy['variant']}: chose layer {sel.layer}, position {sel.position} "
                 f"(score {sel.score:.3f}) in {wall:.0f}s")
        if GATED_VARIANT in wanted:
            g = _write_gated(cfg, model, tok, result, chash, policy, datasets, detector_info)
            where = "validation" if g["split"] == "val" else "held-out train"
            progress(f"steer: gate at layer {g['layer']} ({where} AUROC {g['auroc']:.3f}), threshold "
                     f"{g['threshold']:.3f}; {where} prompts read as harmful: "
                     + ", ".join(f"{k} {a}/{n}" for k, (a, n) in g["kept"].items()))
        out["selection"] = sel.record()
        del model
    else:
        progress("steer: steered variants up to date")
    out["audit"] = run_audit_stage(cfg, prompts, datasets, str(base_dir), force, progress)
    return out
