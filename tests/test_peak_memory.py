"""bench.peak_memory: a stage's peak memory, measured from its own start, nested stages included."""

from __future__ import annotations

import mmap

import pytest

from bench import peak_memory


def _touch(mib: int) -> mmap.mmap:
    """``mib`` MiB of fresh resident pages: an anonymous mapping (never memory a malloc arena kept from
    earlier tests, which would not raise RSS), one write per page; unmapped when closed or collected."""
    m = mmap.mmap(-1, mib * 2**20)
    for off in range(0, mib * 2**20, mmap.PAGESIZE):
        m[off] = 1
    return m


def test_peak_is_from_the_stage_start_and_nested_stages_keep_the_outer_peak():
    _touch(300).close()  # before: a later stage's peak must not include it once it is freed
    with peak_memory.measure() as outer:
        _touch(200).close()
        with peak_memory.measure() as inner:  # resets the high-water mark: the outer's 200 MiB must survive
            _touch(40).close()
    assert outer["peak_rss_mib"] - outer["start_rss_mib"] >= 190
    assert 35 <= inner["peak_rss_mib"] - inner["start_rss_mib"] < 190
    assert outer["peak_rss_mib"] >= inner["peak_rss_mib"]
    assert outer["peak_cuda_mib"] is None and "VmHWM" in outer["how"]


def test_nested_cuda_peak_survives_the_inner_reset(monkeypatch):
    """The CUDA peak is folded in before an inner stage resets it, as the host mark is (a fake CUDA)."""

    class FakeCuda:
        def __init__(self):
            self.current = self.peak = 0

        def alloc(self, n):
            self.current += n
            self.peak = max(self.peak, self.current)

        def free(self, n):
            self.current -= n

        def reset_peak_memory_stats(self):
            self.peak = self.current

        def max_memory_allocated(self):
            return self.peak

    cuda = FakeCuda()
    monkeypatch.setattr(peak_memory, "_cuda", lambda: cuda)
    with peak_memory.measure() as outer:
        cuda.alloc(300 * 2**20)
        cuda.free(300 * 2**20)
        with peak_memory.measure() as inner:
            cuda.alloc(10 * 2**20)
            cuda.free(10 * 2**20)
    assert (outer["peak_cuda_mib"], inner["peak_cuda_mib"]) == (300.0, 10.0)


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
        _touch(64).close()
    rec = read_record(run.dir / "record.json")
    res = rec["resources"]
    assert res["peak_rss_mib"] - res["start_rss_mib"] >= 60
    assert res["peak_cuda_mib"] is None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
