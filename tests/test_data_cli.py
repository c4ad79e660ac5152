"""``bench data stats`` / ``validate`` through click's CliRunner."""

from __future__ import annotations

from click.testing import CliRunner

from bench.data.cli import data


def test_stats_default_profile():
    res = CliRunner().invoke(data, ["stats", "--profile", "default"])
    assert res.exit_code == 0, res.output
    out = res.output
    for role, name in (("preferences", "embedded-pairs"), ("harmful", "embedded-harmful"),
                       ("benign", "embedded-benign"), ("borderline", "embedded-borderline"),
                       ("helpfulness", "embedded-helpfulness")):
        assert f"{role}: {name}" in out
    assert "validation" in out and "self_harm" in out and "label=unsafe-contrast" in out
    assert "better == safer" in out


def test_stats_smoke_caps_and_bad_override():
    res = CliRunner().invoke(data, ["stats", "--profile", "smoke"])
    assert res.exit_code == 0 and "max_train=32" in res.output
    res = CliRunner().invoke(data, ["stats", "--profile", "default", "data.harmful=nope"])
    assert res.exit_code == 2 and "unknown dataset 'nope'" in res.output


def test_validate_default_profile():
    res = CliRunner().invoke(data, ["validate", "--profile", "default"])
    assert res.exit_code == 0, res.output
    assert "held-out splits disjoint from train" in res.output
