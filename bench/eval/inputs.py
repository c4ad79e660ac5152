"""The battery's inputs: held-out prompt sets and pairs, what one variant is scored on, and the base's caches.

Part of ``make eval`` (``bench eval --profile P``, :mod:`bench.eval.battery`). Three things live here
because every step of the battery reads them and none of them depends on the scored model:

- :func:`load_inputs`: the held-out (``test``) sets of the profile's data roles, capped by ``eval.n_*``;
- :func:`plan`: the prompts of one run in the order they are generated (refusal sets, then
  helpfulness), the pairs, and the keys of the base's caches (a hash of everything a cached result
  depends on: the texts, system prompt, settings, the base's record and dtype);
- :class:`BaseCache`: the base's pair log-probs and helpfulness answers, computed once per base and
  reused by every other variant (``runs/<p>/eval/base/cache/<kind>.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench.config import ProfileConfig
from bench.io import atomic_write_json, json_sha256
from bench.runs import EVAL_STAGE, run_dir

# The refusal sets: (metric prefix, data role, label filter, cap field)
REFUSAL_SETS = (
    ("refusal_harmful", "harmful", ("harmful",), "n_harmful"),
    ("over_refusal_benign", "benign", ("benign",), "n_benign"),
    ("over_refusal_borderline", "borderline", ("borderline",), "n_borderline"),
    ("refusal_unsafe_contrast", "borderline", ("unsafe-contrast",), "n_borderline"),
)


def sha(obj) -> str:
    """sha256 of an object's canonical JSON (sorted keys, UTF-8 as is): the battery's cache and config keys."""
    return json_sha256(obj, ensure_ascii=False)


def _cap(rows: list[dict], n: int) -> list[dict]:
    return rows[:n] if n else rows


def pairs_policy(cfg: ProfileConfig) -> str:
    """How preference rows become (chosen, rejected) pairs: DPO's policy, so the battery scores what DPO trains on."""
    return cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better"


def refusal_sets(cfg: ProfileConfig, split: str, capped: bool = True) -> tuple[dict, dict]:
    """``({metric prefix: rows}, {dataset key: identity})``: the four refusal sets of
    :data:`REFUSAL_SETS` from ``split`` of the profile's data, each capped by its ``eval.n_*`` unless
    ``capped`` is false."""
    from bench.data import load_role, select_label

    sets: dict[str, list[dict]] = {}
    idents: dict[str, dict] = {}
    loaded: dict[str, object] = {}
    for prefix, role, labels, cap_field in REFUSAL_SETS:
        if role not in loaded:
            ds = load_role(cfg.data, role, split)
            loaded[role] = ds
            idents[f"{role}/{split}"] = ds.identity
        rows = loaded[role].rows
        if any("label" in r for r in rows):
            rows = select_label(rows, *labels)
        sets[prefix] = _cap(rows, getattr(cfg.eval, cap_field) if capped else 0)
    return sets, idents


def load_inputs(cfg: ProfileConfig) -> tuple[dict, dict]:
    """The battery's held-out inputs: ``({set: rows}, {dataset key: identity})``.

    Sets: the four refusal sets of :data:`REFUSAL_SETS`, ``pairs`` (chosen/rejected dicts) and
    ``helpfulness`` (rows with ``instruction`` and ``reference``)."""
    from bench.data import dpo_pairs, load_role

    ev = cfg.eval
    sets, idents = refusal_sets(cfg, "test")
    prefs = load_role(cfg.data, "preferences", "test")
    idents["preferences/test"] = prefs.identity
    policy = pairs_policy(cfg)
    pairs = dpo_pairs(prefs.rows, policy) if prefs.schema == "pku" else [dict(r) for r in prefs.rows]
    sets["pairs"] = _cap(pairs, ev.n_pairs)
    helpful = load_role(cfg.data, "helpfulness", "test")
    idents["helpfulness/test"] = helpful.identity
    sets["helpfulness"] = _cap(helpful.rows, ev.n_helpfulness)
    return sets, idents


@dataclass(frozen=True)
class Plan:
    """What one variant is scored on. ``prompts`` are generated in this order: every non-empty refusal
    set (``refusal_keys``, in :data:`REFUSAL_SETS` order), then ``help_prompts``."""

    sets: dict
    idents: dict
    refusal_keys: list[str]
    help_prompts: list[str]
    pairs: list[dict]
    prompts: list[str]
    pairs_key: str  # BaseCache key of the base's pair log-probs
    help_key: str  # BaseCache key of the base's helpfulness answers

    @property
    def n_refusal(self) -> int:
        """How many of :attr:`prompts` are refusal prompts (the rest are helpfulness prompts)."""
        return len(self.prompts) - len(self.help_prompts)


def plan(cfg: ProfileConfig, inputs: tuple[dict, dict], base_fingerprint: dict | None) -> Plan:
    """The prompts and pairs of a battery run, and the base caches' keys (see :class:`Plan`)."""
    sets, idents = inputs
    ev, sp = cfg.eval, cfg.model.system_prompt
    refusal_keys = [k for k, *_ in REFUSAL_SETS if sets[k]]
    help_prompts = [r["instruction"] for r in sets["helpfulness"]]
    pairs = sets["pairs"]
    prompts = [r["prompt"] for k in refusal_keys for r in sets[k]] + help_prompts
    pairs_key = sha({"pairs": [[p["prompt"], p.get("history"), p["chosen"], p["rejected"]] for p in pairs],
                     "sp": sp, "max_length": ev.max_length, "bs": ev.score_batch_size, "base": base_fingerprint,
                     "dtype": cfg.model.dtype})
    help_key = sha({"prompts": help_prompts, "sp": sp, "gen": [ev.max_new_tokens, ev.batch_size],
                    "base": base_fingerprint, "dtype": cfg.model.dtype})
    return Plan(sets, idents, refusal_keys, help_prompts, pairs, prompts, pairs_key, help_key)


class BaseCache:
    """JSON files in ``runs/<p>/eval/base/cache/`` keyed by a hash of everything they depend on."""

    def __init__(self, profile: str):
        self.dir = run_dir(profile, "base", stage=EVAL_STAGE) / "cache"

    def get(self, kind: str, key: str):
        path = self.dir / f"{kind}.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return data.get("value") if data.get("key") == key else None

    def put(self, kind: str, key: str, value) -> None:
        atomic_write_json(self.dir / f"{kind}.json", {"key": key, "value": value})
