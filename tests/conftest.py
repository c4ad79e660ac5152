"""Shared fixtures: every test session writes runs and caches into a temp dir, never into the
checkout's runs/ or .cache/, so tests cannot disturb (or be helped by) a user's real runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    old = {k: os.environ.get(k) for k in ("BENCH_RUNS", "BENCH_CACHE", "BENCH_LEADERBOARDS", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                                       "TOKENIZERS_PARALLELISM")}
    os.environ["BENCH_RUNS"] = str(root / "runs")
    os.environ["BENCH_CACHE"] = str(root / "cache")
    os.environ["BENCH_LEADERBOARDS"] = str(root / "leaderboards")  # tests never write the committed ones
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def smoke_cfg():
    from bench.config import load_config

    return load_config("smoke")


@pytest.fixture(scope="session")
def smoke_base(smoke_cfg):
    """The smoke profile's micro Llama, prepared once per session (seconds)."""
    from bench.models import prepare_base

    folder, _ = prepare_base(smoke_cfg, progress=lambda s: None)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: the micro model is too small to gain from threads, and one
    thread is immune to a busy machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def score_model_dirs(smoke_base, tmp_path_factory):
    """Random LlamaForSequenceClassification reward and cost models on the smoke base config."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("score_models")
    tok = AutoTokenizer.from_pretrained(smoke_base)
    dirs = {}
    for seed, kind in enumerate(("reward", "cost")):
        conf = AutoConfig.from_pretrained(smoke_base, num_labels=1)
        conf.pad_token_id = tok.pad_token_id
        torch.manual_seed(100 + seed)
        LlamaForSequenceClassification(conf).save_pretrained(root / kind)
        tok.save_pretrained(root / kind)
        dirs[kind] = root / kind
    return dirs


@pytest.fixture
def score_runs(smoke_cfg, score_model_dirs, tmp_path, monkeypatch):
    """A fresh runs/ dir per test with reward and cost records pointing at the random score models
    (what PPO reads); returns ``runs/smoke``."""
    from bench.runs import stage_run

    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    for kind, path in score_model_dirs.items():
        with stage_run(smoke_cfg, variant=kind, stage=kind, sections=("model",)) as run:
            run.artifacts["model_dir"] = str(path)
    return tmp_path / "runs" / "smoke"
