"""What the Hugging Face cache holds and where: hub items, the cache layout, our fetch manifests,
and whether we are offline.

Pure data, path and environment logic (no HF library import, no network), shared by the fetch plan
and revisions (:mod:`bench.hub`), the error messages (:mod:`bench.hub_errors`) and the download and
offline switch (:mod:`bench.hub_fetch`):

- :class:`Item`: one thing a profile reads (a hub repo at a pinned revision, or a local source),
  keyed as ``model:org/name@main`` in manifests and records.
- :func:`is_offline`: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now.
- :func:`hf_home`, :func:`hub_cache`, :func:`datasets_cache`, :func:`repo_dir`: the cache layout
  huggingface_hub and datasets use (``$HF_HOME/hub/models--org--name``, ``$HF_HOME/datasets``).
- :func:`manifest_path`, :func:`read_manifest`, :func:`entry_in_cache`: the fetch manifest
  ``$HF_HOME/align-bench/fetch-<profile>.json`` that ``bench.hub_fetch.fetch`` writes, and
  whether what it lists is still in the cache.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MANIFEST_SCHEMA = 1
# A full commit sha, as the cache names snapshot folders and as refs/<branch> files hold them.
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class Item:
    """One thing a profile reads: a hub repo at a pinned revision, or a local source (``repo_type``
    ``local``: nothing to fetch)."""

    kind: Literal["model", "dataset"]
    repo_id: str
    revision: str | None  # as pinned in the profile / registry (a branch, tag or commit sha)
    repo_type: Literal["model", "dataset", "local"]
    allow_patterns: list[str] | None = None  # None: the whole repo
    used_by: list[str] = field(default_factory=list)  # "model", "data.preferences=pku-saferlhf", "lm-eval:arc_easy"
    note: str = ""
    # How fetch fills the `datasets` cache for this repo: {"registry": name} or
    # {"lm_eval": path, "name": config, "kwargs": {...}}.
    prepare: list[dict] = field(default_factory=list, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.repo_type == "local"

    @property
    def key(self) -> str:
        """Stable name of the item in manifests and records: ``model:org/name@main``."""
        if self.is_local:
            return f"local:{self.repo_id}"
        return f"{self.repo_type}:{self.repo_id}@{self.revision}"

    def describe(self) -> str:
        if self.is_local:
            return f"{self.kind} {self.repo_id} ({', '.join(self.used_by)}): local, nothing to fetch" + (
                f" [{self.note}]" if self.note else "")
        return f"{self.kind} {self.repo_id}@{self.revision} ({', '.join(self.used_by)})"


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set in the environment now."""
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().upper() in _TRUE


def hf_home() -> Path:
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface"


def hub_cache() -> Path:
    """Where ``snapshot_download`` / ``from_pretrained`` keep repos (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return hf_home() / "hub"


def datasets_cache() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    return hf_home() / "datasets"


def repo_dir(repo_id: str, repo_type: str = "model") -> Path:
    """``$HF_HOME/hub/models--org--name`` (huggingface_hub's cache layout)."""
    return hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def manifest_path(profile: str) -> Path:
    return hf_home() / "align-bench" / f"fetch-{profile}.json"


def read_manifest(profile: str) -> dict | None:
    """The profile's fetch manifest, or None when there is none (or it is unreadable)."""
    path = manifest_path(profile)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != MANIFEST_SCHEMA or not isinstance(data.get("items"), dict):
        return None
    return data


def entry_in_cache(entry: dict) -> bool:
    """Every file the manifest lists for an item is in its snapshot folder (and the ``datasets``
    cache folder that fetch filled, where it recorded one)."""
    snap = repo_dir(entry["repo_id"], entry["repo_type"]) / "snapshots" / entry["sha"]
    if not snap.is_dir():
        return False
    if not all((snap / f).exists() for f in entry.get("files", {})):
        return False
    return all((datasets_cache() / d).is_dir() for d in entry.get("datasets_cache", []))
