"""bench.report.training: the leaderboard's per-variant training table (tuning, parameters, memory, KL)."""

from __future__ import annotations

from bench.config import DPOSection, DPOVariant, LoraSection, PPOSection, variant_section
from bench.models import tuning_summary
from bench.report.training import training_section, tuning_text


def _rec(variant, stage, tuning=None, resources=None, metrics=None, extra=None, wall=10.0):
    return {"variant": variant, "stage": stage, "wall_time_s": wall, "metrics": metrics or {},
            "resources": resources, "extra": {**({"tuning": tuning} if tuning else {}), **(extra or {})}}


def test_variant_section_overrides_only_what_the_variant_sets():
    section = DPOSection(trainable="top_layers", learning_rate=5e-5, lora=LoraSection(r=8))
    assert variant_section(section, DPOVariant()) is section
    lora = variant_section(section, DPOVariant(trainable="lora", learning_rate=5e-4))
    assert (lora.trainable, lora.learning_rate, lora.lora.r, lora.top_layers) == ("lora", 5e-4, 8, section.top_layers)
    assert section.trainable == "top_layers"  # the section itself is untouched


def test_tuning_summary_names_the_settings_of_its_kind():
    lora = tuning_summary(PPOSection(trainable="lora", lora=LoraSection(r=8, alpha=16)), 10, 1000)
    assert lora["lora"] == {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert "top_layers" not in lora
    top = tuning_summary(PPOSection(trainable="top_layers", top_layers=6), 10, 1000)
    assert top["top_layers"] == 6 and "lora" not in top
    assert "lora" not in tuning_summary(PPOSection(trainable="full"), 1000, 1000)


def test_table_shows_tuning_params_memory_and_kl_per_training_record():
    records = {
        "dpo-lora.json": _rec("dpo-lora", "dpo", tuning_summary(DPOSection(trainable="lora", learning_rate=5e-4,
                                                                             lora=LoraSection(r=8, alpha=16)),
                                                                  921_600, 135_436_608),
                              {"peak_rss_mib": 3000.0, "start_rss_mib": 1000.0},
                              extra={"series": [{"step": 5}, {"step": 30}]}),
        "ppo-kl-full.json": _rec("ppo-kl-full", "ppo", tuning_summary(PPOSection(trainable="full"), 200, 200),
                                 {"peak_rss_mib": 5120.0, "start_rss_mib": 900.0},
                                 {"steps": {"value": 8}, "kl_ref_end": {"value": 1.5}, "kl_ref_per_token_end": {"value": 0.05}}),
        "sft.json": _rec("sft", "sft", metrics={"trainable_params": {"value": 21_240_000}}),  # an old record
        "eval/dpo-lora.json": _rec("dpo-lora", "eval"),
        "reward.json": _rec("reward", "reward"),
    }
    lines = training_section(records)
    rows = [line for line in lines if line.startswith("| `")]
    assert [r.split(" | ")[0] for r in rows] == ["| `sft`", "| `dpo-lora`", "| `ppo-kl-full`"]  # eval/score records left out
    sft, dpo, ppo = rows
    assert "LoRA r 8, alpha 16 (q_proj, k_proj, v_proj, o_proj), every block" in dpo
    assert "0.0005" in dpo and "0.92 M (0.68%)" in dpo and "3,000 (+2,000)" in dpo and "| 30 |" in dpo
    assert "| full |" in ppo and "(100.00%)" in ppo and "5,120 (+4,220)" in ppo and "1.500 (0.0500)" in ppo
    assert "21.24 M" in sft and sft.count("–") >= 3  # no tuning, memory or KL recorded: dashes, not zeros
    assert not any("GPU" in line for line in lines)  # no CUDA number in any record: no GPU column
    gpu = dict(records, **{"dpo-lora.json": {**records["dpo-lora.json"], "resources": {
        "peak_rss_mib": 3000.0, "start_rss_mib": 1000.0, "peak_cuda_mib": 2048.0}}})
    assert any("peak GPU MiB" in line for line in training_section(gpu))


def test_no_training_records_no_section():
    assert training_section({"eval/base.json": _rec("base", "eval")}) == []
    assert tuning_text(None) == "–" and tuning_text({"trainable": "top_layers", "top_layers": 6}).startswith("top 6")
    assert tuning_text({"trainable": "top_layers", "top_layers": 6, "learning_rate": 5e-5}, short=True) == "top 6 blocks, lr 5e-05"
    assert tuning_text({"trainable": "full"}, short=True) == "full"  # no learning rate recorded: none shown


def test_stage_times_count_a_stages_shared_work_once_per_config():
    from bench.report.sections import stage_times

    def steer(variant, chash, extraction, wall):
        return {"variant": variant, "stage": "steer", "config_hash": chash, "wall_time_s": wall,
                "metrics": {"extraction_wall_time_s": {"value": extraction}} if extraction else {}}

    records = {"steer-ablate.json": steer("steer-ablate", "h1", 700.0, 1.0),
               "steer-add.json": steer("steer-add", "h1", 700.0, 2.0),  # same extraction, written into both records
               "steer-gated.json": steer("steer-gated", "h1", None, 4.0),
               "sft.json": {"variant": "sft", "stage": "sft", "wall_time_s": 100.0, "metrics": {}}}
    rows = {line.split(" | ")[0].strip("| "): line for line in stage_times(records) if line.startswith("| ")}
    assert rows["steer"] == "| steer | 3 | 700 | 707 |"
    assert rows["sft"] == "| sft | 1 | – | 100 |"
    assert "**807**" in rows["**total**"]
