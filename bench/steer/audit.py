"""Layerwise refusal-direction audit across checkpoints (issues 7 and 12).

Part of ``make steer`` (variant ``steer-audit``). For the base policy and every trained checkpoint
with a run record (any stage other than base/steer/reward/cost/eval that has
``artifacts["model_dir"]``, plus the intermediate checkpoints it lists in ``artifacts["checkpoints"]``),
and for every layer (hidden-state index ``1 .. n_layers``: the output of block ``l - 1``), at
the position chosen by the steering selection:

- ``norm``: the norm of the difference of means (harmful minus benign training prompts);
- ``separability``: the held-out standardised effect size (Cohen's d, pooled SD) of the *validation*
  prompts' projections on this checkpoint's unit direction, harmful vs benign. Chosen over a linear
  probe because it needs no fitting, is one number per layer, and reads directly as "how far apart
  the two groups are along the direction, in standard deviations";
- ``cos_base``: the cosine between this checkpoint's direction and the base's at the same layer.

Groups are prompt labels (not behaviour), so every checkpoint is measured on the same prompts.
The table is stored in the record (``extra["audit"]``); :mod:`bench.steer.audit_table` renders it
(markdown for the leaderboard, a PNG) without torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from bench.steer.audit_table import METRICS
from bench.steer.directions import activations, cohens_d

EXCLUDED_STAGES = ("base", "steer", "reward", "cost", "eval")


# --------------------------------------------------------------------------- checkpoints


def discover_checkpoints(profile: str, base_model_dir: str | None = None) -> list[dict]:
    """Base first, then each trained variant's intermediate checkpoints (by step) and final model.

    Each entry: ``{name, variant, stage, step, fraction, model_dir, config_hash}``. A record that
    cannot be read is skipped (the audit reports what exists; other stages own their records)."""
    from bench.records import RecordError
    from bench.runs import find_record, iter_records

    out: list[dict] = []
    base = None
    try:
        base = find_record(profile, "base")
    except RecordError:
        base = None
    bdir = (base or {}).get("artifacts", {}).get("model_dir") or base_model_dir
    if bdir:
        out.append({"name": "base", "variant": "base", "stage": "base", "step": None, "fraction": None,
                    "model_dir": str(bdir), "config_hash": (base or {}).get("config_hash")})
    for rec in iter_records(profile):
        out += record_checkpoints(rec)
    return out


def record_checkpoints(rec: dict) -> list[dict]:
    """The audit's entries for one record: a trained variant's kept checkpoints (by step), then its final
    model; none for a stage the audit leaves out or a record without a model."""
    arts = rec.get("artifacts") or {}
    final = arts.get("model_dir")
    if rec["stage"] in EXCLUDED_STAGES or not final:
        return []
    out, seen = [], set()
    for ck in sorted(arts.get("checkpoints") or [], key=lambda c: c.get("step", 0)):
        mdir = ck.get("model_dir")
        if not mdir or mdir == final or mdir in seen:
            continue
        seen.add(mdir)
        out.append({"name": f"{rec['variant']}@{ck.get('step')}", "variant": rec["variant"], "stage": rec["stage"],
                    "step": ck.get("step"), "fraction": ck.get("fraction"), "model_dir": str(mdir),
                    "config_hash": rec["config_hash"]})
    out.append({"name": rec["variant"], "variant": rec["variant"], "stage": rec["stage"], "step": None,
                "fraction": 1.0, "model_dir": str(final), "config_hash": rec["config_hash"]})
    return out


# --------------------------------------------------------------------------- measurements


def layer_stats(model, tok, train_harm: Sequence[str], train_benign: Sequence[str], val_harm: Sequence[str],
                val_benign: Sequence[str], position_index: int, positions: int, system_prompt: str | None,
                batch_size: int = 16) -> dict:
    """Per layer (hidden index ``1 .. n_layers``): direction ``(L, H)``, ``norm`` and ``separability``."""
    args = dict(system_prompt=system_prompt, positions=positions, batch_size=batch_size, position_index=position_index)
    th = activations(model, tok, train_harm, **args)[:, 1:].to(torch.float64)  # (N, L, H)
    tb = activations(model, tok, train_benign, **args)[:, 1:].to(torch.float64)
    direction = th.mean(0) - tb.mean(0)  # (L, H)
    unit = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    vh = activations(model, tok, val_harm, **args)[:, 1:].to(torch.float64)
    vb = activations(model, tok, val_benign, **args)[:, 1:].to(torch.float64)
    d = cohens_d((vh * unit).sum(-1), (vb * unit).sum(-1))  # (L,)
    return {"direction": direction, "norm": direction.norm(dim=-1), "separability": d}


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def build_table(checkpoints: Sequence[dict], stats: Sequence[dict], position: int) -> dict:
    """Assemble the record table; ``stats[i]`` from :func:`layer_stats` for ``checkpoints[i]``
    (``checkpoints[0]`` is the base). Metric matrices are ``[layer][checkpoint]``."""
    if not stats:
        raise ValueError("audit: no checkpoints measured")
    n_layers = stats[0]["direction"].shape[0]
    base_dir = stats[0]["direction"]
    metrics: dict[str, list[list[float | None]]] = {m: [[None] * len(stats) for _ in range(n_layers)] for m in METRICS}
    unchanged: list[list[int]] = []  # per checkpoint: layers whose direction is bit-identical to the base's
    for j, s in enumerate(stats):
        cos = torch.nn.functional.cosine_similarity(s["direction"], base_dir, dim=-1)  # (L,)
        for i in range(n_layers):
            metrics["norm"][i][j] = _num(s["norm"][i])
            metrics["separability"][i][j] = _num(s["separability"][i])
            metrics["cos_base"][i][j] = _num(cos[i])
        same = [] if j == 0 else [i + 1 for i in range(n_layers) if torch.equal(s["direction"][i], base_dir[i])]
        unchanged.append(same)
    return {
        "layers": list(range(1, n_layers + 1)),
        "layer_note": "hidden-state index: l = output of decoder block l-1 (residual stream, before the final norm)",
        "position": position,
        "grouping": "label",
        "separability": "held-out Cohen's d of validation projections on the train direction",
        "checkpoints": [{k: c.get(k) for k in ("name", "variant", "stage", "step", "fraction", "model_dir")}
                        for c in checkpoints],
        "metrics": metrics,
        # Layers where a checkpoint's difference of means equals the base's bit for bit: hidden states its
        # training could not reach (blocks frozen by ``trainable: top_layers``), not a measured absence of change.
        "unchanged_layers": unchanged,
    }


def run_audit(checkpoints: Sequence[dict], load: Callable[[str], tuple], prompts: dict, position: int, positions: int,
              system_prompt: str | None, batch_size: int = 16,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Measure every checkpoint (``load(model_dir) -> (model, tok)``); ``prompts`` has keys
    ``train_harmful, train_benign, val_harmful, val_benign``."""
    from bench.steer.directions import position_index

    stats, measured = [], {}
    for ck in checkpoints:
        key = str(Path(ck["model_dir"]).resolve())
        if key in measured:  # one folder listed twice (a run's step 0 is its initial policy): same numbers
            progress(f"audit: {ck['name']} = {measured[key][0]}")
            stats.append(measured[key][1])
            continue
        progress(f"audit: {ck['name']} ({ck['model_dir']})")
        model, tok = load(ck["model_dir"])
        s = layer_stats(model, tok, prompts["train_harmful"], prompts["train_benign"], prompts["val_harmful"],
                        prompts["val_benign"], position_index(position, positions), positions, system_prompt,
                        batch_size)
        stats.append(s)
        measured[key] = (ck["name"], s)
        del model
    table = build_table(checkpoints, stats, position)
    table["n"] = {k: len(v) for k, v in prompts.items()}
    return table


# --------------------------------------------------------------------------- rendering
