"""The run layout: the one module that knows where a profile's runs, records and markers live.

    runs/<profile>/<variant>/record.json        a stage record (base, sft, reward, dpo, ppo, steer ...)
    runs/<profile>/eval/<variant>/record.json   the battery's record of a variant
    runs/<profile>/stages/<stage>.done          the Make file target of a finished stage
    runs/<profile>/cache/<name>/                results shared between runs (never a record)

``BENCH_RUNS`` moves ``runs/``. Nothing else in the package globs ``runs/``: it asks here
(:func:`record_paths`, :func:`iter_records`, :func:`find_record`, :func:`run_dir`).

A stage writes its record through :func:`stage_run`, which creates the run with its final variant
name, stage and config hash; nothing rewrites them afterwards::

    with stage_run(cfg, variant="base", stage="base", sections=("model",)) as run:
        run.metrics["param_count"] = {"value": n}
    # record.json is written only if the block finished without an exception
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench import peak_memory
from bench.config import REPO_ROOT, ProfileConfig, dump_yaml
from bench.io import atomic_write_json, atomic_write_text
from bench.provenance import provenance
from bench.records import RECORD_NAME, SCHEMA_VERSION, RecordError, read_record

log = logging.getLogger(__name__)

EVAL_STAGE = "eval"
EVAL_DIR = "eval"  # runs/<profile>/eval/<variant>/: the battery's records
STAGES_DIR = "stages"  # runs/<profile>/stages/<stage>.done
CACHE_DIR = "cache"
VALIDATION_DIR = "validation"  # runs/<profile>/validation/: `bench validate`'s read-outs (never records)
# Stages in pipeline order (how leaderboards, variant lists and perf reports sort them).
PIPELINE_STAGES = ("base", "sft", "policy-answers", "reward", "cost", "onpolicy", "dpo", "ppo", "steer", "eval")


def runs_root() -> Path:
    """Where run directories live; ``BENCH_RUNS`` moves them (e.g. to scratch on a cluster)."""
    return Path(os.environ.get("BENCH_RUNS", REPO_ROOT / "runs"))


def profile_root(profile: str) -> Path:
    return runs_root() / profile


def stage_rank(stage: str) -> int:
    """Position of ``stage`` in :data:`PIPELINE_STAGES`; an unknown stage sorts last."""
    return PIPELINE_STAGES.index(stage) if stage in PIPELINE_STAGES else len(PIPELINE_STAGES)


def run_dir(profile: str, variant: str, stage: str | None = None, root: Path | None = None) -> Path:
    """The folder of one run: ``runs/<profile>/<variant>/``, or ``runs/<profile>/eval/<variant>/``
    for the battery's record of ``variant`` (``stage="eval"``); ``root`` replaces ``runs/<profile>``."""
    root = Path(root) if root is not None else profile_root(profile)
    return root / EVAL_DIR / variant if stage == EVAL_STAGE else root / variant


def cache_dir(profile: str, name: str) -> Path:
    """``runs/<profile>/cache/<name>/``: results shared between runs of a profile (never a record)."""
    return profile_root(profile) / CACHE_DIR / name


def validation_dir(profile: str) -> Path:
    """``runs/<profile>/validation/``: the validation read-outs of ``bench validate`` (never a record)."""
    return profile_root(profile) / VALIDATION_DIR


def stage_marker(profile: str, stage: str) -> Path:
    """``runs/<profile>/stages/<stage>.done``: the Make file target of a finished stage."""
    return profile_root(profile) / STAGES_DIR / f"{stage}.done"


def record_paths(profile: str, root: Path | None = None) -> list[Path]:
    """Every ``record.json`` of a profile: stage records first, then the battery's (sorted)."""
    root = Path(root) if root is not None else profile_root(profile)
    stage = [p for p in sorted(root.glob(f"*/{RECORD_NAME}")) if p.parent.name not in (EVAL_DIR, STAGES_DIR, CACHE_DIR, VALIDATION_DIR)]
    return stage + sorted(root.glob(f"{EVAL_DIR}/*/{RECORD_NAME}"))


def iter_records(profile: str, root: Path | None = None, strict: bool = False) -> Iterator[dict]:
    """The readable records of a profile, in :func:`record_paths` order. An unreadable one is logged
    and skipped (the stage that owns it reports the error when it runs), or raised with ``strict``."""
    for path in record_paths(profile, root):
        try:
            yield read_record(path)
        except RecordError as e:
            if strict:
                raise
            log.warning("skipping unreadable record: %s", e)


def find_record(profile: str, variant: str, stage: str | None = None) -> dict | None:
    """The record of ``variant`` (its battery record with ``stage="eval"``), None when there is none;
    a corrupt one raises :class:`RecordError`."""
    path = run_dir(profile, variant, stage) / RECORD_NAME
    return read_record(path) if path.exists() else None


def is_done(cfg: ProfileConfig, variant: str, config_hash: str, stage: str | None = None) -> bool:
    """True when a valid record exists for this run with the same config hash."""
    try:
        rec = find_record(cfg.profile.name, variant, stage)
    except RecordError:
        return False
    return rec is not None and rec.get("config_hash") == config_hash


def mark_stage_done(cfg: ProfileConfig, stage: str) -> Path:
    """Written after every variant of a stage has its record, so Make skips the stage next time.
    It lists the records' config hashes: a marker never stands for records that are not there.

    Every rank of a multi-rank stage calls it; rank 0 alone reads the records and writes the marker,
    after a barrier (every rank has finished the stage), and the others wait (and fail with it)."""
    from bench.distributed import main_process_writes

    with main_process_writes() as main:
        if main:
            _write_stage_marker(cfg, stage)
    return stage_marker(cfg.profile.name, stage)


