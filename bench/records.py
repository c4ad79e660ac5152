"""Run records: the single source of every reported number.

``runs/<profile>/<variant>/record.json`` holds schema version, variant, stage, config hash, git sha
and dirty flag, seed, package versions, hardware, dataset identities, wall time and metrics
``{name: {value, ci_low, ci_high, n}}`` (DESIGN.md §5). The resolved config (``config.yaml``) and a
log (``log.txt``) sit beside it. Every write is atomic (temp file in the same directory, fsync,
rename), so a killed process leaves either the old file or the new one, never half of one. The
leaderboard is rendered only from records.

A stage uses :func:`stage_run`::

    with stage_run(cfg, variant="base", stage="base", sections=("model",)) as run:
        run.metrics["param_count"] = {"value": n}
    # record.json is written only if the block finished without an exception
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from bench.config import REPO_ROOT, ProfileConfig, dump_yaml, runs_root

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
# Packages whose versions change numbers; recorded in every record.
TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "lm-eval",
    "tokenizers", "safetensors", "numpy", "gguf",
)
REQUIRED_FIELDS = ("schema_version", "variant", "stage", "profile", "config_hash", "metrics")


class RecordError(ValueError):
    """A record is missing, truncated, unparsable or of another schema version."""


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


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Build a directory (a saved model) in a temp folder beside ``out`` and rename it into place on
    success: a kill mid-save never leaves half a model, and a failure leaves the old one."""
    import shutil

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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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


