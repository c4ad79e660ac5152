"""Records are written atomically, carry provenance, and corrupt ones are refused."""

from __future__ import annotations

import json
import os

import pytest

from bench.config import load_config
from bench.io import atomic_write_json, atomic_write_text
from bench.records import SCHEMA_VERSION, RecordError, read_record
from bench.runs import is_done, mark_stage_done, stage_marker, stage_run
from bench.stats import mean_metric, rate_metric, wilson_interval


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"v": 1})
    atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]  # no temp files left


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.txt"]


def test_stage_run_writes_record_with_provenance():
    cfg = load_config("smoke", ["profile.name=rec-test"])
    with stage_run(cfg, variant="v1", stage="unit", sections=("model",)) as run:
        run.metrics["acc"] = rate_metric(3, 4)
    rec = read_record(run.dir / "record.json")
    assert rec["schema_version"] == SCHEMA_VERSION
    assert rec["variant"] == "v1" and rec["stage"] == "unit" and rec["profile"] == "rec-test"
    assert rec["config_hash"] == cfg.section_hash("model")
    assert rec["metrics"]["acc"]["value"] == 0.75 and rec["metrics"]["acc"]["n"] == 4
    prov = rec["provenance"]
    assert set(prov) >= {"git", "packages", "hardware", "date"}
    assert prov["packages"]["torch"].startswith("2.")
    assert (run.dir / "config.yaml").exists() and "start stage=unit" in (run.dir / "log.txt").read_text()
    assert is_done(cfg, "v1", cfg.section_hash("model"))
    assert not is_done(cfg, "v1", "different-hash")
    marker = mark_stage_done(cfg, "unit")
    assert marker == stage_marker("rec-test", "unit")
    assert json.loads(marker.read_text())["variants"] == {"v1": cfg.section_hash("model")}


def test_failed_stage_writes_no_record():
    cfg = load_config("smoke", ["profile.name=rec-fail"])
    with pytest.raises(RuntimeError):
        with stage_run(cfg, variant="v", stage="unit") as run:
            raise RuntimeError("crash mid-stage")
    assert not (run.dir / "record.json").exists()
    assert "crash mid-stage" in (run.dir / "log.txt").read_text()
    with pytest.raises(RecordError, match="wrote no record"):
        mark_stage_done(cfg, "unit")


def test_truncated_record_is_refused(tmp_path):
    p = tmp_path / "record.json"
    p.write_text('{"schema_version": 1, "variant": "x", "metr')
    with pytest.raises(RecordError, match="corrupt record"):
        read_record(p)
    p.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(RecordError, match="lacks field"):
        read_record(p)
    p.write_text(json.dumps({"schema_version": 99, "variant": "x", "stage": "s", "profile": "p",
                             "config_hash": "h", "metrics": {}}))
    with pytest.raises(RecordError, match="schema_version 99"):
        read_record(p)
    with pytest.raises(RecordError, match="no record"):
        read_record(tmp_path / "missing.json")


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_metric():
    m = mean_metric([1.0, 2.0, 3.0])
    assert m["value"] == 2.0 and m["n"] == 3
    assert m["ci_low"] == pytest.approx(2 - 4.302652729911275 / 3 ** 0.5, rel=1e-9)  # Student t, 2 d.f.


def _locked_worker(profile, log_path, done_path):
    import time

    from bench.runs import variant_lock

    with variant_lock(profile, "eval/v"):
        if not os.path.exists(done_path):  # the check-then-work a stage does under the lock
            with open(log_path, "a") as f:
                f.write("work\n")
            time.sleep(0.3)
            atomic_write_text(done_path, "done")


def test_variant_lock_makes_concurrent_runs_do_the_work_once(tmp_path):
    """Concurrency: two processes evaluating the same variant at once: one works, the other waits and
    then finds it done; nothing is duplicated."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    log, done = tmp_path / "log.txt", tmp_path / "done"
    procs = [ctx.Process(target=_locked_worker, args=("lock-test", str(log), str(done))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert log.read_text() == "work\n"


def test_json_sha256_is_the_canonical_json_digest():
    import hashlib

    from bench.io import json_sha256

    obj = {"b": [1, 2.5, None], "a": "é", "t": ("x", 1)}
    blob = json.dumps(obj, sort_keys=True, default=str)
    assert json_sha256(obj) == hashlib.sha256(blob.encode()).hexdigest()
    assert json_sha256(obj, length=16) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert json_sha256({"a": "é"}, ensure_ascii=False) != json_sha256({"a": "é"})  # the UTF-8 form is its own key
    assert json_sha256({"x": 1, "y": 2}) == json_sha256({"y": 2, "x": 1})
