"""Fetch once where there is internet, then run offline: :func:`fetch` and :func:`offline_by_default`.

- :func:`fetch` resolves each pinned branch or tag of the profile's hub items (:func:`bench.hub.fetch_plan`)
  to its commit sha, downloads that exact commit with ``snapshot_download`` into ``$HF_HOME/hub``, runs
  the registry's own reader once per dataset so the ``datasets`` cache (which is what ``load_dataset``
  reads in offline mode) is filled, prints what and how many bytes, and only then writes the manifest
  ``$HF_HOME/align-bench/fetch-<profile>.json`` (atomically): item -> resolved sha and files. A failure
  leaves no manifest; ``snapshot_download`` itself downloads into temporary files, so the cache never
  holds half a file.
- :func:`offline_by_default` (called by the CLI before a stage) sets ``HF_HUB_OFFLINE=1`` when the
  profile's manifest exists, covers the profile and every file it lists is in the cache, unless the
  user set ``HF_HUB_OFFLINE`` themselves. :func:`set_offline` flips the flag, also in HF libraries
  that already read it at import.
- :func:`plan_summary`: what ``bench fetch --dry-run`` prints.

``huggingface_hub``/``datasets`` are imported only inside :func:`fetch` and its helpers, so the CLI
can call :func:`offline_by_default` before any of them is imported.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Callable

from bench.config import ProfileConfig
from bench.hub import fetch_plan, hub_items, remote_info, resolve_revision
from bench.hub_cache import (
    MANIFEST_SCHEMA,
    SHA_RE,
    Item,
    datasets_cache,
    entry_in_cache,
    hf_home,
    hub_cache,
    is_offline,
    manifest_path,
    read_manifest,
    repo_dir,
)
from bench.hub_errors import hub_errors
from bench.io import atomic_write_json, atomic_write_text

# --------------------------------------------------------------------------- fetch


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "? B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _snapshot_files(folder: Path) -> dict[str, int]:
    """``{relative path: size in bytes}`` of a snapshot folder (its entries link into blobs/)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = p.stat().st_size
    return out


def _planned_sizes(info, patterns: list[str] | None) -> dict[str, int | None]:
    from huggingface_hub.utils import filter_repo_objects

    siblings = list(getattr(info, "siblings", None) or [])
    kept = filter_repo_objects(siblings, allow_patterns=patterns, key=lambda s: s.rfilename)
    return {s.rfilename: getattr(s, "size", None) for s in kept}


def _prepare(item: Item, sha: str, progress: Callable[[str], None]) -> list[str]:
    """Run each reader of this repo once so the ``datasets`` cache holds it (``load_dataset`` in
    offline mode reads that cache, not the hub snapshot). Returns the cache folders it made."""
    before = set(_datasets_cache_dirs())
    for prep in item.prepare:
        if "registry" in prep:
            from bench.data.registry import get_source

            src = get_source(prep["registry"])
            src.revision = sha
            n = sum(len(src.hub_rows(up)) for up in src.upstream_splits)
            progress(f"    prepared {prep['registry']}: {n} rows ({', '.join(src.upstream_splits)})")
        elif "lm_eval" in prep:
            import datasets

            ds = datasets.load_dataset(prep["lm_eval"], prep.get("name"), revision=sha, **prep.get("kwargs", {}))
            n = sum(len(v) for v in ds.values()) if hasattr(ds, "values") else len(ds)
            progress(f"    prepared {prep['lm_eval']}{'/' + prep['name'] if prep.get('name') else ''}: {n} rows")
    return sorted(set(_datasets_cache_dirs()) - before)


def _datasets_cache_dirs() -> list[str]:
    root = datasets_cache()
    if not root.is_dir():
        return []
    return [p.name for p in root.iterdir() if p.is_dir() and "___" in p.name]


