"""bench.hub (fetch plans, revision resolution), bench.hub_errors (gated/offline messages) and
bench.hub_fetch (the fetch manifest, offline-by-default). The network is fully mocked: a fake ``HfApi`` and ``snapshot_download`` serve
an in-memory hub and write huggingface_hub's cache layout under a temp ``HF_HOME``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import yaml

from bench import hub, hub_cache, hub_fetch
from bench.config import CONFIG_DIR, known_profiles, load_config
from bench.hub_errors import HubError, hub_errors

SHA_MODEL = "a" * 40
SHA_PKU = "b" * 40
SHA_NEW = "c" * 40
# the in-memory hub: (repo_type, repo_id) -> {revision -> sha, files}
REPOS = {
    ("model", "org/model"): {"refs": {"main": SHA_MODEL, SHA_MODEL: SHA_MODEL},
                             "files": {"config.json": b"{}", "model.safetensors": b"x" * 1000,
                                       "tokenizer.json": b"{\"t\": 1}", "pytorch_model.bin": b"p" * 5000}},
    ("dataset", "PKU-Alignment/PKU-SafeRLHF"): {"refs": {"main": SHA_PKU, SHA_PKU: SHA_PKU},
                                               "files": {"README.md": b"# pku", "data/train.jsonl": b"r" * 300,
                                                         "data/test.jsonl": b"s" * 200}},
}


def _response(status: int, url: str = "https://huggingface.co/api/models/org/model"):
    return httpx2.Response(status, request=httpx2.Request("GET", url))


class FakeApi:
    """Stands in for huggingface_hub.HfApi; ``fail`` maps repo_id -> exception to raise."""

    fail: dict = {}
    calls: list = []

    def _info(self, repo_type, repo_id, revision=None, files_metadata=False, **kw):
        FakeApi.calls.append((repo_type, repo_id, revision))
        if repo_id in FakeApi.fail:
            raise FakeApi.fail[repo_id]
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        repo = REPOS.get((repo_type, repo_id))
        if repo is None:
            raise RepositoryNotFoundError("404 not found", response=_response(404))
        sha = repo["refs"].get(revision or "main")
        if sha is None:
            raise RevisionNotFoundError("404 revision", response=_response(404))
        siblings = [SimpleNamespace(rfilename=f, size=len(b) if files_metadata else None) for f, b in repo["files"].items()]
        return SimpleNamespace(sha=sha, siblings=siblings)

    def model_info(self, repo_id, **kw):
        return self._info("model", repo_id, **kw)

    def dataset_info(self, repo_id, **kw):
        return self._info("dataset", repo_id, **kw)


def fake_snapshot_download(repo_id, *, revision=None, repo_type=None, allow_patterns=None, cache_dir=None, **kw):
    """Writes huggingface_hub's layout: blobs are skipped, snapshot files are plain files."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    repo_type = repo_type or "model"
    folder = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots" / revision
    if hub_cache.is_offline():
        if not folder.is_dir():
            raise LocalEntryNotFoundError(f"{repo_id}@{revision} not in the cache")
        return str(folder)
    repo = REPOS[(repo_type, repo_id)]
    for name in filter_repo_objects(list(repo["files"]), allow_patterns=allow_patterns):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(repo["files"][name])
    return str(folder)


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """A temp HF_HOME, online (HF_HUB_OFFLINE=0), the fake hub, and no real network anywhere."""
    import huggingface_hub

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(FakeApi, "fail", {})
    monkeypatch.setattr(FakeApi, "calls", [])
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    # the registry's reader fills the datasets cache in fetch; here it only reports what it was asked
    prepared = []

    def hub_rows(self, upstream_split):
        prepared.append((self.name, self.revision, upstream_split))
        return [{"row": 1}, {"row": 2}]

    monkeypatch.setattr("bench.data.registry.Source.hub_rows", hub_rows)
    # lm-eval's task index costs seconds to build; the shipped paper profiles' tasks map to hub datasets
    monkeypatch.setattr(hub, "lm_eval_task_datasets",
                        lambda tasks: {t: [{"path": f"lm-eval-org/{t}", "name": None, "kwargs": {}}] for t in tasks})
    return SimpleNamespace(home=home, prepared=prepared)


@pytest.fixture
def hub_profile(tmp_path):
    """A temp profile: the smoke profile with a hub model (branch pin) and PKU-SafeRLHF."""
    raw = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    raw["profile"]["name"] = "hubby"
    raw["model"] = {"source": "hub", "hub_id": "org/model", "revision": "main", "dtype": "float32"}
    raw["data"]["preferences"] = "pku-saferlhf"
    raw.setdefault("eval", {})["lm_eval_tasks"] = []
    path = tmp_path / "hubby.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path))


