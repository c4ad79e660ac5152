"""Profiles load strictly: unknown keys, wrong types and unknown profiles are one-line errors."""

from __future__ import annotations

import pytest
import yaml

from bench.config import REPO_ROOT, ConfigError, known_profiles, load_config
from bench.typed_yaml import apply_overrides, coerce


@pytest.mark.parametrize("name", known_profiles())
def test_every_shipped_profile_loads(name):
    cfg = load_config(name)
    assert cfg.profile.name == name
    assert len(cfg.config_hash) == 16


def test_default_and_smoke_exist():
    assert {"default", "smoke"} <= set(known_profiles())


def write(tmp_path, data) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


BASE = {"profile": {"name": "t"}, "model": {"source": "micro-llama"}}


def test_unknown_key_names_key_file_and_known_keys(tmp_path):
    path = write(tmp_path, {**BASE, "model": {"source": "micro-llama", "dtpye": "float16"}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "model.dtpye" in msg and "p.yaml" in msg and "dtype" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'ppoo'"):
        load_config(write(tmp_path, {**BASE, "ppoo": {}}))


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {**BASE, "profile": {"name": "t", "seed": "zero"}}))
    assert "profile.seed" in str(e.value) and "expects int" in str(e.value)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="profile.seed"):
        load_config(write(tmp_path, {**BASE, "profile": {"name": "t", "seed": True}}))


def test_literal_checked(tmp_path):
    with pytest.raises(ConfigError, match="one of 'float32'"):
        load_config(write(tmp_path, {**BASE, "model": {"source": "micro-llama", "dtype": "fp8"}}))


def test_missing_required(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'model.source'"):
        load_config(write(tmp_path, {"profile": {"name": "t"}, "model": {}}))


def test_hub_needs_pinned_revision(tmp_path):
    with pytest.raises(ConfigError, match="pinned revision"):
        load_config(write(tmp_path, {**BASE, "model": {"source": "hub", "hub_id": "x/y"}}))


def test_unknown_profile_lists_known():
    with pytest.raises(ConfigError) as e:
        load_config("no-such-profile")
    assert "default" in str(e.value) and "smoke" in str(e.value)


def test_overrides_typed_and_hashed():
    a = load_config("smoke")
    b = load_config("smoke", ["profile.seed=3", "model.dtype=float16"])
    assert b.profile.seed == 3 and b.model.dtype == "float16"
    assert a.config_hash != b.config_hash
    # Sections a stage does not read do not change its hash.
    assert a.section_hash("data") == b.section_hash("data")
    with pytest.raises(ConfigError, match="profile.seed"):
        load_config("smoke", ["profile.seed=abc"])
    with pytest.raises(ConfigError, match="unknown key 'model.nope'"):
        load_config("smoke", ["model.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("smoke", ["nonsense"])


def test_overrides_do_not_mutate_input():
    raw = {"a": {"b": 1}}
    out = apply_overrides(raw, ["a.b=2", "a.c.d=x"])
    assert raw == {"a": {"b": 1}} and out == {"a": {"b": 2, "c": {"d": "x"}}}


def test_hash_is_stable_across_loads():
    assert load_config("default").config_hash == load_config("default").config_hash


def test_float_accepts_yaml_exponent_strings(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string; floats accept numeric strings, ints do not.
    assert coerce("1e-4", float, "k", "w") == 1e-4
    with pytest.raises(ConfigError):
        coerce("1e-4", int, "k", "w")


def test_configs_dir_is_in_repo():
    assert (REPO_ROOT / "configs" / "default.yaml").exists()


def test_optional_stage_section_keeps_precise_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'reward.lr'"):
        load_config(write(tmp_path, {**BASE, "reward": {"lr": 1.0}}))
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        load_config(write(tmp_path, {**BASE, "reward": {"learning_rate": 0}}))
    cfg = load_config(write(tmp_path, {**BASE, "reward": {"top_layers": 2, "lora": {"r": 4}}}))
    assert cfg.reward.top_layers == 2 and cfg.reward.lora.r == 4 and cfg.cost is None
    with pytest.raises(ConfigError, match="has no 'cost' section"):
        cfg.require("cost")


def test_chat_template_files_of_profiles_exist_and_render():
    from jinja2 import Template

    for name in known_profiles():
        cfg = load_config(name)
        if cfg.model.chat_template:
            text = (REPO_ROOT / cfg.model.chat_template).read_text()
            out = Template(text).render(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Yo"}],
                                        bos_token="<s>", eos_token="</s>")
            assert "[INST]" in out and "S" in out and "Yo </s>" in out


@pytest.mark.parametrize("override", ["steer.gate_quantile=1.0", "steer.gate_quantile=-0.1", "steer.gate_fit_n=0"])
def test_gate_settings_out_of_range_are_config_errors(override):
    with pytest.raises(ConfigError, match="gate_quantile must be in"):
        load_config("default", [override])


@pytest.mark.parametrize("override,key", [("eval.n_harmful=-5", "eval.n_harmful"), ("eval.n_pairs=-1", "eval.n_pairs"),
                                          ("eval.lm_eval_limit=-2", "eval.lm_eval_limit"),
                                          ("eval.batch_size=0", "eval.batch_size")])
def test_negative_eval_caps_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("smoke", [override])


def test_non_integer_eval_cap_is_a_type_error():
    with pytest.raises(ConfigError, match="eval.n_harmful' expects int"):
        load_config("smoke", ["eval.n_harmful=2.5"])


def test_options_added_later_leave_the_hash_alone_at_their_neutral_value():
    """Adding an option must not re-run every stage of existing runs: at its neutral value (the
    behaviour from before it existed) it is left out of the section hash; any other value is hashed."""
    import dataclasses

    from bench import config as C

    cfg = C.load_config("default")
    for (section, key), neutral in C.HASH_NEUTRAL.items():
        sec = getattr(cfg, section)
        field = next(f for f in dataclasses.fields(sec) if f.name == key)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        assert default == neutral, (section, key)  # a profile that does not name it hashes as before
    base = C.load_config("default", ["sft.holdout_prompts=0"]).section_hash("sft")
    assert base == cfg.section_hash("sft")
    assert C.load_config("default", ["sft.holdout_prompts=5"]).section_hash("sft") != base
    assert C.load_config("default", ["dpo.on_policy_chosen=[refuse]"]).section_hash("dpo") != cfg.section_hash("dpo")
    data = C.to_dict(cfg)["sft"]
    assert "holdout_prompts" in data  # the dumped config.yaml still shows every option
