"""Where a number came from: git state, package versions and hardware, stamped into every record.

``provenance(hub_revisions)`` is the ``provenance`` block of a record (DESIGN.md §5). It reads the
machine and the checkout only; what the profile pulled from the hub is resolved by the caller
(``bench.hub.resolved_revisions``) and passed in, so this module sits below the hub and the records.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata

from bench.config import REPO_ROOT

# Packages whose versions change numbers; recorded in every record.
TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "lm-eval",
    "tokenizers", "safetensors", "numpy", "gguf",
)


def git_state() -> dict:
    """Commit sha and whether the tree differs from it (numbers from a dirty tree are flagged)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"sha": sha, "dirty": dirty}


def package_versions() -> dict:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def provenance(hub_revisions: dict | None = None) -> dict:
    out = {"git": git_state(), "packages": package_versions(), "hardware": hardware(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if hub_revisions is not None:
        out["hub_revisions"] = hub_revisions
    return out