def _keys(plan):
    return [i.key for i in hub.hub_items(plan)]


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("profile", ["default", "smoke"])
def test_plan_embedded_profiles_fetch_nothing(profile):
    plan = hub.fetch_plan(load_config(profile))
    assert plan and hub.hub_items(plan) == []
    assert all("local, nothing to fetch" in i.describe() for i in plan)
    assert {u for i in plan for u in i.used_by} >= {"model", "data.preferences=embedded-pairs"}


@pytest.mark.parametrize("profile", known_profiles())
def test_plan_of_every_shipped_profile(profile, hf):
    cfg = load_config(profile)
    plan = hub.fetch_plan(cfg)
    items = hub.hub_items(plan)
    for i in items:
        assert i.repo_id and i.revision and i.repo_type in ("model", "dataset")
    if cfg.model.source == "hub":
        model = [i for i in items if i.kind == "model" and "model" in i.used_by]
        assert [(m.repo_id, m.revision) for m in model] == [(cfg.model.hub_id, cfg.model.revision)]
        judge = [i for i in items if "eval.model_judge" in i.used_by]
        assert [(j.repo_id, j.revision) for j in judge] == (
            [(cfg.eval.model_judge.hub_id, cfg.eval.model_judge.revision)] if cfg.eval.model_judge else [])
        assert "*.safetensors" in model[0].allow_patterns and "*.bin" not in model[0].allow_patterns
    for t in cfg.eval.lm_eval_tasks:
        assert any(f"lm-eval:{t}" in i.used_by for i in plan)


def test_plan_llama2_profile(hf):
    plan = hub.fetch_plan(load_config("llama2-7b-v100"))
    keys = _keys(plan)
    assert any(k.startswith("model:meta-llama/Llama-2-7b-hf@") for k in keys)
    pku = [i for i in plan if i.repo_id == "PKU-Alignment/PKU-SafeRLHF"]
    assert pku and pku[0].kind == "dataset" and pku[0].used_by == ["data.preferences=pku-saferlhf"]
    # one download for the two AlpacaEval views, restricted to the one file the loader reads
    alpaca = [i for i in plan if i.repo_id == "tatsu-lab/alpaca_eval"]
    assert len(alpaca) == 1 and len(alpaca[0].used_by) == 2 and "alpaca_eval.json" in alpaca[0].allow_patterns


def test_plan_temp_hub_profile(hub_profile, hf):
    plan = hub.fetch_plan(hub_profile)
    assert _keys(plan) == ["model:org/model@main", "dataset:PKU-Alignment/PKU-SafeRLHF@main"]
    local = [i for i in plan if i.is_local]
    assert {i.repo_id for i in local} == {"embedded-harmful", "embedded-benign", "embedded-borderline",
                                          "embedded-helpfulness"}


def test_plan_local_files_override_is_local(hub_profile, tmp_path):
    hub_profile.data.local_files = {"pku": str(tmp_path / "pku_{split}.jsonl")}
    assert _keys(hub.fetch_plan(hub_profile)) == ["model:org/model@main"]


def test_plan_project_lm_eval_tasks_are_local(hub_profile):
    hub_profile.eval.lm_eval_tasks = ["helpful_mc"]
    plan = hub.fetch_plan(hub_profile)
    assert any(i.is_local and "lm-eval:helpful_mc" in i.used_by for i in plan)


# --------------------------------------------------------------------------- revisions


def test_resolve_branch_to_sha_online(hf):
    assert hub.resolve_revision("org/model", "main", "model") == SHA_MODEL
    assert hub.resolve_revision("PKU-Alignment/PKU-SafeRLHF", "main", "dataset") == SHA_PKU
    assert FakeApi.calls == [("model", "org/model", "main"), ("dataset", "PKU-Alignment/PKU-SafeRLHF", "main")]


def test_resolve_offline_from_cache_refs(hf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = hf.home / "hub" / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA_NEW)
    (refs / "v1.0").write_text(SHA_MODEL + "\n")
    assert hub.resolve_revision("org/name", "main", "model") == SHA_NEW
    assert hub.resolve_revision("org/name", "v1.0", "model") == SHA_MODEL
    assert hub.resolve_revision("org/name", SHA_PKU, "model") == SHA_PKU  # a sha is its own commit
    assert FakeApi.calls == []  # no network in offline mode
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        hub.resolve_revision("org/name", "dev", "model")
    with pytest.raises(HubError, match=r"model org/name@dev is not in the cache .*make fetch PROFILE=p1"):
        with hub_errors(hub_cache.Item("model", "org/name", "dev", "model"), "p1"):
            hub.resolve_revision("org/name", "dev", "model")


