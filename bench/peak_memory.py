"""Peak memory of one stage, measured while it runs, for its run record (``resources``).

- **Host**: the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``). Linux lets a
  process reset it to the current RSS by writing ``5`` to ``/proc/self/clear_refs`` (proc(5)), so a
  stage's peak is measured from its own start: the number is what the process held at its fullest
  while the stage ran, everything already resident at its start included (the interpreter, torch,
  models a caller still holds). It is recorded beside the RSS at the start, so a reader sees how much
  the stage itself added.
- **GPU**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only, not
  the caching allocator's reserve), where CUDA is initialised.

Stages nest (DPO's on-policy pairs are their own stage inside it): resetting the high-water marks for
the inner one would lose the outer one's peaks so far, so both marks are folded into every open
measurement (the module's stack ``_open``) before each reset and at each exit. Where ``/proc`` is missing
(macOS) or cannot be reset, the host fields are None and ``how`` says why; nothing fails. On a multi-rank
stage the record holds rank 0's process (``runs.stage_run`` writes it there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
_open: list[dict] = []  # the measurements in progress, outermost first


def _status_kib(field: str) -> int | None:
    """A ``VmXXX`` line of /proc/self/status in KiB, or None where there is none."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fold_peaks() -> None:
    """Fold the current high-water marks (host, and CUDA where initialised) into every open measurement."""
    hwm = _status_kib("VmHWM")
    cuda = _cuda()
    peak = cuda.max_memory_allocated() if cuda is not None else None
    for m in _open:
        if hwm is not None:
            m["hwm_kib"] = max(m["hwm_kib"] or 0, hwm)
        if peak is not None:
            m["cuda_bytes"] = max(m["cuda_bytes"] or 0, peak)


def _reset_host_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None


@contextlib.contextmanager
def measure() -> Iterator[dict]:
    """Yields a dict filled in on exit: ``peak_rss_mib``, ``start_rss_mib``, ``peak_cuda_mib`` (None
    off CUDA) and ``how``."""
    out: dict = {}
    _fold_peaks()
    me = {"hwm_kib": None, "cuda_bytes": None}
    _open.append(me)
    start = _status_kib("VmRSS")
    reset = _reset_host_peak()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    try:
        yield out
    finally:
        _fold_peaks()
        _open.remove(me)
        if reset and me["hwm_kib"] is not None:
            out.update(peak_rss_mib=round(me["hwm_kib"] / 1024, 1), start_rss_mib=round((start or 0) / 1024, 1),
                       how="process RSS high-water mark from the stage's start (/proc/self/status VmHWM, reset "
                           "through /proc/self/clear_refs)")
        else:
            out.update(peak_rss_mib=None, start_rss_mib=None,
                       how="host peak not measured: /proc/self/clear_refs cannot be written here")
        # CUDA first initialised inside the stage: its peak since initialisation is the stage's own
        out["peak_cuda_mib"] = round(me["cuda_bytes"] / 2**20, 1) if me["cuda_bytes"] is not None else None
