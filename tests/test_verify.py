"""verify's tolerance logic on hand-made records: within -> ok, outside -> listed, missing metric or
record -> listed; unchecked metrics are ignored; the CLI exits non-zero listing every failure; the
reference is the records committed in git, so a publish (make leaderboard) before verify does not
turn the check into a comparison of the fresh records with themselves."""

from __future__ import annotations

import json
import math
import subprocess

from bench.metrics import LOGPROB, RATE, Tolerance, tolerance_for
from bench.stats import mean_metric, rate_metric
from bench.verify import compare, select


def _rec(variant: str, metrics: dict, stage: str = "eval") -> dict:
    return {"schema_version": 1, "profile": "p", "variant": variant, "stage": stage, "config_hash": "h",
            "metrics": metrics}


def _m(v, lo=None, hi=None, n=100):
    return {"value": v, "ci_low": lo, "ci_high": hi, "n": n}


def test_tolerance_table_routes_metrics():
    assert tolerance_for("refusal_harmful") is RATE
    assert tolerance_for("over_refusal_benign_partial") is RATE
    assert tolerance_for("lm_eval/helpful_mc/acc") is RATE
    assert tolerance_for("logp_margin_sum") is LOGPROB and tolerance_for("chosen_shift") is LOGPROB
    assert tolerance_for("wall_time_s") is None and tolerance_for("extraction_wall_time_s") is None
    assert tolerance_for("something_new") is not None  # the default rule


def test_rate_within_abs_or_ci():
    committed = rate_metric(20, 100)  # 0.20 [0.133, 0.289]
    assert RATE.accepts(committed, rate_metric(24, 100))  # |d| = 0.04 <= 0.05
    assert RATE.accepts(committed, rate_metric(27, 100))  # |d| = 0.07 but inside the committed CI
    assert not RATE.accepts(committed, rate_metric(35, 100))


def test_logprob_relative_tolerance():
    c = _m(-120.0)
    assert LOGPROB.accepts(c, _m(-120.1))  # 1e-3 * 120 + 1e-3 = 0.121
    assert not LOGPROB.accepts(c, _m(-120.2))
    assert LOGPROB.accepts(_m(0.0), _m(5e-4))  # near zero the absolute floor applies


def test_nan_handling():
    t = Tolerance(abs=0.1)
    assert t.accepts(_m(math.nan), _m(math.nan))
    assert not t.accepts(_m(math.nan), _m(0.0))
    assert not t.accepts(_m(0.0), _m(None))


def test_compare_lists_every_failure():
    committed = {
        "eval/dpo.json": _rec("dpo", {"refusal_harmful": rate_metric(20, 100), "logp_margin_sum": _m(-3.0),
                                      "rm_win_rate": rate_metric(50, 100), "wall_time_s": _m(10.0)}),
        "eval/base.json": _rec("base", {"refusal_harmful": rate_metric(5, 100)}),
        "reward.json": _rec("reward", {"rm_accuracy": rate_metric(60, 100)}, stage="reward"),
    }
    fresh = {
        "eval/dpo.json": _rec("dpo", {"refusal_harmful": rate_metric(21, 100),  # ok
                                      "logp_margin_sum": _m(-3.5),  # outside
                                      # rm_win_rate missing
                                      "wall_time_s": _m(99.0),  # not compared
                                      "brand_new_metric": _m(1.0)}),  # fresh-only: ignored
        "eval/base.json": _rec("base", {"refusal_harmful": rate_metric(5, 100)}),
        # reward.json missing
    }
    checks = compare(committed, fresh)
    bad = {(c.record, c.metric, c.status) for c in checks if not c.ok}
    assert bad == {("eval/dpo.json", "logp_margin_sum", "outside"),
                   ("eval/dpo.json", "rm_win_rate", "missing metric"),
                   ("reward.json", "*", "missing record")}
    ok = {(c.record, c.metric) for c in checks if c.ok}
    assert ok == {("eval/dpo.json", "refusal_harmful"), ("eval/base.json", "refusal_harmful")}
    assert all("wall_time_s" != c.metric for c in checks)
    line = next(c for c in checks if c.metric == "logp_margin_sum").line()
    assert "outside" in line and "-3.5" in line and "rel" in line


