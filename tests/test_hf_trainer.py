"""Shared trainer helpers: fp16 loss-scaling stats for the record, trainer settings on CPU."""

from __future__ import annotations

from types import SimpleNamespace

from bench.config import load_config
from bench.train.hf_trainer import fp16_stats, guard_callbacks, trainer_kwargs


def test_fp16_stats_reads_deepspeed_and_amp_state():
    ds = SimpleNamespace(is_deepspeed_enabled=True,
                         model_wrapped=SimpleNamespace(skipped_steps=3, optimizer=SimpleNamespace(cur_scale=1024.0)))
    assert fp16_stats(ds) == {"fp16_skipped_steps": 3, "fp16_loss_scale": 1024.0}
    ds.model_wrapped.fp16_enabled = lambda: False  # DeepSpeed in fp32 (CPU): nothing is scaled
    assert fp16_stats(ds) == {}

    class Scaler:
        def is_enabled(self):
            return True

        def get_scale(self):
            return 256.0

    amp = SimpleNamespace(is_deepspeed_enabled=False, model_wrapped=None, accelerator=SimpleNamespace(scaler=Scaler()))
    assert fp16_stats(amp) == {"fp16_loss_scale": 256.0}
    cpu = SimpleNamespace(is_deepspeed_enabled=False, model_wrapped=None, accelerator=SimpleNamespace(scaler=None))
    assert fp16_stats(cpu) == {}


def test_cpu_trainer_settings(tmp_path):
    section = load_config("smoke").dpo
    kw = trainer_kwargs(section, tmp_path, seed=3)
    assert kw["use_cpu"] and kw["bf16"] is False and kw["fp16"] is False  # no bf16 on CPU or V100
    assert kw["gradient_checkpointing"] is False and kw["logging_nan_inf_filter"] is False
    assert kw["seed"] == kw["data_seed"] == 3
    assert len(guard_callbacks(section)) == 1
    section.fp16 = True  # under fp16 the loss scaler owns overflows
    assert guard_callbacks(section) == []


def test_incomplete_checkpoints_are_skipped_and_removed(tmp_path):
    """A kill while saving leaves a checkpoint without (or with a truncated) trainer_state.json: resume
    takes the newest complete one and removes the broken one."""
    import json

    from bench.train.hf_trainer import last_complete_checkpoint

    def ckpt(step, state=True, truncated=False):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        (d / "optimizer.pt").write_bytes(b"x")
        if state:
            (d / "trainer_state.json").write_text('{"global_st' if truncated else json.dumps({"global_step": step}))
        return d

    ckpt(2)
    ckpt(4, truncated=True)
    six = ckpt(6, state=False)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert not six.exists() and not (tmp_path / "checkpoint-4").exists()
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_hashed_sections_follow_policy_init():
    """A stage that starts from SFT is re-run when the SFT settings change (DPO and PPO alike)."""
    from bench.train.hf_trainer import hashed_sections

    assert hashed_sections(("dpo",), "base") == ("dpo",)
    assert hashed_sections(("ppo", "reward"), "sft") == ("ppo", "reward", "sft")
    cfg = load_config("smoke", ["dpo.policy_init=sft", "ppo.policy_init=sft"])
    other = load_config("smoke", ["dpo.policy_init=sft", "ppo.policy_init=sft", "sft.learning_rate=0.5"])
    for sec in ("dpo", "ppo"):
        s = hashed_sections((sec,), getattr(cfg, sec).policy_init)
        assert cfg.section_hash(*s) != other.section_hash(*s)


def test_checkpoints_of_another_config_are_never_resumed(tmp_path):
    from bench.train.hf_trainer import claim_checkpoints, last_complete_checkpoint

    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (ckpt / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (ckpt / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    claim_checkpoints(ckpt, "aaaa", "t")  # no marker yet: an unknown config, discarded
    assert last_complete_checkpoint(ckpt) is None and (ckpt / "config_hash").read_text().strip() == "aaaa"
    (ckpt / "checkpoint-4").mkdir()
    for name, data in (("trainer_state.json", b'{"global_step": 4}'), ("model.safetensors", b"x"), ("optimizer.pt", b"x")):
        (ckpt / "checkpoint-4" / name).write_bytes(data)
    claim_checkpoints(ckpt, "aaaa", "t")  # same config (an interrupted run): kept for the resume
    assert last_complete_checkpoint(ckpt) == str(ckpt / "checkpoint-4")
    claim_checkpoints(ckpt, "bbbb", "t")  # settings changed since: gone
    assert last_complete_checkpoint(ckpt) is None and (ckpt / "config_hash").read_text().strip() == "bbbb"


def test_process_group_env_only_for_deepspeed(monkeypatch, tmp_path):
    """Without a launcher, trainer_kwargs sets the one-process group's variables only for DeepSpeed
    (which otherwise dies in its MPI discovery); without DeepSpeed the environment is untouched, since
    accelerate would read LOCAL_RANK as a request for a MULTI_CPU group and change the default path."""
    import os

    GROUP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    for k in GROUP + ("SLURM_STEP_ID", "SLURM_STEPID", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.setenv(k, "x")  # recorded as absent first, so the variables set below are undone too
        monkeypatch.delenv(k)
    section = load_config("smoke").sft
    trainer_kwargs(section, tmp_path, seed=0)
    assert not [k for k in GROUP if k in os.environ]
    section.deepspeed = "configs/deepspeed/zero2_offload.json"
    assert trainer_kwargs(section, tmp_path, seed=0)["deepspeed"] == section.deepspeed
    assert {k: os.environ[k] for k in GROUP[:3]} == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def test_save_final_one_process(tmp_path):
    """One process (no group): save_final writes the merged model and tokenizer into place."""
    from bench.train.hf_trainer import save_final

    class Model:
        def save_pretrained(self, d, safe_serialization=True):
            (d / "model.safetensors").write_text("merged" if self.merged else "adapter")

        def merge_and_unload(self):
            self.merged = True
            return self

    model = Model()
    model.merged = False
    tok = SimpleNamespace(save_pretrained=lambda d: (d / "tokenizer.json").write_text("{}"))
    out = save_final(SimpleNamespace(model=model), tok, tmp_path / "model")
    assert (out / "model.safetensors").read_text() == "merged" and (out / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_global_batch_is_shared_by_the_ranks():
    """batch_size x grad_accum is the global batch of an optimizer step at any world size: the ranks
    take accumulation steps first, then split the micro-batch; one rank changes nothing."""
    import pytest

    from bench.config import ConfigError
    from bench.train.hf_trainer import per_rank_batch

    assert per_rank_batch(4, 1, 1) == (4, 1) and per_rank_batch(3, 5, 1) == (3, 5)
    assert per_rank_batch(4, 1, 2) == (2, 1)  # smoke: 4 examples, 2 per rank
    assert per_rank_batch(1, 16, 4) == (1, 4)  # a V100 profile: the micro-batch stays, accumulation shrinks
    assert per_rank_batch(2, 2, 4) == (1, 1)
    for bs, ga, world in ((4, 1, 2), (1, 16, 4), (2, 2, 4), (8, 3, 2)):
        per_device, accum = per_rank_batch(bs, ga, world)
        assert per_device * accum * world == bs * ga
    with pytest.raises(ConfigError, match=r"sft\.batch_size=3 x sft\.grad_accum=1 .* 2 ranks"):
        per_rank_batch(3, 1, 2, "sft")