def fetch(cfg: ProfileConfig, progress: Callable[[str], None] = print, prepare: bool = True) -> dict:
    """Download every hub item of the profile at its resolved commit into ``$HF_HOME`` and write the
    fetch manifest (only after everything succeeded). Returns the manifest.

    With ``HF_HUB_OFFLINE=1`` nothing is downloaded: the same steps check that the cache already
    holds everything (a missing item is a :class:`HubError` naming it and ``make fetch``)."""
    from huggingface_hub import snapshot_download

    profile = cfg.profile.name
    plan = fetch_plan(cfg)
    offline = is_offline()
    todo = hub_items(plan)
    progress(f"fetch {profile}: {len(todo)} hub item(s) into HF_HOME={hf_home()}"
             + (" (HF_HUB_OFFLINE=1: checking the cache only)" if offline else ""))
    for item in plan:
        if item.is_local:
            progress(f"  {item.describe()}")
    entries: dict[str, dict] = {}
    total = 0
    for item in todo:
        with hub_errors(item, profile):
            planned: dict[str, int | None] = {}
            if offline:
                sha = resolve_revision(item.repo_id, item.revision, item.repo_type)
            else:
                info = remote_info(item.repo_id, item.revision or "main", item.repo_type, files_metadata=True)
                sha = info.sha
                planned = _planned_sizes(info, item.allow_patterns)
            size = sum(v for v in planned.values() if v) if planned else None
            progress(f"  {item.describe()} -> {sha}" + (f": {len(planned)} files, {human_bytes(size)}" if planned else ""))
            folder = snapshot_download(item.repo_id, revision=sha, repo_type=item.repo_type,
                                       allow_patterns=item.allow_patterns, cache_dir=str(hub_cache()))
            if not offline and item.revision and not SHA_RE.match(item.revision):
                # We download by sha (the branch may move meanwhile), so huggingface_hub writes no
                # ref; record branch/tag -> sha as it would, so offline loads by branch name work.
                atomic_write_text(repo_dir(item.repo_id, item.repo_type) / "refs" / item.revision, sha)
            files = _snapshot_files(Path(folder))
            nbytes = sum(files.values())
            total += nbytes
            progress(f"    {len(files)} files, {human_bytes(nbytes)} ({nbytes} bytes) in {folder}")
            made = _prepare(item, sha, progress) if prepare and item.prepare else []
        entries[item.key] = {
            "kind": item.kind, "repo_id": item.repo_id, "repo_type": item.repo_type, "revision": item.revision,
            "sha": sha, "allow_patterns": item.allow_patterns, "used_by": item.used_by, "files": files,
            "bytes": nbytes, "datasets_cache": made,
        }
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "profile": profile,
        "config_file": cfg.source_file,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hf_home": str(hf_home()),
        "lm_eval_tasks": sorted(cfg.eval.lm_eval_tasks),
        "local": [i.describe() for i in plan if i.is_local],
        "items": entries,
        "total_bytes": total,
    }
    path = manifest_path(profile)
    atomic_write_json(path, manifest)
    progress(f"fetched {len(entries)} item(s), {human_bytes(total)} ({total} bytes); manifest {path}")
    progress(f"stages of profile {profile} now run offline (HF_HUB_OFFLINE=1) with this HF_HOME")
    return manifest


# --------------------------------------------------------------------------- offline by default


def set_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process, including libraries that already read it at import."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    hc = sys.modules.get("huggingface_hub.constants")
    if hc is not None:
        hc.HF_HUB_OFFLINE = True
    dc = sys.modules.get("datasets.config")
    if dc is not None:
        dc.HF_HUB_OFFLINE = True
        dc.HF_DATASETS_OFFLINE = True


def offline_by_default(cfg: ProfileConfig, progress: Callable[[str], None] | None = None) -> bool:
    """Called by the CLI before a stage runs: set ``HF_HUB_OFFLINE=1`` when the profile's fetch
    manifest exists, covers every hub item of the profile and every file it lists is in the cache.
    A user's own ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), 0 or 1, is left as it is.
    Returns whether the process now runs offline. Cheap: file checks only, no network, no import of
    the HF libraries."""
    if "HF_HUB_OFFLINE" in os.environ or "TRANSFORMERS_OFFLINE" in os.environ:
        return is_offline()
    manifest = read_manifest(cfg.profile.name)
    if manifest is None:
        return False
    fetched = manifest["items"]
    if manifest.get("lm_eval_tasks") != sorted(cfg.eval.lm_eval_tasks):
        return False
    try:
        needed = hub_items(fetch_plan(cfg, lm_eval=False))
    except Exception:  # noqa: BLE001 - a bad data name is reported by the stage itself, with its message
        return False
    if any(i.key not in fetched for i in needed):
        return False
    if not all(entry_in_cache(e) for e in fetched.values()):
        return False
    set_offline()
    if progress:
        progress(f"HF_HUB_OFFLINE=1: everything profile {cfg.profile.name} needs is in {hf_home()} "
                 f"(fetched {manifest.get('date', '?')}); set HF_HUB_OFFLINE=0 to go online")
    return True


def plan_summary(cfg: ProfileConfig) -> list[str]:
    """Lines describing the plan (``bench fetch --dry-run``)."""
    return [item.describe() for item in fetch_plan(cfg)]
