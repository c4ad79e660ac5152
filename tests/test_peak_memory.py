"""bench.peak_memory: a stage's peak memory, measured from its own start, nested stages included."""

from __future__ import annotations

import numpy as np
import pytest

from bench import peak_memory


def _touch(mib: int) -> np.ndarray:
    a = np.empty(mib * 2**20, dtype=np.uint8)
    a[::4096] = 1  # resident: one write per page
    return a


def test_peak_is_from_the_stage_start_and_nested_stages_keep_the_outer_peak():
    big = _touch(300)  # before: a later stage's peak must not include it once it is freed
    del big
    with peak_memory.measure() as outer:
        held = _touch(200)
        del held
        with peak_memory.measure() as inner:  # resets the high-water mark: the outer's 200 MiB must survive
            small = _touch(40)
            del small
    assert outer["peak_rss_mib"] - outer["start_rss_mib"] >= 190
    assert 35 <= inner["peak_rss_mib"] - inner["start_rss_mib"] < 190
    assert outer["peak_rss_mib"] >= inner["peak_rss_mib"]
    assert outer["peak_cuda_mib"] is None and "VmHWM" in outer["how"]


def test_no_reset_means_no_host_number(monkeypatch, tmp_path):
    monkeypatch.setattr(peak_memory, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with peak_memory.measure() as m:
        pass
    assert m["peak_rss_mib"] is None and m["start_rss_mib"] is None and "cannot be written" in m["how"]


def test_stage_record_carries_resources(smoke_cfg, tmp_path, monkeypatch):
    from bench.records import read_record
    from bench.runs import stage_run

    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    with stage_run(smoke_cfg, variant="probe", stage="sft") as run:
        held = _touch(64)
    del held
    rec = read_record(run.dir / "record.json")
    res = rec["resources"]
    assert res["peak_rss_mib"] - res["start_rss_mib"] >= 60
    assert res["peak_cuda_mib"] is None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
