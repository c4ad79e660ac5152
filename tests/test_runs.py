"""bench.runs owns the run layout: where stage and battery records live, how they are iterated, and
that a run is created with its final name, stage and config hash."""

from __future__ import annotations

import json

import pytest

from bench.config import load_config
from bench.records import RECORD_NAME, RecordError, read_record, record_key
from bench.runs import (cache_dir, find_record, is_done, iter_records, mark_stage_done, record_paths, run_dir,
                        runs_root, stage_marker, stage_run)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    return load_config("smoke", ["profile.name=layout-test"])


def _write(cfg, variant, stage, value, config_hash=None):
    with stage_run(cfg, variant=variant, stage=stage, config_hash=config_hash) as run:
        run.metrics["m"] = {"value": value}
    return run


def test_layout_of_stage_and_battery_records(cfg, tmp_path):
    root = tmp_path / "runs" / "layout-test"
    assert runs_root() == tmp_path / "runs"
    assert run_dir("layout-test", "sft") == root / "sft"
    assert run_dir("layout-test", "sft", stage="eval") == root / "eval" / "sft"
    assert cache_dir("layout-test", "x") == root / "cache" / "x"
    assert stage_marker("layout-test", "sft") == root / "stages" / "sft.done"


def test_stage_run_creates_the_run_with_its_final_name_and_hash(cfg):
    run = _write(cfg, "sft", "eval", 0.5, config_hash="abc123")
    path = run_dir("layout-test", "sft", stage="eval") / RECORD_NAME
    rec = read_record(path)
    assert (rec["variant"], rec["stage"], rec["config_hash"]) == ("sft", "eval", "abc123")
    assert run.dir == path.parent
    assert find_record("layout-test", "sft", stage="eval")["metrics"]["m"]["value"] == 0.5
    assert find_record("layout-test", "sft") is None  # the stage record is another run
    assert is_done(cfg, "sft", "abc123", stage="eval") and not is_done(cfg, "sft", "other", stage="eval")
    assert not is_done(cfg, "sft", "abc123")
    # without an explicit hash the record carries the hash of the sections it names
    _write(cfg, "base", "base", 1.0)
    assert find_record("layout-test", "base")["config_hash"] == cfg.config_hash


def test_record_paths_and_iteration_skip_markers_caches_and_unreadable(cfg, tmp_path, caplog):
    _write(cfg, "sft", "sft", 1.0)
    _write(cfg, "base", "base", 1.0)
    _write(cfg, "sft", "eval", 2.0, config_hash="h")
    mark_stage_done(cfg, "sft")
    (cache_dir("layout-test", "x")).mkdir(parents=True)
    (cache_dir("layout-test", "x") / RECORD_NAME).write_text("{}")  # not a run
    bad = run_dir("layout-test", "broken") / RECORD_NAME
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    paths = record_paths("layout-test")
    root = tmp_path / "runs" / "layout-test"
    assert [p.relative_to(root).as_posix() for p in paths] == [
        "base/record.json", "broken/record.json", "sft/record.json", "eval/sft/record.json"]
    recs = list(iter_records("layout-test"))
    assert [record_key(r) for r in recs] == ["base.json", "sft.json", "eval/sft.json"]
    assert "broken" in caplog.text
    with pytest.raises(RecordError, match="broken"):
        list(iter_records("layout-test", strict=True))


def test_stage_marker_lists_eval_records_by_scored_variant(cfg):
    _write(cfg, "base", "eval", 1.0, config_hash="h1")
    _write(cfg, "sft", "eval", 1.0, config_hash="h2")
    _write(cfg, "sft", "sft", 1.0)
    marker = json.loads(mark_stage_done(cfg, "eval").read_text())
    assert marker["variants"] == {"base": "h1", "sft": "h2"}


def test_stage_without_a_record_cannot_be_marked_done(cfg):
    with pytest.raises(RecordError, match="wrote no record"):
        mark_stage_done(cfg, "dpo")


def test_hub_revisions_resolved_once_per_config(cfg, monkeypatch):
    import bench.hub
    import bench.runs

    calls = []
    monkeypatch.setattr(bench.runs, "_HUB_REVISIONS", {})
    monkeypatch.setattr(bench.hub, "resolved_revisions", lambda c: calls.append(c) or {"model:x": "sha"})
    for v in ("a", "b"):
        _write(cfg, v, "base", 1.0)
    assert len(calls) == 1
    assert find_record("layout-test", "b")["provenance"]["hub_revisions"] == {"model:x": "sha"}
