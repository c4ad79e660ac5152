"""Refusal rates on the *validation* split: the read-out that settings are chosen with (``bench validate``).

    bench validate --profile default                     # every policy and steered variant
    bench validate --profile default --variant sft       # one

The leaderboard reports the test split; settings must be chosen without it. This scores a variant
(a trained policy, the base, or a steered view, loaded as the battery loads it) on the validation
prompts of the battery's four refusal sets (:data:`bench.eval.inputs.REFUSAL_SETS`: harmful, benign,
borderline-safe, unsafe contrast), uncapped, greedy, ``eval.max_new_tokens`` new tokens, judged by
the battery's refusal detector, and writes

- ``runs/<profile>/validation/<variant>.json``: the rates with their Wilson intervals (refuse +
  partial; :func:`bench.eval.measures.refusal_metrics`), the rates per category
  (:func:`bench.eval.paired.by_category`: harm category, XSTest-style type), the detector's version,
  the datasets' identities and the variant's config hash;
- ``runs/<profile>/validation/<variant>.generations.jsonl``: every prompt, answer and verdict, to read.

It is not a stage and writes no record: nothing here reaches the leaderboard.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.config import ProfileConfig
from bench.io import atomic_write_json, atomic_write_text
from bench.runs import validation_dir

SPLIT = "validation"


def out_dir(cfg: ProfileConfig) -> Path:
    return validation_dir(cfg.profile.name)


def score(cfg: ProfileConfig, model, tok, sets: dict[str, list[dict]]) -> tuple[dict, dict, list[dict]]:
    """(metrics, per-category rates, generation rows) of one loaded policy on ``sets``."""
    from bench.eval import refusal
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.measures import judged_sets
    from bench.eval.paired import by_category

    keys = [k for k, rows in sets.items() if rows]
    prompts = [r["prompt"] for k in keys for r in sets[k]]
    outs = generate_greedy(model, tok, prompts, cfg.model.system_prompt,
                           GenerationSettings(cfg.eval.max_new_tokens, cfg.eval.batch_size), desc="validation")
    metrics, rows = judged_sets(sets, keys, outs, refusal.detect_many(outs, prompts))
    return metrics, by_category(rows, keys), rows


def run_validation(cfg: ProfileConfig, variant: str | None = None) -> dict[str, dict]:
    """Score ``variant`` (default: every policy and steered variant of the profile) on the validation
    split; ``{variant: metrics}``, also written under ``runs/<profile>/validation/``."""
    import torch

    from bench.eval.inputs import refusal_sets
    from bench.eval.refusal import identity
    from bench.variants import discover, load_policy

    found = [v for v in discover(cfg.profile.name) if v.evaluable]
    chosen = [v for v in found if variant in (None, v.name)]
    if not chosen:
        raise ValueError(f"validate: no policy or steered variant {variant!r} under runs/{cfg.profile.name}/ "
                         f"(have: {', '.join(v.name for v in found) or 'none'})")
    sets, idents = refusal_sets(cfg, SPLIT, capped=False)
    out = out_dir(cfg)
    result: dict[str, dict] = {}
    for v in chosen:
        with torch.no_grad(), load_policy(v, cfg) as (model, tok):
            metrics, cats, rows = score(cfg, model, tok, sets)
        atomic_write_json(out / f"{v.name}.json", {
            "variant": v.name, "config_hash": v.config_hash, "split": SPLIT, "metrics": metrics, "by_category": cats,
            "max_new_tokens": cfg.eval.max_new_tokens, "detector": identity(),
            "datasets": idents})
        atomic_write_text(out / f"{v.name}.generations.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        result[v.name] = metrics
        line = ", ".join(f"{k} {m['value']:.3f} (n {m['n']})" for k, m in metrics.items()
                         if not k.endswith(("_full", "_partial")))
        print(f"validate {v.name}: {line}")
    return result