def provenance() -> dict:
    return {"git": git_state(), "packages": package_versions(), "hardware": hardware(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def run_dir(profile: str, variant: str) -> Path:
    return runs_root() / profile / variant


# Stages in pipeline order (how leaderboards, variant lists and perf reports sort them).
PIPELINE_STAGES = ("base", "sft", "reward", "cost", "onpolicy", "dpo", "ppo", "steer", "eval")


def stage_rank(stage: str) -> int:
    """Position of ``stage`` in :data:`PIPELINE_STAGES`; an unknown stage sorts last."""
    return PIPELINE_STAGES.index(stage) if stage in PIPELINE_STAGES else len(PIPELINE_STAGES)


def cache_dir(profile: str, name: str) -> Path:
    """``runs/<profile>/cache/<name>/``: results shared between runs of a profile (never a record)."""
    return runs_root() / profile / "cache" / name


def stage_marker(profile: str, stage: str) -> Path:
    """``runs/<profile>/stages/<stage>.done``: the Make file target of a finished stage."""
    return runs_root() / profile / "stages" / f"{stage}.done"


def mark_stage_done(cfg: ProfileConfig, stage: str) -> Path:
    """Written after every variant of a stage has its record, so Make skips the stage next time.
    It lists the records' config hashes: a marker never stands for records that are not there."""
    root = runs_root() / cfg.profile.name
    variants = {}
    # Eval records live one level down (runs/<profile>/eval/<variant>/), named after the scored variant.
    for rec_path in sorted(root.glob(f"*/{RECORD_NAME}")) + sorted(root.glob(f"eval/*/{RECORD_NAME}")):
        rec = read_record(rec_path)
        if rec["stage"] == stage:
            variants[rec["variant"]] = rec["config_hash"]
    skipped = getattr(cfg, stage, "present") is None  # the profile does not configure this stage
    if not variants and not skipped:
        raise RecordError(f"{root}: stage '{stage}' finished but wrote no record")
    path = stage_marker(cfg.profile.name, stage)
    marker = {"stage": stage, "profile": cfg.profile.name, "variants": variants}
    if skipped:
        marker["skipped"] = f"profile has no '{stage}' section"
    atomic_write_json(path, marker)
    return path


def read_record(path: Path) -> dict:
    """Load and check a record; a truncated or foreign file is an error, never a partial result."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no record (has the stage run? `make` runs it)")
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: corrupt record, not valid JSON ({e}); delete it and re-run the stage") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: corrupt record, top level is not an object")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise RecordError(f"{path}: record lacks field(s) {', '.join(missing)}")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{path}: schema_version {rec['schema_version']} (this code reads {SCHEMA_VERSION})")
    return rec


def find_record(profile: str, variant: str) -> dict | None:
    path = run_dir(profile, variant) / RECORD_NAME
    return read_record(path) if path.exists() else None


def is_done(cfg: ProfileConfig, variant: str, config_hash: str) -> bool:
    """True when a valid record exists for this variant with the same config hash."""
    try:
        rec = find_record(cfg.profile.name, variant)
    except RecordError:
        return False
    return rec is not None and rec.get("config_hash") == config_hash


@contextlib.contextmanager
def variant_lock(profile: str, variant: str, timeout: float = -1) -> Iterator[None]:
    """Exclusive lock on one variant's run directory, held while a process checks whether the work
    is done and does it, so two concurrent runs never score or write the same variant twice (the
    second waits, then finds the record up to date)."""
    from filelock import FileLock

    d = run_dir(profile, variant)
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".lock"), timeout=timeout):
        yield


@dataclass
class StageRun:
    """Mutable state of one stage while it runs; turned into record.json on success."""

    cfg: ProfileConfig
    variant: str
    stage: str
    config_hash: str
    dir: Path
    log: logging.Logger
    metrics: dict[str, dict] = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Exact commit sha of every hub model/dataset the profile uses (even when it pins a branch).
    hub_revisions: dict[str, str | None] = field(default_factory=dict)

    def to_record(self, wall_time_s: float) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "profile": self.cfg.profile.name,
            "variant": self.variant,
            "stage": self.stage,
            "config_hash": self.config_hash,
            "seed": self.cfg.profile.seed,
            "provenance": {**provenance(), "hub_revisions": self.hub_revisions},
            "datasets": self.datasets,
            "wall_time_s": round(wall_time_s, 3),
            "metrics": self.metrics,
            "artifacts": self.artifacts,
            "extra": self.extra,
        }


def _logger(path: Path, name: str) -> logging.Logger:
    log = logging.getLogger(f"bench.run.{name}")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = True
    return log


@contextlib.contextmanager
def stage_run(cfg: ProfileConfig, variant: str, stage: str, sections: tuple[str, ...] = ()) -> Iterator[StageRun]:
    """Run directory, resolved config, log file and timer for one stage; the record is written
    atomically only when the block completes, so an interrupted stage never leaves a record.

    ``config.yaml`` is written (atomically) only on success too, just before the record: a stage that
    fails or is killed leaves the earlier run's record and config side by side, never the failed
    run's config beside an older record. (Config first, then record: a kill between the two leaves a
    record whose hash no longer matches the config, so the next run redoes the stage and rewrites
    both.) Nothing reads ``config.yaml`` during a run; it documents the record beside it."""
    d = run_dir(cfg.profile.name, variant)
    d.mkdir(parents=True, exist_ok=True)
    log = _logger(d / "log.txt", f"{cfg.profile.name}.{variant}")
    chash = cfg.section_hash(*sections) if sections else cfg.config_hash
    from bench.hub import resolved_revisions

    run = StageRun(cfg=cfg, variant=variant, stage=stage, config_hash=chash, dir=d, log=log,
                   hub_revisions=resolved_revisions(cfg))
    log.info("start stage=%s variant=%s profile=%s config_hash=%s", stage, variant, cfg.profile.name, chash)
    t0 = time.perf_counter()
    try:
        yield run
    except BaseException as e:
        log.error("stage failed: %s: %s", type(e).__name__, e)
        raise
    finally:
        for h in list(log.handlers):
            h.flush()
    wall = time.perf_counter() - t0
    atomic_write_text(d / "config.yaml", dump_yaml(cfg))
    atomic_write_json(d / RECORD_NAME, run.to_record(wall))
    log.info("done in %.1fs; record written", wall)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