def _write_stage_marker(cfg: ProfileConfig, stage: str) -> Path:
    profile = cfg.profile.name
    variants = {rec["variant"]: rec["config_hash"] for rec in iter_records(profile, strict=True) if rec["stage"] == stage}
    skipped = getattr(cfg, stage, "present") is None  # the profile does not configure this stage
    if not variants and not skipped:
        raise RecordError(f"{profile_root(profile)}: stage '{stage}' finished but wrote no record")
    path = stage_marker(profile, stage)
    marker = {"stage": stage, "profile": profile, "variants": variants}
    if skipped:
        marker["skipped"] = f"profile has no '{stage}' section"
    atomic_write_json(path, marker)
    return path


@contextlib.contextmanager
def variant_lock(profile: str, variant: str, stage: str | None = None, timeout: float = -1) -> Iterator[None]:
    """Exclusive lock on one run directory, held while a process checks whether the work is done and
    does it, so two concurrent runs never score or write the same variant twice (the second waits,
    then finds the record up to date)."""
    from filelock import FileLock

    d = run_dir(profile, variant, stage)
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".lock"), timeout=timeout):
        yield


_HUB_REVISIONS: dict[str, dict] = {}


def hub_revisions(cfg: ProfileConfig) -> dict[str, str | None]:
    """Exact commit sha of every hub model/dataset the profile uses, resolved once per process and
    config (building the fetch plan costs seconds; a battery writes one record per variant)."""
    if cfg.config_hash not in _HUB_REVISIONS:
        from bench.hub import resolved_revisions

        _HUB_REVISIONS[cfg.config_hash] = resolved_revisions(cfg)
    return dict(_HUB_REVISIONS[cfg.config_hash])


@dataclass
class StageRun:
    """Mutable state of one stage while it runs; turned into record.json on success. Its identity
    (variant, stage, config hash, folder) is fixed when :func:`stage_run` creates it."""

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
    resources: dict[str, Any] = field(default_factory=dict)  # set by stage_run on success (bench.peak_memory)

    def to_record(self, wall_time_s: float) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "profile": self.cfg.profile.name,
            "variant": self.variant,
            "stage": self.stage,
            "config_hash": self.config_hash,
            "seed": self.cfg.profile.seed,
            # the resolved compute precision (bench.precision): what `model.precision: auto` became here
            "provenance": {**provenance(self.hub_revisions), "precision": self.cfg.model.precision},
            "datasets": self.datasets,
            "wall_time_s": round(wall_time_s, 3),
            "resources": self.resources,  # peak memory while the stage ran (bench.peak_memory)
            "metrics": self.metrics,
            "artifacts": self.artifacts,
            "extra": self.extra,
        }


def _logger(folder: Path, name: str) -> logging.Logger:
    """The run's file logger: ``log.txt`` on rank 0, ``log.rank<N>.txt`` on rank N of a multi-rank
    stage (each rank logs its own steps; only rank 0's log sits beside the record)."""
    from bench.distributed import rank

    r = rank()
    path = folder / ("log.txt" if r == 0 else f"log.rank{r}.txt")
    log = logging.getLogger(f"bench.run.{name}" + (f".rank{r}" if r else ""))
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
def stage_run(cfg: ProfileConfig, variant: str, stage: str, sections: tuple[str, ...] = (),
              config_hash: str | None = None) -> Iterator[StageRun]:
    """Run directory (:func:`run_dir` of ``variant`` and ``stage``), resolved config, log file and
    timer for one stage; the record is written atomically only when the block completes, so an
    interrupted stage never leaves a record.

    The config hash is ``config_hash`` when the stage computes its own (steering, the battery: they
    hash more than config sections), else the hash of ``sections`` (all of the config without).

    ``config.yaml`` is written (atomically) only on success too, just before the record: a stage that
    fails or is killed leaves the earlier run's record and config side by side, never the failed
    run's config beside an older record. (Config first, then record: a kill between the two leaves a
    record whose hash no longer matches the config, so the next run redoes the stage and rewrites
    both.) Nothing reads ``config.yaml`` during a run; it documents the record beside it.

    Under several ranks every rank enters (each logs to its own file, see :func:`_logger`) and fills
    its StageRun; on success rank 0 alone writes ``config.yaml`` and the record, after a barrier
    (every rank finished the block), and the others wait until it has. A rank that fails raises
    without any collective, so a failed run writes nothing and its launcher ends the other ranks."""
    from bench.distributed import main_process_writes

    d = run_dir(cfg.profile.name, variant, stage)
    d.mkdir(parents=True, exist_ok=True)
    label = f"{stage}.{variant}" if stage == EVAL_STAGE else variant
    log = _logger(d, f"{cfg.profile.name}.{label}")
    if config_hash is None:
        config_hash = cfg.section_hash(*sections) if sections else cfg.config_hash
    run = StageRun(cfg=cfg, variant=variant, stage=stage, config_hash=config_hash, dir=d, log=log,
                   hub_revisions=hub_revisions(cfg))
    log.info("start stage=%s variant=%s profile=%s config_hash=%s", stage, variant, cfg.profile.name, config_hash)
    t0 = time.perf_counter()
    try:
        with peak_memory.measure() as memory:  # rank 0's process on a multi-rank stage
            yield run
    except BaseException as e:
        log.error("stage failed: %s: %s", type(e).__name__, e)
        raise
    finally:
        for h in list(log.handlers):
            h.flush()
    wall = time.perf_counter() - t0
    run.resources = memory
    with main_process_writes() as main:
        if main:
            atomic_write_text(d / "config.yaml", dump_yaml(cfg))
            atomic_write_json(d / RECORD_NAME, run.to_record(wall))
    log.info("done in %.1fs; %s", wall, "record written" if main else "record written by rank 0")
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