def test_resolved_revisions_from_manifest_and_live(hub_profile, hf, monkeypatch):
    live = hub.resolved_revisions(hub_profile)  # no manifest yet: resolved online
    assert live == {"model:org/model@main": SHA_MODEL, "dataset:PKU-Alignment/PKU-SafeRLHF@main": SHA_PKU}
    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    FakeApi.calls.clear()
    assert hub.resolved_revisions(hub_profile) == live
    assert FakeApi.calls == []


def test_resolved_revisions_unresolvable_is_none_or_error(hub_profile, hf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # empty cache, offline
    assert hub.resolved_revisions(hub_profile) == {"model:org/model@main": None,
                                                   "dataset:PKU-Alignment/PKU-SafeRLHF@main": None}
    with pytest.raises(HubError, match="not in the cache"):
        hub.resolved_revisions(hub_profile, strict=True)
    assert hub.resolved_revisions(load_config("smoke")) == {}


# --------------------------------------------------------------------------- fetch


def test_fetch_writes_manifest_with_shas_and_prints_sizes(hub_profile, hf, monkeypatch):
    writes = []
    real_write = hub_fetch.atomic_write_json
    monkeypatch.setattr(hub_fetch, "atomic_write_json", lambda p, obj: (writes.append(Path(p)), real_write(p, obj)))
    lines = []
    manifest = hub_fetch.fetch(hub_profile, progress=lines.append)
    path = hub_cache.manifest_path("hubby")
    assert path == hf.home / "align-bench" / "fetch-hubby.json"
    assert writes == [path]  # written once, atomically, at the end
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    items = on_disk["items"]
    assert {k: v["sha"] for k, v in items.items()} == {"model:org/model@main": SHA_MODEL,
                                                      "dataset:PKU-Alignment/PKU-SafeRLHF@main": SHA_PKU}
    model = items["model:org/model@main"]
    # safetensors, configs and tokenizer only: the pickled checkpoint is never downloaded
    assert set(model["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert model["bytes"] == 1000 + 2 + 8
    assert on_disk["total_bytes"] == model["bytes"] + 505
    text = "\n".join(lines)
    assert "org/model@main" in text and SHA_MODEL in text and "1010 bytes" in text and "505 bytes" in text
    assert "embedded-harmful" in text and "local, nothing to fetch" in text
    # downloaded by sha; the branch ref recorded as huggingface_hub would
    assert (hf.home / "hub" / "models--org--model" / "refs" / "main").read_text() == SHA_MODEL
    # the datasets cache was filled by the registry's reader at the resolved sha, every upstream split
    assert hf.prepared == [("pku-saferlhf", SHA_PKU, "train"), ("pku-saferlhf", SHA_PKU, "test")]


def test_fetch_offline_checks_the_cache(hub_profile, hf, monkeypatch):
    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    hub_cache.manifest_path("hubby").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    FakeApi.calls.clear()
    manifest = hub_fetch.fetch(hub_profile, progress=lambda s: None)  # everything cached: a manifest again
    assert manifest["items"]["model:org/model@main"]["sha"] == SHA_MODEL and FakeApi.calls == []


def test_offline_missing_item_names_item_and_make_fetch(hub_profile, hf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError) as ei:
        hub_fetch.fetch(hub_profile, progress=lambda s: None)
    msg = str(ei.value)
    assert "model org/model@main is not in the cache" in msg
    assert f"HF_HOME={hf.home}" in msg and "`make fetch PROFILE=hubby`" in msg and "login node" in msg
    assert "\n" not in msg and ei.value.__cause__ is None and ei.value.__suppress_context__
    assert not hub_cache.manifest_path("hubby").exists()


def _gated(status):
    from huggingface_hub.errors import GatedRepoError

    return GatedRepoError(f"{status} gated", response=_response(status))


def _http(status):
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError(f"{status} Client Error", response=_response(status))


@pytest.mark.parametrize("error", [lambda: _gated(401), lambda: _gated(403), lambda: _http(401), lambda: _http(403)],
                         ids=["gated-401", "gated-403", "http-401", "http-403"])
def test_gated_model_one_clear_message_and_no_manifest(hub_profile, hf, error):
    FakeApi.fail = {"org/model": error()}
    with pytest.raises(HubError) as ei:
        hub_fetch.fetch(hub_profile, progress=lambda s: None)
    msg = str(ei.value)
    assert msg.startswith("model org/model is gated: accept its licence at https://huggingface.co/org/model")
    assert "HF_TOKEN" in msg and "make fetch PROFILE=hubby" in msg and "no token found" in msg
    assert "\n" not in msg and ei.value.__cause__ is None and ei.value.__suppress_context__
    assert not hub_cache.manifest_path("hubby").exists()


def test_gated_dataset_after_model_leaves_no_manifest(hub_profile, hf, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    FakeApi.fail = {"PKU-Alignment/PKU-SafeRLHF": _gated(403)}
    with pytest.raises(HubError, match=r"^dataset PKU-Alignment/PKU-SafeRLHF is gated: .*"
                                           r"https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF .*HF_TOKEN is set"):
        hub_fetch.fetch(hub_profile, progress=lambda s: None)
    assert not hub_cache.manifest_path("hubby").exists()


def test_not_found_and_bad_revision(hub_profile, hf):
    hub_profile.model.hub_id = "org/missing"
    with pytest.raises(HubError, match="model org/missing was not found on the hub, or it is private"):
        hub_fetch.fetch(hub_profile, progress=lambda s: None)
    hub_profile.model.hub_id, hub_profile.model.revision = "org/model", "no-such-tag"
    with pytest.raises(HubError, match="pinned revision 'no-such-tag' does not exist"):
        hub_fetch.fetch(hub_profile, progress=lambda s: None)


def test_hub_errors_passes_other_errors_and_unwraps_causes():
    with pytest.raises(ValueError, match="unrelated"):
        with hub_errors():
            raise ValueError("unrelated")
    # transformers wraps hub errors in OSError: the cause chain is searched
    item = hub_cache.Item("model", "org/model", "main", "model")
    with pytest.raises(HubError, match="model org/model is gated"):
        with hub_errors(item, "p"):
            try:
                raise _gated(403)
            except Exception as e:
                raise OSError("You are trying to access a gated repo.") from e


def test_prepare_base_gated_hub_model(hub_profile, hf, monkeypatch):
    """models._build_hub goes through bench.hub_errors: one message, no half-built base folder."""
    from bench import models

    def gated_load(*a, **kw):
        try:
            raise _gated(401)
        except Exception as e:
            raise OSError("gated repo") from e

    monkeypatch.setattr(models, "load_pretrained", gated_load)
    with pytest.raises(HubError, match="model org/model is gated.*make fetch PROFILE=hubby"):
        models.prepare_base(hub_profile, progress=lambda s: None)
    out = models.base_model_dir(hub_profile)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_prepare_base_offline_resolves_from_cache(hub_profile, hf, monkeypatch):
    from bench import models

    seen = {}

    def fake_load(path, model_cfg, revision=None):
        seen["rev"] = revision
        raise RuntimeError("stop here")

    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_pretrained", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        models.prepare_base(hub_profile, progress=lambda s: None)
    assert seen["rev"] == SHA_MODEL  # branch "main" -> sha from refs/main, no network


# --------------------------------------------------------------------------- offline by default


@pytest.fixture
def restore_offline_constants(monkeypatch):
    """set_offline also flips huggingface_hub's / datasets' import-time flags; undo after the test."""
    for mod, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                       ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        m = sys.modules.get(mod)
        for n in names:
            if m is not None and hasattr(m, n):
                monkeypatch.setattr(m, n, getattr(m, n))


def test_offline_by_default(hub_profile, hf, monkeypatch, restore_offline_constants):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub_fetch.offline_by_default(hub_profile) is False  # no manifest yet
    assert "HF_HUB_OFFLINE" not in os.environ
    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    # a file of the manifest missing from the cache: stay online
    victim = hf.home / "hub" / "models--org--model" / "snapshots" / SHA_MODEL / "model.safetensors"
    data = victim.read_bytes()
    victim.unlink()
    assert hub_fetch.offline_by_default(hub_profile) is False and "HF_HUB_OFFLINE" not in os.environ
    victim.write_bytes(data)
    lines = []
    assert hub_fetch.offline_by_default(hub_profile, progress=lines.append) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "HF_HUB_OFFLINE=1" in lines[0]
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_offline_by_default_respects_user_setting(hub_profile, hf, monkeypatch, restore_offline_constants):
    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user wants the network
    assert hub_fetch.offline_by_default(hub_profile) is False and os.environ["HF_HUB_OFFLINE"] == "0"


def test_offline_by_default_stale_manifest(hub_profile, hf, monkeypatch, restore_offline_constants):
    hub_fetch.fetch(hub_profile, progress=lambda s: None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub_profile.model.revision = SHA_NEW  # the profile now pins another revision
    assert hub_fetch.offline_by_default(hub_profile) is False and "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.slow
def test_lm_eval_index_lookup_real():
    """The real lm-eval task index (seconds to build): built-in tasks map to their hub datasets."""
    hub.lm_eval_task_datasets.cache_clear()
    out = hub.lm_eval_task_datasets(("truthfulqa_mc2", "arc_easy"))
    assert out["truthfulqa_mc2"] == [{"path": "truthfulqa/truthful_qa", "name": "multiple_choice", "kwargs": {}}]
    assert out["arc_easy"] == [{"path": "allenai/ai2_arc", "name": "ARC-Easy", "kwargs": {}}]
    with pytest.raises(HubError, match="no-such-task"):
        hub.lm_eval_task_datasets(("no-such-task",))
