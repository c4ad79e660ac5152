"""Where a number came from: git state, package versions and hardware, stamped into every record.

``provenance(hub_revisions)`` is the ``provenance`` block of a record (DESIGN.md §5). It reads the
machine and the checkout only; what the profile pulled from the hub is resolved by the caller
(``bench.hub.resolved_revisions``) and passed in, so this module sits below the hub and the records.

Inside the containers there is no ``.git``: the build bakes the source commit in
(``/opt/align-bench/SOURCE_COMMIT``, lines ``sha=<commit>`` and ``dirty=true|false|``, and the
``BENCH_GIT_SHA`` / ``BENCH_GIT_DIRTY`` environment variables, which win over the file), and
:func:`git_state` reports it with ``"source": "image"`` when ``git`` finds no checkout.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

from bench.config import REPO_ROOT

# Packages whose versions change numbers; recorded in every record.
TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "lm-eval",
    "tokenizers", "safetensors", "numpy", "gguf",
)


# The file Apptainer.def's %setup / the Dockerfile's build args write (BENCH_SOURCE_COMMIT moves it).
SOURCE_COMMIT_FILE = REPO_ROOT / "SOURCE_COMMIT"
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


def _flag(value: str | None) -> bool | None:
    v = (value or "").strip().lower()
    return True if v in ("1", "true", "yes", "dirty") else False if v in ("0", "false", "no", "clean") else None


def baked_commit() -> dict | None:
    """The source commit baked into a container image: ``{"sha", "dirty", "source": "image"}`` from
    ``BENCH_GIT_SHA``/``BENCH_GIT_DIRTY``, else from the ``SOURCE_COMMIT`` file; None when neither
    names a commit (a build without git says ``sha=unknown``)."""
    fields: dict[str, str] = {}
    path = Path(os.environ.get("BENCH_SOURCE_COMMIT", SOURCE_COMMIT_FILE))
    try:
        for line in path.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    sha = (os.environ.get("BENCH_GIT_SHA") or fields.get("sha") or "").strip().lower()
    if not _SHA.match(sha):
        return None
    dirty = os.environ.get("BENCH_GIT_DIRTY") if os.environ.get("BENCH_GIT_SHA") else fields.get("dirty")
    return {"sha": sha, "dirty": _flag(dirty), "source": "image"}


def git_state() -> dict:
    """Commit sha and whether the tree differs from it (numbers from a dirty tree are flagged).

    From ``git`` in a checkout; without one (the containers) the commit baked into the image
    (:func:`baked_commit`, ``"source": "image"``); else ``{"sha": None, "dirty": None}``."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    if sha is None:
        baked = baked_commit()
        if baked is not None:
            return baked
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
        from bench.precision import native_cpu_bf16

        info["cpu_native_bf16"] = native_cpu_bf16()  # what model.precision=auto resolves bf16 on
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
