"""bench.stale_records / `bench stale`: committed records against what the profile makes now.

The first test is the guard: every committed leaderboard of the default profile (each seed's) must be what
configs/default.yaml and this code make, so a profile edit that is not regenerated fails CI. The others
show that the check sees each kind of change, on copies of the committed records."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.config import load_config
from bench.eval.battery import eval_hash
from bench.published import load_reported
from bench.stale_records import expected_hashes, stale_records

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboards"  # read only (the tests' BENCH_LEADERBOARDS is a temporary folder)
PPO = ("ppo-js", "ppo-kl", "ppo-kl-full", "ppo-lag", "ppo-nokl", "ppo-nokl-full")


def _committed() -> list[tuple[str, int]]:
    """(profile name, seed) of every committed leaderboard of the default profile, read from its records."""
    out = []
    for rec_dir in sorted(COMMITTED.glob("default*/records")):
        rec = json.loads((rec_dir / "base.json").read_text())
        out.append((rec["profile"], rec["seed"]))
    return out


def _cfg(name: str = "default", seed: int = 0, *overrides: str):
    own = [] if name == "default" else [f"profile.name={name}", f"profile.seed={seed}"]
    return load_config("default", own + list(overrides))


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return load_reported("default", COMMITTED)


def test_every_committed_default_leaderboard_is_what_the_profile_makes():
    found = _committed()
    assert {name for name, _ in found} >= {"default", "default-s1", "default-s2"}
    for name, seed in found:
        assert stale_records(_cfg(name, seed), load_reported(name, COMMITTED)) == [], name


def test_expected_hashes_cover_every_training_record(records):
    trained = {r["variant"] for k, r in records.items() if not k.startswith("eval/") and r["stage"] != "steer"}
    assert set(expected_hashes(_cfg())) == trained


def test_a_shared_coefficient_makes_every_ppo_record_stale_and_nothing_else(records):
    lines = stale_records(_cfg("default", 0, "ppo.kl_coef=0.5"), records)
    assert sorted(line.split(":")[0] for line in lines) == sorted(PPO)


def test_a_variant_setting_makes_only_that_variant_stale(records):
    lines = stale_records(_cfg("default", 0, "ppo.variants.ppo-kl={regulariser: kl, kl_estimator: k1, coef: 0.5}"),
                          records)
    assert [line.split(":")[0] for line in lines] == ["ppo-kl"]


def test_an_eval_setting_makes_every_eval_record_stale(records):
    lines = stale_records(_cfg("default", 0, "eval.n_pairs=10"), records)
    evals = {k for k in records if k.startswith("eval/")}
    assert len(lines) == len(evals) and all(line.endswith("(extra.inputs differ in: sections_hash)") for line in lines)


def test_a_steering_setting_makes_the_steered_variants_stale(records):
    lines = stale_records(_cfg("default", 0, "steer.max_harmless_kl=0.2"), records)
    assert sorted(line.split(":")[0] for line in lines) == ["steer-ablate", "steer-add", "steer-gated"]


def test_a_new_variant_and_a_dropped_one_are_named(records):
    cfg = _cfg("default", 0, "dpo.variants.dpo-new={loss_type: [hinge]}")
    assert stale_records(cfg, records) == ["dpo-new: the profile names it, no record is committed"]
    extra = copy.deepcopy(records)
    extra["dpo-gone.json"] = dict(extra["dpo.json"], variant="dpo-gone")
    lines = stale_records(_cfg(), extra)
    assert lines[0] == "dpo-gone: committed, but the profile has no such dpo variant"
    assert lines[1:] == ["steer-audit: audits other checkpoints than the committed records list "
                         "(not audited: dpo-gone, dpo-gone@0, dpo-gone@15; audited, not committed: none)"]


def test_an_eval_of_another_training_run_is_named(records):
    edited = copy.deepcopy(records)
    edited["dpo.json"]["provenance"]["date"] = "2000-01-01T00:00:00+00:00"  # dpo re-trained, its eval not re-run
    lines = stale_records(_cfg(), edited)
    assert len(lines) == 1 and lines[0].startswith("eval dpo: committed with config hash")
    assert lines[0].endswith("(extra.inputs differ in: variant)")


def test_cli_exit_status(monkeypatch):
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(COMMITTED))
    runner = CliRunner()
    ok = runner.invoke(main, ["stale", "--profile", "default"])
    assert ok.exit_code == 0 and "every committed record is what the profile makes now" in ok.output
    bad = runner.invoke(main, ["stale", "--profile", "default", "ppo.kl_coef=0.5"])
    assert bad.exit_code == 1 and "stale: default: ppo-kl: committed with config hash" in bad.output
    seeds = runner.invoke(main, ["stale", "--profile", "default", "--seeds", "0 1 2"])
    assert seeds.exit_code == 0 and all(f"{n}: every committed record" in seeds.output
                                        for n in ("default", "default-s1", "default-s2"))
    bad = runner.invoke(main, ["stale", "--profile", "default", "--seeds", "1,2", "eval.n_pairs=10"])
    assert bad.exit_code == 1 and "stale: default-s1: eval base:" in bad.output and "stale: default-s2: eval base:" in bad.output
    assert "stale: default: " not in bad.output


def test_an_audit_that_misses_a_committed_checkpoint_is_named(records):
    edited = copy.deepcopy(records)
    table = edited["steer-audit.json"]["extra"]["audit"]
    table["checkpoints"] = [c for c in table["checkpoints"] if c["name"] != "dpo@15"]
    lines = stale_records(_cfg(), edited)
    assert lines == ["steer-audit: audits other checkpoints than the committed records list "
                     "(not audited: dpo@15; audited, not committed: none)"]
    edited["ppo-new.json"] = dict(edited["ppo-kl.json"], variant="ppo-new")  # a record added, the audit not re-run
    assert any("not audited: dpo@15, ppo-new;" in line for line in stale_records(_cfg(), edited))


def test_an_eval_of_other_test_rows_is_named_and_so_are_the_evals_measured_against_it(records):
    edited = copy.deepcopy(records)
    sft = edited["eval/sft.json"]
    inputs = sft["extra"]["inputs"]
    inputs["datasets"][sorted(inputs["datasets"])[0]] = "0" * 64
    sft["config_hash"] = eval_hash(inputs)  # a record scored on other test rows, consistent with itself
    lines = stale_records(_cfg(), edited)
    assert [line for line in lines if line.startswith("eval sft:")] == [
        line for line in lines if line.endswith("(extra.inputs differ in: datasets)")]
    assert len([line for line in lines if line.endswith("(extra.inputs differ in: datasets)")]) == 1
    starts_at_sft = {r["variant"] for k, r in edited.items() if k.startswith("eval/")
                     and (r["extra"]["inputs"].get("start") or {}).get("variant") == "sft"}
    assert starts_at_sft and {line.split(":")[0][len("eval "):] for line in lines
                              if line.endswith("(extra.inputs differ in: start)")} == starts_at_sft
