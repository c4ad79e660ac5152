"""SFT on the smoke profile: demonstrations never imitate unsafe responses, training changes the
top layer, and a profile without an sft section skips the stage with a marker."""

from __future__ import annotations

import json

import torch

from bench.config import load_config
from bench.records import read_record
from bench.runs import mark_stage_done, run_dir, stage_marker


def test_demonstrations_are_safe_and_deduplicated(smoke_base):
    from transformers import AutoTokenizer

    from bench.data import load
    from bench.train.sft import demonstrations

    cfg = load_config("smoke")
    tok = AutoTokenizer.from_pretrained(smoke_base)
    rows = load(cfg.data.preferences, "train", cfg.data).rows
    unsafe = {r[f"response_{k}"] for r in rows for k in (0, 1) if not r[f"is_response_{k}_safe"]}
    demos, skipped = demonstrations(cfg, cfg.sft, rows, tok, "x")
    assert demos and skipped == 0
    completions = [d["completion"].removesuffix(tok.eos_token) for d in demos]
    assert not set(completions) & unsafe
    assert len({(d["prompt"], d["completion"]) for d in demos}) == len(demos)


def test_held_out_prompts_are_never_demonstrated(smoke_base):
    from transformers import AutoTokenizer

    from bench import chat
    from bench.data import load
    from bench.data.pairs import dpo_pairs, held_out
    from bench.train.sft import demonstrations

    cfg = load_config("smoke", ["sft.holdout_prompts=4"])
    tok = AutoTokenizer.from_pretrained(smoke_base)
    rows = load(cfg.data.preferences, "train", cfg.data).rows
    _, held = held_out(dpo_pairs(rows, cfg.sft.pairs), 4)
    held_prompts = {chat.format_prompt(tok, p["prompt"], cfg.model.system_prompt, p.get("history")) for p in held}
    all_demos, _ = demonstrations(cfg, load_config("smoke").sft, rows, tok, "x")
    demos, _ = demonstrations(cfg, cfg.sft, rows, tok, "x")
    assert len(held_prompts) == 4 and held_prompts <= {d["prompt"] for d in all_demos}
    assert not held_prompts & {d["prompt"] for d in demos}
    assert len(demos) == len([d for d in all_demos if d["prompt"] not in held_prompts])


def test_sft_trains_and_records(smoke_base):
    from transformers import AutoModelForCausalLM

    from bench.train.sft import run_sft

    cfg = load_config("smoke", ["profile.name=smoke-sft"])
    run_sft(cfg, force=True)
    rec = read_record(run_dir("smoke-sft", "sft") / "record.json")
    assert rec["stage"] == "sft" and rec["extra"]["demonstrations"] > 0 and rec["extra"]["series"]
    after = dict(AutoModelForCausalLM.from_pretrained(rec["artifacts"]["model_dir"]).named_parameters())
    before = dict(AutoModelForCausalLM.from_pretrained(smoke_base).named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(".layers.1." in n for n in changed) and not any(".layers.0." in n for n in changed)


def test_profile_without_sft_skips_with_marker(capsys):
    from bench.train.sft import run_sft

    cfg = load_config("smoke", ["profile.name=smoke-nosft"])
    cfg.sft = None
    run_sft(cfg)
    assert "skipped" in capsys.readouterr().out
    marker = json.loads(mark_stage_done(cfg, "sft").read_text())
    assert marker["variants"] == {} and "no 'sft' section" in marker["skipped"]
    assert stage_marker("smoke-nosft", "sft").exists()
