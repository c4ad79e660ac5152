"""Untrusted artefacts: no pickled weights, no remote code unless a profile opts in, no config path
that escapes the project."""

from __future__ import annotations

import re

import pytest

from bench.config import REPO_ROOT, ConfigError, load_config

SOURCES = sorted((REPO_ROOT / "bench").rglob("*.py"))


def test_every_torch_load_is_weights_only():
    offenders = []
    for path in SOURCES:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "torch.load(" in code and "``" not in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_no_hard_coded_remote_code():
    offenders = [p.name for p in SOURCES if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert not offenders
    for name in ("default", "smoke", "llama2-7b-v100", "tinyllama-1.1b-v100"):
        assert load_config(name).model.trust_remote_code is False


def test_pickled_weights_are_refused(smoke_base, tmp_path):
    """A checkpoint that ships only a pickle (pytorch_model.bin) is not loaded."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from bench.models import load_pretrained

    folder = tmp_path / "pickled"
    shutil.copytree(smoke_base, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(Exception):
        load_pretrained(folder, load_config("smoke").model)


@pytest.mark.parametrize("key,value", [("model.chat_template", "/etc/passwd"),
                                        ("model.chat_template", "../../outside.jinja"),
                                        ("dpo.deepspeed", "/tmp/ds.json")])
def test_config_paths_stay_inside_the_project(key, value):
    with pytest.raises(ConfigError, match="inside the project"):
        load_config("smoke", [f"{key}={value}"])


def test_lm_eval_tasks_have_no_function_hooks():
    """lm-eval `!function` hooks run code; the suite's own tasks use none."""
    for path in (REPO_ROOT / "tasks").rglob("*.yaml"):
        assert "!function" not in path.read_text(), path
