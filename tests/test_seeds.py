"""Across-seed table (bench.report.seeds, `bench seeds`) and the Make wiring of SEED / `make seeds`."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from bench.report.seeds import across_seeds, render, seed_profile

REPO = Path(__file__).resolve().parents[1]


def _eval(variant, refusal, over, p_refusal=None, delta=None):
    rec = {"variant": variant, "stage": "eval", "metrics": {
        "refusal_harmful": {"value": refusal, "ci_low": refusal - 0.05, "ci_high": refusal + 0.05, "n": 200},
        "over_refusal_benign": {"value": over, "ci_low": 0.0, "ci_high": over + 0.05, "n": 150}}, "extra": {}}
    if p_refusal is not None:
        rec["extra"]["paired"] = {"refusal_harmful": {"p": p_refusal, "delta": delta, "vs": "sft"}}
    return rec


def _seed(*recs):
    return {f"eval/{r['variant']}.json": r for r in recs} | {"sft.json": {"variant": "sft", "stage": "sft", "metrics": {}}}


def test_seed_profile_names_match_the_makefile():
    assert seed_profile("default", 0, 0) == "default" and seed_profile("default", 2, 0) == "default-s2"


def test_mean_spread_and_verdict_counts():
    per_seed = {0: _seed(_eval("dpo", 0.50, 0.08, 1e-9, -0.3), _eval("ipo", 0.6, 0.1)),
                1: _seed(_eval("dpo", 0.56, 0.10, 1e-6, -0.2), _eval("ipo", 0.6, 0.1)),
                2: _seed(_eval("dpo", 0.62, 0.12, 0.4, 0.05))}
    cells, missing = across_seeds(per_seed)
    c = cells["dpo"]["refusal_harmful"]
    assert c.mean == pytest.approx(0.56) and c.sd == pytest.approx(statistics.stdev([0.5, 0.56, 0.62]))
    assert c.verdicts == ("worse", "worse", "n.s.") and c.verdict_counts() == "2/3 worse"
    assert cells["dpo"]["over_refusal_benign"].verdict_counts() == "–"  # no paired test in the records
    assert missing == {"ipo": [2]} and "ipo" not in cells
    text = render("default", [0, 1, 2], {0: "default", 1: "default-s1", 2: "default-s2"}, per_seed)
    # sd over prompts: each seed's interval is 0.10 wide -> 0.10 / 3.92 = 0.0255; 0.060 / 0.0255 = 2.4
    assert c.prompt_sd == pytest.approx(0.1 / 3.919928)
    assert ("| dpo | 0.560 ± 0.060 [0.500 - 0.620] | 0.500 / 0.560 / 0.620 | 0.026 | 2.4 | -0.300 / -0.200 / +0.050 "
            "(mean -0.150) | 2/3 worse |") in text
    assert c.deltas == (-0.3, -0.2, 0.05) and c.mean_delta == pytest.approx(-0.15)
    assert "**" not in text.split("## refusal")[1]  # no bold: nothing is tested across seeds
    assert "- ipo: no eval record in seed(s) 2" in text
    assert "`leaderboards/default-s1/records/`" in text


def test_summary_lists_unanimous_and_flipped_verdicts():
    per_seed = {0: _seed(_eval("dpo", 0.5, 0.1, 1e-6, -0.3), _eval("ipo", 0.6, 0.1, 1e-6, 0.2), _eval("kto", 0.6, 0.1, 1e-6, 0.2)),
                1: _seed(_eval("dpo", 0.6, 0.1, 1e-4, -0.2), _eval("ipo", 0.6, 0.1, 1e-4, -0.2), _eval("kto", 0.6, 0.1, 0.5, 0.01))}
    cells, _ = across_seeds(per_seed)
    assert cells["dpo"]["refusal_harmful"].unanimous() == "worse" and not cells["dpo"]["refusal_harmful"].flips()
    assert cells["ipo"]["refusal_harmful"].unanimous() == "" and cells["ipo"]["refusal_harmful"].flips()
    assert cells["kto"]["refusal_harmful"].unanimous() == "" and not cells["kto"]["refusal_harmful"].flips()
    text = render("default", [0, 1], {0: "default", 1: "default-s1"}, per_seed)
    held = text.split("## Verdicts vs start that hold in all 2 seeds")[1].split("##")[0]
    flipped = text.split("## Verdicts that point opposite ways")[1].split("##")[0]
    assert "- dpo: worse on refusal (harmful): -0.300 / -0.200 (mean -0.250)" in held
    assert "ipo" not in held and "kto" not in held
    assert "- ipo: refusal (harmful), 1/2 better, 1/2 worse: +0.200 / -0.200 (mean +0.000)" in flipped and "kto" not in flipped


def test_bench_seeds_renders_from_reported_records(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bench.cli import main

    monkeypatch.setenv("BENCH_LEADERBOARDS", str(tmp_path))
    for name, val in (("smoke", 0.4), ("smoke-s1", 0.5)):
        d = tmp_path / name / "records" / "eval"
        d.mkdir(parents=True)
        rec = _eval("dpo", val, 0.1) | {"schema_version": 1, "profile": name, "config_hash": "0" * 16}
        (d / "dpo.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(main, ["seeds", "--profile", "smoke", "--seeds", "0,1"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "smoke-seeds.md").read_text()
    assert "| dpo | 0.450 ± 0.071 [0.400 - 0.500] | 0.400 / 0.500 |" in text
    r = CliRunner().invoke(main, ["seeds", "--profile", "smoke", "--seeds", "0 2"])
    assert r.exit_code != 0 and "smoke-s2" in r.output  # a seed that was never published: named


def _make_n(*args) -> str:
    r = subprocess.run(["make", "-n", "-B", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "BENCH_PYTHON": "python", "HOME": str(Path.home())})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_seed_runs_under_its_own_profile_name():
    plain = _make_n("sft", "PROFILE=smoke")
    assert "bench sft --profile smoke" in plain and "profile.seed" not in plain
    seeded = _make_n("sft", "PROFILE=smoke", "SEED=2")
    assert "bench sft --profile smoke profile.name=smoke-s2 profile.seed=2" in seeded
    assert "publish --profile smoke profile.name=smoke-s2 profile.seed=2" in _make_n("leaderboard", "PROFILE=smoke", "SEED=2")


def test_contrasts_across_seeds_test_each_pair_in_every_seed(tmp_path):
    """A one-factor pair is tested on each seed's own samples; bold only where every seed agrees; a pair
    that some seed lacks (or has with other settings) is not shown."""
    from tests.test_contrasts import RECORDS, _samples

    assets = {s: tmp_path / f"s{s}" for s in (0, 1)}
    # seed 0: ppo-kl 0.50 vs ppo-nokl 0.05 (18 discordant, higher); ppo-lag 0.475 (1 discordant, n.s.)
    _samples(assets[0], "ppo-kl", [True] * 20 + [False] * 20)
    _samples(assets[0], "ppo-nokl", [True] * 2 + [False] * 38)
    _samples(assets[0], "ppo-lag", [True] * 19 + [False] * 21)
    # seed 1: ppo-kl 0.50 vs ppo-nokl 0.10 (16 discordant, higher); ppo-lag missing from seed 1
    _samples(assets[1], "ppo-kl", [True] * 20 + [False] * 20)
    _samples(assets[1], "ppo-nokl", [True] * 4 + [False] * 36)
    per_seed = {0: RECORDS, 1: RECORDS}
    from bench.report.seeds import contrasts_across_seeds

    found = {(a, b): e for a, b, _, e in contrasts_across_seeds(per_seed, assets)}
    assert set(found) == {("ppo-kl", "ppo-nokl")}
    harmful = found[("ppo-kl", "ppo-nokl")]["refusal_harmful"]
    assert [e["delta"] for e in harmful] == [0.45, 0.4] and [e["verdict"] for e in harmful] == ["higher", "higher"]
    text = render("default", [0, 1], {0: "default", 1: "default-s1"}, per_seed, assets=assets)
    row = next(line for line in text.splitlines() if line.startswith("| `ppo-kl` vs `ppo-nokl`"))
    assert "+0.450 higher / +0.400 higher: **higher in every seed**" in row
    assert "## One-factor contrasts across seeds" not in render("default", [0, 1], {0: "a", 1: "b"}, per_seed)
    # seed 1 without a difference: 1/2 higher, no bold
    _samples(assets[1], "ppo-nokl", [True] * 20 + [False] * 20)
    text = render("default", [0, 1], {0: "default", 1: "default-s1"}, per_seed, assets=assets)
    assert "+0.450 higher / +0.000: 1/2 higher |" in text


def test_seeds_on_different_bf16_kernels_are_named():
    def rec(v, flags):
        return {"variant": v, "stage": "eval", "metrics": {}, "extra": {},
                "provenance": {"precision": "bf16", "hardware": {"cpu_native_bf16": flags}}}
    same = {0: {"eval/a.json": rec("a", ["avx512_bf16"])}, 1: {"eval/a.json": rec("a", ["avx512_bf16"])}}
    text = render("p", [0, 1], {0: "p", 1: "p-s1"}, same)
    assert "Compute: seed 0: bf16 on avx512_bf16; seed 1: bf16 on avx512_bf16." in text
    assert "did not all run on the same" not in text
    mixed = {**same, 2: {"eval/a.json": rec("a", ["avx512_bf16", "amx_bf16"]), "sft.json": {"variant": "sft"}}}
    text = render("p", [0, 1, 2], {0: "p", 1: "p-s1", 2: "p-s2"}, mixed)
    assert "seed 2: bf16 on avx512_bf16+amx_bf16." in text and "did not all run on the same bf16 kernels" in text
