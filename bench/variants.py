"""Variants of a profile: discovery from run records, and loading one as a policy to score.

The battery (``make eval`` / ``bench eval``) scores what :func:`discover` lists; this is the one place
that says what kind of variant a record is and how to load it (tests: ``tests/test_variants.py``)::

    from bench.variants import discover, load_policy
    for v in discover("default"):          # base first, then sft, dpo..., ppo..., steer-...
        if v.kind in ("policy", "steered"):
            with load_policy(v, cfg) as (model, tok):
                ...

Every run directory ``runs/<profile>/<variant>/record.json`` is a variant. What it is follows from
the record's stage:

- ``policy``: ``base``, ``sft``, ``dpo``, ``ppo`` records with ``artifacts.model_dir`` (a plain HF
  causal LM);
- ``steered``: ``steer`` records with ``artifacts.steering`` (a policy's model plus forward hooks:
  :class:`bench.steer.spec.SteeringSpec`, applied by :func:`bench.steer.hooks.steering`; the steered
  policy is :attr:`Variant.policy_variant`, recorded as ``artifacts["base_variant"]``);
- ``score``: ``reward`` / ``cost`` records (sequence classifiers: they get the RM/CM table, not the
  battery);
- ``audit``: the ``steer-audit`` record (a table and a plot, no model).

Records under ``runs/<profile>/eval/`` (the battery's own) and ``runs/<profile>/stages/`` are not
variants. Intermediate checkpoints listed in a record are not separate variants either.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.config import ProfileConfig
from bench.records import RecordError
from bench.runs import EVAL_STAGE, find_record, iter_records, run_dir, stage_rank
from bench.steer.spec import SteeringSpec

log = logging.getLogger(__name__)

POLICY_STAGES = ("base", "sft", "dpo", "ppo")
SCORE_STAGES = ("reward", "cost")


@dataclass(frozen=True)
class Variant:
    name: str
    stage: str
    kind: str  # "policy" | "steered" | "score" | "audit" | "other"
    config_hash: str
    record: dict
    model_dir: str | None

    @property
    def evaluable(self) -> bool:
        """Scored by the battery (policies and steered views of them)."""
        return self.kind in ("policy", "steered")

    @property
    def steering(self) -> SteeringSpec | None:
        """The steering spec of a steered variant (validated; paths as recorded), else None."""
        return SteeringSpec.from_record(self.record) if self.kind == "steered" else None

    @property
    def policy_variant(self) -> str:
        """The variant whose model this one runs: itself for a policy; the steered policy for a steered
        variant (the record's ``artifacts["base_variant"]``, ``"base"`` when absent)."""
        if self.kind == "steered":
            return self.steering.policy_variant or "base"
        return self.name

    @property
    def gated(self) -> bool:
        """A steered variant whose steering is gated per prompt (``steer-gated``, :mod:`bench.steer.gate`)."""
        return self.kind == "steered" and self.steering.gated

    @property
    def needs_whole_sequences(self) -> bool:
        """Must see each prompt and its response in one forward pass (no prefix KV cache): a gated
        steered variant reads the prompt to decide its steering (:mod:`bench.steer.gate`)."""
        return self.kind == "steered" and self.steering.needs_whole_sequences


def starting_point(v: Variant, cfg: ProfileConfig) -> str | None:
    """The variant a method started from, against which the battery measures it (preference columns
    "vs start" and the paired tests): none for the base; the base for SFT; ``dpo.policy_init`` /
    ``ppo.policy_init`` of the profile for DPO and PPO; the unsteered policy for a steered variant."""
    if v.name == "base" or v.kind not in ("policy", "steered"):
        return None
    if v.kind == "steered":
        return v.policy_variant
    if v.stage == "sft":
        return "base"
    section = getattr(cfg, v.stage, None) if v.stage in ("dpo", "ppo") else None
    return getattr(section, "policy_init", None) or "base"


def classify(record: dict) -> str:
    stage = record.get("stage")
    arts = record.get("artifacts") or {}
    if stage in SCORE_STAGES:
        return "score"
    if stage == "steer":
        if arts.get("steering"):
            return "steered"
        if (record.get("extra") or {}).get("audit") is not None or arts.get("audit_plot"):
            return "audit"
        return "other"
    if stage in POLICY_STAGES and arts.get("model_dir"):
        return "policy"
    return "other"


def from_record(record: dict) -> Variant:
    arts = record.get("artifacts") or {}
    return Variant(name=record["variant"], stage=record["stage"], kind=classify(record),
                   config_hash=record["config_hash"], record=record, model_dir=arts.get("model_dir"))


def sort_key(v: Variant) -> tuple:
    """Base first, then by stage (pipeline order), then by name."""
    return (v.name != "base", stage_rank(v.stage), v.name)


def discover(profile: str, root: Path | None = None) -> list[Variant]:
    """Every variant with a readable record under ``runs/<profile>/`` (unreadable ones are logged
    and skipped: the stage that owns them reports the error when it runs)."""
    return sorted((from_record(rec) for rec in iter_records(profile, root) if rec["stage"] != EVAL_STAGE), key=sort_key)


def policy_dir(v: Variant, profile: str) -> Path:
    """The model folder of a policy or of a steered variant (its steered policy's), checked to exist."""
    from bench.models import ModelError

    mdir = v.model_dir
    if v.kind == "steered" and not mdir:
        mdir = ((_record_of(profile, v.policy_variant) or {}).get("artifacts") or {}).get("model_dir")
    if not mdir or not (Path(mdir) / "config.json").exists():
        raise ModelError(f"variant '{v.name}': no model at {mdir} (re-run `make {v.stage}`)")
    return Path(mdir)


def _record_of(profile: str, name: str) -> dict | None:
    try:
        return find_record(profile, name)
    except RecordError:
        return None


def located_steering(v: Variant, cfg: ProfileConfig) -> SteeringSpec | None:
    """A steered variant's spec with its vector files found (the recorded paths, or the same names in its
    run dir when runs moved); None for a policy."""
    if v.kind != "steered":
        return None
    return v.steering.located(run_dir(v.record.get("profile") or cfg.profile.name, v.name))


@contextlib.contextmanager
def load_policy(v: Variant, cfg: ProfileConfig, model=None, tok=None) -> Iterator[tuple]:
    """``(model, tok)`` of a variant, steered when it is a steered variant (hooks removed on exit).
    Pass an already loaded ``model``/``tok`` of the right folder to avoid a second load."""
    from bench.models import load_pretrained
    from bench.steer.hooks import steering

    if not v.evaluable:
        raise ValueError(f"variant '{v.name}' ({v.kind}) is not a policy")
    if model is None:
        model, tok = load_pretrained(policy_dir(v, cfg.profile.name), cfg.model)
        model.eval()
    if v.kind == "policy":
        yield model, tok
        return
    with steering(model, located_steering(v, cfg)):
        yield model, tok
