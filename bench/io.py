"""Low-level file io shared by every layer: atomic writes and content hashes.

Nothing here knows about profiles, runs or records; every other module may import it. A write is
atomic (temp file in the same directory, fsync, rename), so a killed process leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Build a directory (a saved model) in a temp folder beside ``out`` and rename it into place on
    success: a kill mid-save never leaves half a model, and a failure leaves the old one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_sha256(obj: Any, length: int | None = None, ensure_ascii: bool = True) -> str:
    """sha256 hex digest of ``obj`` as canonical JSON (sorted keys; non-JSON values through ``str``),
    cut to ``length`` characters when given. Every content hash in records goes through here."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=ensure_ascii, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()
    return digest[:length] if length else digest


def read_jsonl(path: Path, missing: str) -> list[Any]:
    """The rows of a JSONL file a stage wrote; ``missing`` is the error's advice when the file is absent.
    A line that is not JSON is an error naming the file and line (delete the file to regenerate it)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: {missing}")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{path}:{i}: not valid JSON ({e}); delete the file to regenerate it") from e
    return out
