"""Run records: the single source of every reported number, and the schema they follow.

A record (``record.json``) holds schema version, variant, stage, config hash, git sha and dirty
flag, seed, package versions, hardware, dataset identities, wall time and metrics
``{name: {value, ci_low, ci_high, n}}`` (DESIGN.md §5). This module is a leaf: it knows the schema
and how to read a record safely, nothing about where records live (``bench.runs``) or what is in
them beyond the required fields (``bench.variants``, ``bench.metrics``).
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
REQUIRED_FIELDS = ("schema_version", "variant", "stage", "profile", "config_hash", "metrics")


class RecordError(ValueError):
    """A record is missing, truncated, unparsable or of another schema version."""


def read_record(path: Path) -> dict:
    """Load and check a record; a truncated or foreign file is an error, never a partial result."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no record (has the stage run? `make` runs it)")
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: corrupt record, not valid JSON ({e}); delete it and re-run the stage") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: corrupt record, top level is not an object")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise RecordError(f"{path}: record lacks field(s) {', '.join(missing)}")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{path}: schema_version {rec['schema_version']} (this code reads {SCHEMA_VERSION})")
    return rec


def record_key(rec: dict) -> str:
    """Where a record sits among a profile's reported records (``leaderboards/<profile>/records/``):
    ``<variant>.json`` for a stage record, ``eval/<variant>.json`` for the battery's record of it."""
    return key_for(rec["variant"], rec["stage"])


def key_for(variant: str, stage: str | None = None) -> str:
    """:func:`record_key` of ``variant``'s stage record, or of its battery record (``stage="eval"``)."""
    return f"eval/{variant}.json" if stage == "eval" else f"{variant}.json"


def is_eval_key(key: str) -> bool:
    """True for the key of a battery record (see :func:`record_key`)."""
    return key.startswith("eval/")
