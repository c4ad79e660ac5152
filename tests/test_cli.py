"""The CLI: help lists every stage; user errors are one line with exit 2; `base` writes a record
and its stage marker, and a second run skips the work."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bench.cli import main
from bench.records import read_record
from bench.runs import run_dir, stage_marker

STAGES = ["base", "sft", "reward", "cost", "dpo", "ppo", "steer", "eval", "leaderboard", "verify", "perf"]


def test_help_lists_stages():
    out = CliRunner().invoke(main, ["--help"]).output
    for s in STAGES + ["config"]:
        assert s in out


def test_config_show_applies_overrides():
    r = CliRunner().invoke(main, ["config", "show", "--profile", "smoke", "profile.seed=7"])
    assert r.exit_code == 0, r.output
    assert "seed: 7" in r.output and "config_hash=" in r.output


def test_bad_config_is_one_line_exit_2():
    r = CliRunner().invoke(main, ["config", "show", "--profile", "smoke", "model.dtpye=x"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error:") and "model.dtpye" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["base", "--profile", "nope"])
    assert r.exit_code == 2 and "unknown profile 'nope'" in r.output


def test_base_stage_writes_record_then_skips(smoke_base):
    runner = CliRunner()
    r = runner.invoke(main, ["base", "--profile", "smoke"])
    assert r.exit_code == 0, r.output
    rec = read_record(run_dir("smoke", "base") / "record.json")
    assert rec["stage"] == "base" and rec["metrics"]["param_count"]["value"] > 1_000_000
    assert rec["artifacts"]["model_dir"] == str(smoke_base)
    marker = json.loads(stage_marker("smoke", "base").read_text())
    assert marker["variants"] == {"base": rec["config_hash"]}
    r2 = runner.invoke(main, ["base", "--profile", "smoke"])
    assert r2.exit_code == 0 and "up to date" in r2.output
    assert read_record(run_dir("smoke", "base") / "record.json")["provenance"]["date"] == rec["provenance"]["date"]


def test_perf_command_is_wired():
    r = CliRunner().invoke(main, ["perf", "--help"])
    assert r.exit_code == 0 and "--quick" in r.output


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "base" in r.stdout
