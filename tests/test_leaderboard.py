"""The leaderboard renderer on fixture records (tests/golden/records/): the output matches the golden
file byte for byte, rendering twice is identical (markdown and PNGs), published copies are pruned,
a re-render from the copies alone (no runs/) gives the same file, and the committed
leaderboards/default.md is re-rendered byte for byte from its committed records.

Regenerate the golden file after an intended change of the output, and review the diff:

    BENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_leaderboard.py -k golden
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench import leaderboard as lb
from bench.report import AUDIT_PNG, SERIES_PNG, TRACKING_PNG
from bench.report import series as report_series

REPO = Path(__file__).resolve().parents[1]

GOLDEN = Path(__file__).parent / "golden"
FIXTURE_RECORDS = GOLDEN / "records"
GOLDEN_MD = GOLDEN / "leaderboard.md"

# A fixed detector agreement, so that the golden file does not change when the detector does.
AGREEMENT = {
    "detector": {"name": "bench-refusal-rules", "version": "1.0.0"},
    "comply": {"n": 200, "agree": 190, "rate": 0.95},
    "refuse": {"n": 150, "agree": 141, "rate": 0.94},
    "partial": {"n": 96, "agree": 80, "rate": 80 / 96},
    "overall": {"n": 446, "agree": 411, "rate": 411 / 446},
    "confusion": {"comply": {"comply": 190, "refuse": 6, "partial": 4},
                  "refuse": {"comply": 5, "refuse": 141, "partial": 4},
                  "partial": {"comply": 10, "refuse": 6, "partial": 80}},
}


def _fixture() -> dict[str, dict]:
    return {str(p.relative_to(FIXTURE_RECORDS)): json.loads(p.read_text())
            for p in sorted(FIXTURE_RECORDS.rglob("*.json"))}


def _render(tmp_path: Path) -> tuple[str, Path]:
    assets = tmp_path / "golden"
    assets.mkdir(parents=True, exist_ok=True)
    return lb.render("golden", _fixture(), assets, agreement=AGREEMENT), assets


def test_golden_file(tmp_path):
    text, _ = _render(tmp_path)
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        GOLDEN_MD.write_text(text)
    assert GOLDEN_MD.exists(), "no golden file; run with BENCH_UPDATE_GOLDEN=1 once and review it"
    assert text == GOLDEN_MD.read_text(), "leaderboard output changed; if intended, regenerate (see module doc)"


def test_render_twice_is_identical(tmp_path):
    a, assets = _render(tmp_path)
    png = (assets / SERIES_PNG).read_bytes()
    b, _ = _render(tmp_path)
    assert a == b
    assert (assets / SERIES_PNG).read_bytes() == png
    c, assets2 = _render(tmp_path / "elsewhere")
    assert c == a and (assets2 / SERIES_PNG).read_bytes() == png


def _row(text: str, section: str, variant: str) -> list[str]:
    block = text.split(f"### {section}", 1)[1].split("###", 1)[0]
    for line in block.splitlines():
        if line.startswith(f"| {variant} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {variant} in {section}")


def test_best_per_column_and_directions(tmp_path):
    text, _ = _render(tmp_path)
    header = text.split("### Safety", 1)[1].splitlines()[2]
    assert "refusal (harmful) ↑" in header and "over-refusal (benign) ↓" in header
    # highest harmful refusal (steer-add) and lowest benign over-refusal (base, ipo: tie) in bold
    assert _row(text, "Safety", "steer-add")[2].startswith("**0.667**")
    assert _row(text, "Safety", "base")[3].startswith("**0.017**")
    assert _row(text, "Safety", "ipo")[3].startswith("**0.017**")
    assert not _row(text, "Safety", "dpo")[3].startswith("**")
    # diagnostics (no arrow) are never bold
    assert "**" not in "".join(_row(text, "Preference", v)[6] for v in ("dpo", "ipo", "steer-add"))
    # a metric a variant lacks is a dash, and the battery's note is shown
    assert _row(text, "Preference", "base")[2] == "–"
    assert "no cost model" in text
    # intervals are shown
    assert "[" in _row(text, "Safety", "base")[2]


def test_sections_present(tmp_path):
    text, assets = _render(tmp_path)
    for heading in ("## Main results", "## Metric definitions", "## Reward and cost models",
                    "## Steering: refusal-direction audit", "## Refusal detector",
                    "## Training logs", "## Provenance", "## Reproduce"):
        assert heading in text, heading
    assert "make leaderboard PROFILE=golden" in text and "git checkout 0123456789ab" in text
    assert "| rm_accuracy" not in text and "RM accuracy ↑" in text
    assert "lm_eval/helpful_mc/acc" in text  # defined in the definitions table
    assert "![training series](golden/series.png)" in text and (assets / SERIES_PNG).exists()
    assert "`steer-add`: add at layer 12" in text


def _fake_runs(root: Path, profile: str) -> Path:
    runs = root / "runs" / profile
    for name, rec in _fixture().items():
        d = runs / name[:-5]
        d.mkdir(parents=True, exist_ok=True)
        (d / "record.json").write_text(json.dumps(dict(rec, profile=profile)))
    (runs / "stages").mkdir()
    (runs / "stages" / "eval.done").write_text("{}")
    return runs


def test_publish_prune_and_rerender_from_records(tmp_path, monkeypatch):
    monkeypatch.setattr(lb, "detector_agreement", lambda: AGREEMENT)
    runs = _fake_runs(tmp_path, "p")
    out = tmp_path / "leaderboards"
    md = lb.publish("p", runs=runs, out_root=out, progress=lambda s: None)
    first = md.read_text()
    copied = json.loads((out / "p" / "records" / "dpo.json").read_text())
    assert "log_history" not in copied["extra"] and copied["extra"]["series"]
    assert (out / "p" / "records" / "eval" / "steer-add.json").exists()
    # a stale copy (a variant no longer in runs/) is removed on the next publish
    (out / "p" / "records" / "gone.json").write_text("{}")
    lb.publish("p", runs=runs, out_root=out, progress=lambda s: None)
    assert not (out / "p" / "records" / "gone.json").exists()
    assert md.read_text() == first
    # without runs/: `bench leaderboard` re-renders from the published copies only
    shutil.rmtree(tmp_path / "runs")
    md.unlink()
    lb.write_leaderboard("p", out_root=out, progress=lambda s: None)
    assert md.read_text() == first


def test_render_without_copies_is_an_error(tmp_path):
    from bench.records import RecordError

    with pytest.raises(RecordError, match="no reported records"):
        lb.write_leaderboard("nothing", out_root=tmp_path, progress=lambda s: None)


def test_audit_table_and_plot_rendered(tmp_path):
    recs = _fixture()
    table = {"layers": [1, 2], "position": -1, "grouping": "label", "layer_note": "hidden-state index",
             "separability": "Cohen's d", "checkpoints": [{"name": "base"}, {"name": "dpo"}],
             "metrics": {"norm": [[1.0, 1.1], [2.0, 2.2]], "separability": [[0.5, 0.6], [1.5, None]],
                         "cos_base": [[1.0, 0.9], [1.0, 0.8]]}}
    recs["steer-audit.json"] = dict(recs["steer-add.json"], variant="steer-audit", artifacts={"audit_plot": "x.png"},
                                    extra={"audit": table})
    assets = tmp_path / "a"
    assets.mkdir()
    (assets / AUDIT_PNG).write_bytes(b"png")
    text = lb.render("golden", recs, assets, agreement=AGREEMENT)
    section = text.split("## Steering: refusal-direction audit", 1)[1].split("\n## ", 1)[0]
    assert "| layer |" in section and "0.900" in section
    assert "![steering audit](golden/steer_audit.png)" in section


def test_detector_agreement_is_computed_from_labelled_set():
    a = lb.detector_agreement()
    assert a["overall"]["n"] >= 300 and set(a) >= {"comply", "refuse", "partial", "confusion", "detector"}


def test_cli_publish_then_leaderboard_without_runs(tmp_path, monkeypatch):
    """`bench publish` copies and renders; `bench leaderboard` renders from the copies alone (no runs/;
    `--from-records`, which committed leaderboards print, is still accepted); publish needs records."""
    from click.testing import CliRunner

    from bench.cli import main

    monkeypatch.setattr(lb, "detector_agreement", lambda: AGREEMENT)
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(tmp_path / "leaderboards"))
    _fake_runs(tmp_path, "p")
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    r = CliRunner().invoke(main, ["publish", "--profile", "smoke", "profile.name=p"])
    assert r.exit_code == 0, r.output
    md = tmp_path / "leaderboards" / "p.md"
    first = md.read_text()
    shutil.rmtree(tmp_path / "runs")
    for extra in ([], ["--from-records"]):
        md.unlink()
        r = CliRunner().invoke(main, ["leaderboard", "--profile", "smoke", "profile.name=p", *extra])
        assert r.exit_code == 0, r.output
        assert md.read_text() == first
    assert (tmp_path / "leaderboards" / "p" / "records" / "dpo.json").exists()  # leaderboard never touches them
    r = CliRunner().invoke(main, ["publish", "--profile", "smoke", "profile.name=p"])
    assert r.exit_code == 2 and r.output.startswith("error: no records under")


def test_committed_leaderboard_rerenders_byte_for_byte(tmp_path, monkeypatch):
    """`bench leaderboard` with no runs/ at all re-renders the committed leaderboards/default.md (and
    its PNGs) from the committed records alone."""
    from click.testing import CliRunner

    from bench.cli import main

    out = tmp_path / "leaderboards"
    shutil.copytree(REPO / "leaderboards" / "default" / "records", out / "default" / "records")
    shutil.copy(REPO / "leaderboards" / "default" / AUDIT_PNG, out / "default" / AUDIT_PNG)  # published, not rendered
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(out))
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "no-runs"))
    r = CliRunner().invoke(main, ["leaderboard", "--profile", "default"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "no-runs").exists()
    assert (out / "default.md").read_text() == (REPO / "leaderboards" / "default.md").read_text()
    for png in (SERIES_PNG, TRACKING_PNG):
        committed = REPO / "leaderboards" / "default" / png
        assert (out / "default" / png).exists() == committed.exists(), png
        if committed.exists():
            assert (out / "default" / png).read_bytes() == committed.read_bytes(), png


def test_tracking_series_rendered(tmp_path):
    from bench.stats import rate_metric

    recs = _fixture()
    series = [{"step": s, "fraction": f, "model_dir": f"/x/{s}",
               "metrics": {"refusal_harmful": rate_metric(k, 16), "over_refusal_benign": rate_metric(1, 16)}}
              for s, f, k in ((0, 0.0, 2), (5, 0.5, 4), (10, 1.0, 6))]
    recs["dpo.json"]["extra"]["tracking"] = {"series": series}
    assets = tmp_path / "a"
    assets.mkdir()
    text = lb.render("golden", recs, assets, agreement=AGREEMENT)
    assert "## Tuning dynamics" in text and "![tuning dynamics](golden/tracking.png)" in text
    assert (assets / TRACKING_PNG).exists()
    assert any(line.startswith("| dpo | 5 |") for line in text.splitlines())
    assert text == lb.render("golden", recs, assets, agreement=AGREEMENT)
    assert report_series.tracked_records(recs)


def _fake_record(variant: str, stage: str, values: list[float]) -> dict:
    def m(v):
        return {"value": v, "ci_low": max(0.0, v - 0.1), "ci_high": min(1.0, v + 0.1), "n": 16}

    series = [{"step": i * 10, "fraction": i / (len(values) - 1), "model_dir": f"/x/{variant}/{i}",
               "metrics": {"refusal_harmful": m(v), "over_refusal_benign": m(v / 2), "pref_acc_raw": m(0.5),
                           **({"pref_acc_implicit": m(0.5 + v / 4)} if i else {}),
                           "logp_margin_per_token": {"value": v - 0.5, "ci_low": None, "ci_high": None, "n": 16}}}
              for i, v in enumerate(values)]
    return {"variant": variant, "stage": stage, "extra": {"tracking": {"series": series}}}


def test_plot_tracking_writes_png(tmp_path):
    recs = [_fake_record("dpo", "dpo", [0.1, 0.3, 0.6]), _fake_record("ppo-kl", "ppo", [0.1, 0.2]),
            {"variant": "reward", "stage": "reward", "extra": {}}]
    out = report_series.plot_tracking(recs, tmp_path / "series.png")
    assert out == tmp_path / "series.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report_series.plot_tracking({"a.json": recs[2]}, tmp_path / "none.png") is None  # nothing tracked
    table = report_series.tracking_table(recs)
    assert len(table) == 2 + 5 and table[2].startswith("| dpo | 0 | 0.00 | 0.100")


def test_leaderboard_reads_no_training_code():
    """Rendering and publishing import nothing under bench/train/ (DESIGN.md §7)."""
    import subprocess
    import sys

    code = ("import sys, bench.leaderboard, bench.published, bench.verify, bench.report.series; "
            "print(sorted(m for m in sys.modules if m.startswith('bench.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
