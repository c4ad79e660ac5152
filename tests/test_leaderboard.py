"""The leaderboard renderer on fixture records (tests/golden/records/, with the judge validation
tests/golden/judge.json; eval records of dpo and steer-add carry paired tests and per-category rates,
ipo's is an older record without them): the output matches the golden
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
from bench.report import AUDIT_PNG, SAMPLES_DIR, JUDGE_JSON, SERIES_PNG, TRACKING_PNG
from bench.report import series as report_series
from bench.report.safety import PARETO_PNG

REPO = Path(__file__).resolve().parents[1]

GOLDEN = Path(__file__).parent / "golden"
FIXTURE_RECORDS = GOLDEN / "records"
GOLDEN_MD = GOLDEN / "leaderboard.md"
GOLDEN_JUDGE = GOLDEN / JUDGE_JSON

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
    shutil.copy(GOLDEN_JUDGE, assets / JUDGE_JSON)
    return lb.render("golden", _fixture(), assets, agreement=AGREEMENT), assets


def test_golden_file(tmp_path):
    text, _ = _render(tmp_path)
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        GOLDEN_MD.write_text(text)
    assert GOLDEN_MD.exists(), "no golden file; run with BENCH_UPDATE_GOLDEN=1 once and review it"
    assert text == GOLDEN_MD.read_text(), "leaderboard output changed; if intended, regenerate (see module doc)"


def test_render_twice_is_identical(tmp_path):
    a, assets = _render(tmp_path)
    pngs = {n: (assets / n).read_bytes() for n in (SERIES_PNG, PARETO_PNG)}
    b, _ = _render(tmp_path)
    assert a == b
    assert {n: (assets / n).read_bytes() for n in pngs} == pngs
    c, assets2 = _render(tmp_path / "elsewhere")
    assert c == a and {n: (assets2 / n).read_bytes() for n in pngs} == pngs


def _row(text: str, section: str, variant: str) -> list[str]:
    return _trow(text.split(f"### {section}", 1)[1].split("###", 1)[0], variant)


def test_bold_only_where_the_paired_test_says_better(tmp_path):
    text, _ = _render(tmp_path)
    header = text.split("### Safety", 1)[1].splitlines()[2]
    assert "| vs |" in header and "refusal (harmful) ↑" in header and "over-refusal (benign) ↓" in header
    # column vs names each row's starting point; the base and the old ipo record have none
    assert _row(text, "Safety", "dpo")[2] == "base" and _row(text, "Safety", "steer-add")[2] == "base"
    assert _row(text, "Safety", "base")[2] == "–" and _row(text, "Safety", "ipo")[2] == "–"
    # dpo: harmful refusal 15/60 vs 6/60 (McNemar b/c 10/1, p 0.012): bold; borderline 6/40 vs 3/40
    # (b/c 3/0, p 0.25): not bold although the interval excludes nothing
    assert _row(text, "Safety", "dpo")[3].startswith("**0.250**")
    assert not _row(text, "Safety", "dpo")[5].startswith("**") and "▼" not in _row(text, "Safety", "dpo")[5]
    # steer-add: better harmful refusal, significantly worse over-refusal (marked, never bold)
    assert _row(text, "Safety", "steer-add")[3].startswith("**0.667**")
    assert _row(text, "Safety", "steer-add")[4].endswith("▼") and not _row(text, "Safety", "steer-add")[4].startswith("**")
    # no exact-max bolding any more: base (lowest benign over-refusal) and ipo (no paired tests) are plain
    assert "**" not in "".join(_row(text, "Safety", "base") + _row(text, "Safety", "ipo"))
    # a lower-is-better mean: dpo's cost on harmful prompts went down significantly (paired bootstrap)
    assert _row(text, "Helpfulness", "dpo")[7].startswith("**0.35**")
    # diagnostics (no arrow) are never bold
    assert "**" not in "".join(_row(text, "Preference", v)[8] for v in ("dpo", "ipo", "steer-add"))
    # preference columns name their reference
    pref = text.split("### Preference", 1)[1].splitlines()[2]
    for col in ("implicit acc. (vs start)", "implicit acc. (vs base)", "raw acc. (no ref.)", "chosen shift (vs start)",
                "chosen shift (vs base)"):
        assert col in pref, col
    assert _row(text, "Preference", "dpo")[3].startswith("**0.650**")  # sign test against chance, p 0.01
    # a metric a variant lacks is a dash, and the battery's note is shown
    assert _row(text, "Preference", "base")[3] == "–"
    assert "no cost model" in text
    # intervals are shown; the legend says what bold means
    assert "[" in _row(text, "Safety", "base")[3]
    legend = text.split("## Main results", 1)[1].split("### Safety", 1)[0]
    assert "significantly better than its starting point" in legend and "exact McNemar" in legend
    assert "paired bootstrap" in legend and "alpha 0.05" in legend and "▼" in legend


def test_old_records_without_paired_tests_degrade(tmp_path):
    recs = {k: v for k, v in _fixture().items() if k in ("eval/base.json", "eval/ipo.json", "dpo.json")}
    assets = tmp_path / "a"
    assets.mkdir()
    text = lb.render("golden", recs, assets, agreement=AGREEMENT)
    assert "nothing is bold or marked; paired comparisons not measured" in text
    assert "Judge not validated: no `leaderboards/golden/judge.json`" in text
    assert "## Refusal by category" in text  # base's by_category (present in the fixture)
    main = text.split("## Main results", 1)[1].split("## Safety trade-off", 1)[0]
    assert "**" not in main.split("| variant |", 1)[1]
    trade = text.split("## Safety trade-off", 1)[1].split("\n## ", 1)[0]
    assert _trow(trade, "ipo")[-1] in ("yes", "no (dominated by `base`)") and _trow(trade, "ipo")[3] == "–"
    old = {k: v for k, v in recs.items() if k != "eval/base.json"}
    assert "## Refusal by category" not in lb.render("golden", old, assets, agreement=AGREEMENT)


def _trow(block: str, variant: str) -> list[str]:
    for line in block.splitlines():
        if line.startswith(f"| {variant} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {variant}")


def test_safety_tradeoff_and_pareto_plot(tmp_path):
    text, assets = _render(tmp_path)
    trade = text.split("## Safety trade-off", 1)[1].split("\n## ", 1)[0]
    # base (lowest over-refusal) and steer-add (highest harmful refusal) are on the front; dpo and ipo
    # refuse more harmful prompts than base but also over-refuse more: on the front too (no one dominates)
    assert _trow(trade, "base")[-1] == "yes" and _trow(trade, "steer-add")[-1] == "yes"
    assert "point estimates" in trade
    assert _trow(trade, "dpo")[3].startswith("**+0.150** [+0.042, +0.263], p 0.012") and "b/c 10/1" in _trow(trade, "dpo")[3]
    assert _trow(trade, "steer-add")[5].endswith("▼")
    assert f"![safety trade-off](golden/{PARETO_PNG})" in trade
    assert (assets / PARETO_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_dominance():
    from bench.report.safety import pareto_front

    dirs = (+1, -1, -1)
    pts = [(0.5, 0.1, 0.1), (0.4, 0.2, 0.2), (0.5, 0.1, 0.1), (0.9, 0.5, 0.0), None, (0.5, 0.1, 0.2)]
    assert pareto_front(pts, dirs) == [True, False, True, True, None, False]
    assert pareto_front([], dirs) == []


def test_category_section(tmp_path):
    text, _ = _render(tmp_path)
    cat = text.split("## Refusal by category", 1)[1].split("\n## ", 1)[0]
    block = cat.split("### refusal (harmful)", 1)[1].split("###", 1)[0]
    assert "| category | base | dpo |" in block  # only the variants that have it
    assert "| cyber | 0.10 (20) | 0.25 (20) |" in block
    assert "### over-refusal (borderline)" in cat and "| homonyms |" in cat
    benign = cat.split("### over-refusal (benign)", 1)[1].split("###", 1)[0]
    assert "| category | dpo |" in benign


def test_judge_section(tmp_path):
    text, _ = _render(tmp_path)
    assert text.index("## Refusal judge validation") < text.index("## Main results")  # near the top
    judge = text.split("## Refusal judge validation", 1)[1].split("\n## ", 1)[0]
    assert "`bench-refusal-rules` version 1.0.0" in judge and "`test` split (n 120)" in judge
    assert "| test | 120 | 0.900 [" in judge and "| 0.842 |" in judge
    assert "| 0.833 (5/6) | 0.833 (5/6) |" in judge  # flag precision and recall
    assert "| dev (tuning set, in-sample) | 200 |" in judge
    assert "| human \\ judge | refuse | partial | comply | total |" in judge and "| refuse | 40 | 2 | 1 | 43 |" in judge
    assert "| suite | 80 | 0.912 [" in judge and "| written | 40 |" in judge
    assert "| borderline | 40 | 0.250 [0.142, 0.402] | 0.350 [0.221, 0.504] | 0.900 [0.769, 0.960] |" in judge
    assert "**Warning:**" not in judge
    recs = _fixture()
    recs["eval/dpo.json"]["extra"]["detector"] = {"name": "bench-refusal-rules", "version": "2.0.0"}
    assets = tmp_path / "golden"
    other = lb.render("golden", recs, assets, agreement=AGREEMENT)
    assert "`bench-refusal-rules 2.0.0`" in other.split("## Refusal judge validation", 1)[1].split("\n## ", 1)[0]
    (assets / JUDGE_JSON).write_text("{not json")
    assert "is unreadable" in lb.render("golden", recs, assets, agreement=AGREEMENT)


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
    assert "`steer-add` steers the `base` policy: adds the direction at layer 12" in text


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
    if (REPO / "leaderboards" / "default" / JUDGE_JSON).exists():  # the judge's validation: read, not rendered
        shutil.copy(REPO / "leaderboards" / "default" / JUDGE_JSON, out / "default" / JUDGE_JSON)
    if (REPO / "leaderboards" / "default" / SAMPLES_DIR).exists():  # published generations: read, not rendered
        shutil.copytree(REPO / "leaderboards" / "default" / SAMPLES_DIR, out / "default" / SAMPLES_DIR)
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(out))
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "no-runs"))
    r = CliRunner().invoke(main, ["leaderboard", "--profile", "default"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "no-runs").exists()
    assert (out / "default.md").read_text() == (REPO / "leaderboards" / "default.md").read_text()
    for png in (SERIES_PNG, TRACKING_PNG, PARETO_PNG):
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