def test_identical_records_pass():
    recs = {"eval/x.json": _rec("x", {"refusal_harmful": rate_metric(3, 10), "reward_harmful": mean_metric([1, 2, 3])})}
    assert all(c.ok for c in compare(recs, json.loads(json.dumps(recs))))


def test_select_one_variant():
    recs = {"dpo.json": {}, "eval/dpo.json": {}, "eval/base.json": {}, "dpo-js.json": {}}
    assert set(select(recs, "dpo")) == {"dpo.json", "eval/dpo.json"}
    assert select(recs, None) == recs


def test_cli_verify_exits_nonzero_listing_failures(tmp_path, monkeypatch):
    """`bench verify` against committed copies: a fresh record outside tolerance fails with exit 1."""
    from click.testing import CliRunner

    import bench.eval.battery as battery
    import bench.published as published
    from bench.cli import main

    committed = {"eval/base.json": _rec("base", {"refusal_harmful": rate_metric(5, 100),
                                                 "logp_margin_sum": _m(-3.0)})}
    fresh = {"eval/base.json": _rec("base", {"refusal_harmful": rate_metric(40, 100),
                                             "logp_margin_sum": _m(-3.0)})}
    monkeypatch.setattr(published, "load_committed", lambda profile, **kw: committed)
    monkeypatch.setattr(published, "collect_records", lambda profile: fresh)
    monkeypatch.setattr(battery, "run_eval", lambda cfg, variant=None, force=False, progress=print: {variant: "up to date"})
    r = CliRunner().invoke(main, ["verify", "--profile", "smoke"])
    assert r.exit_code == 1, r.output
    assert "FAIL eval/base.json refusal_harmful" in r.output and "1 of 2 checks" in r.output
    fresh["eval/base.json"]["metrics"]["refusal_harmful"] = rate_metric(6, 100)
    r = CliRunner().invoke(main, ["verify", "--profile", "smoke"])
    assert r.exit_code == 0, r.output


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True)


def _write_fresh(rec: dict) -> None:
    from bench.records import RECORD_NAME
    from bench.runs import run_dir

    d = run_dir(rec["profile"], rec["variant"], rec["stage"])
    d.mkdir(parents=True, exist_ok=True)
    (d / RECORD_NAME).write_text(json.dumps(rec))


def test_verify_reads_the_committed_records_even_after_publish(tmp_path, monkeypatch):
    """Commit records, let a fresh run change a metric, publish (the working-tree copies now are the
    fresh records): verify still fails, against git HEAD. Without git it falls back to the working
    tree, says so, and then (after the publish) passes."""
    from click.testing import CliRunner

    import bench.eval.battery as battery
    import bench.published as published
    from bench.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(repo / "leaderboards"))
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(battery, "run_eval", lambda cfg, variant=None, force=False, progress=print: {variant: "up to date"})
    committed = _rec("base", {"refusal_harmful": rate_metric(5, 100), "logp_margin_sum": _m(-3.0)})
    _write_fresh(committed)
    published.publish_records("p")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "records")
    assert published.load_committed("p", progress=lambda s: None) == {"eval/base.json": committed}

    fresh = json.loads(json.dumps(committed))
    fresh["metrics"]["refusal_harmful"] = rate_metric(40, 100)
    _write_fresh(fresh)
    r = CliRunner().invoke(main, ["verify", "--profile", "smoke", "profile.name=p"])
    assert r.exit_code == 1 and "FAIL eval/base.json refusal_harmful" in r.output, r.output

    published.publish_records("p")  # what `make leaderboard` does before `make verify`
    r = CliRunner().invoke(main, ["verify", "--profile", "smoke", "profile.name=p"])
    assert r.exit_code == 1 and "FAIL eval/base.json refusal_harmful" in r.output, r.output
    assert "differs from HEAD" in r.output

    monkeypatch.setattr(published, "git_records", lambda rec_dir, rev="HEAD": None)  # no git (a container)
    r = CliRunner().invoke(main, ["verify", "--profile", "smoke", "profile.name=p"])
    assert r.exit_code == 0 and "not in a git checkout" in r.output, r.output


def test_git_records_outside_a_checkout_and_before_a_commit(tmp_path):
    import bench.published as published

    assert published.git_records(tmp_path / "leaderboards" / "p" / "records") is None  # not a git checkout
    _git(tmp_path, "init", "-q")
    assert published.git_records(tmp_path / "leaderboards" / "p" / "records") == {}  # nothing committed yet
