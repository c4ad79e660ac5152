"""What the PPO recipe writes to disk besides its record: step checkpoints and the final policy.

A step checkpoint is ``<run>/checkpoints/step-NNNNNN/`` holding the backend's trainable weights and
optimiser state (``trainable.safetensors`` + ``optimizer.pt``, or DeepSpeed's ``engine/`` shards),
the RNG state (``rng.pt``) and :class:`TrainState` as ``state.json``, written last: a folder with a
readable ``state.json`` is complete. Each checkpoint is written into ``.tmp-step-NNNNNN`` and
renamed, so a kill leaves either the old checkpoint or the new one. ``state.json`` carries the
config hash: a run resumes only from a checkpoint of its own config, and checkpoints of another
config (or half-written ones) are deleted before training starts.

Why here: resume I/O is the part of the recipe a reader of the PPO loop need not follow, and the
kill/resume fault tests (``tests/test_faults.py``) exercise exactly these functions. The recipe
(``bench/train/ppo.py``, ``make ppo PROFILE=...``) calls them; tested in ``tests/test_ppo.py``
(``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.config import PPOSection
from bench.distributed import main_process_writes
from bench.io import atomic_dir, atomic_write_json


@dataclass
class TrainState:
    """Everything besides weights and optimiser that a resumed run needs (JSON in each checkpoint)."""

    step: int = 0
    log_lambda: float = 0.0
    reward_moments: tuple[float, float, int] = (0.0, 0.0, 0)  # (mean, population var, count) of raw RM scores
    # PPO-Lagrangian: the threshold d on the CM's raw scale (fixed, or measured on the starting policy before
    # step 1 and never again: a resumed run keeps it), how it was measured ({"prompts", "by_label"}; None:
    # fixed), the raw episode costs of the lambda update's window (oldest first) and the running moments of
    # the raw CM cost (what the cost stream is standardised with, as reward_moments for the reward stream).
    cost_threshold: float | None = None
    threshold_info: dict | None = None
    cost_window: list[float] = field(default_factory=list)
    cost_moments: tuple[float, float, int] = (0.0, 0.0, 0)
    series: list[dict] = field(default_factory=list)
    first_episodes: dict | None = None  # per-episode values of step 1 and of the last step (for metrics)
    last_episodes: dict | None = None
    config_hash: str = ""


def clear_checkpoints(root: Path, config_hash: str, force: bool) -> list[Path]:
    """Before training: with ``force`` every checkpoint goes; then those of another config hash
    (returned, for the log)."""
    if force:
        shutil.rmtree(root, ignore_errors=True)
    return drop_foreign_checkpoints(root, config_hash)


def latest_checkpoint(root: Path, config_hash: str) -> Path | None:
    """The newest complete checkpoint (state.json is written last) of this config hash."""
    if not root.exists():
        return None
    for d in sorted(root.glob("step-*"), reverse=True):
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("config_hash") == config_hash:
            return d
    return None


def drop_foreign_checkpoints(root: Path, config_hash: str) -> list[Path]:
    """Delete checkpoints written under another config hash (or incomplete): they can never be
    resumed by this config, and step numbers would collide with this run's."""
    dropped: list[Path] = []
    if not root.exists():
        return dropped
    for d in sorted(root.glob("step-*")) + sorted(root.glob(".tmp-step-*")):
        try:
            keep = json.loads((d / "state.json").read_text()).get("config_hash") == config_hash
        except (OSError, json.JSONDecodeError):
            keep = False
        if not keep or d.name.startswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)
            dropped.append(d)
    return dropped


def save_checkpoint(root: Path, state: TrainState, backend, keep: int) -> Path:
    """Write ``root/step-NNNNNN`` atomically (temp folder + rename) and keep the newest ``keep``.

    Every rank calls it. Rank 0 makes the temp folder, every rank then enters ``backend.save``
    (DeepSpeed writes each rank's optimiser shard; the torch backend writes on rank 0 only), and
    after a barrier rank 0 alone writes the RNG and state files and renames the folder while the
    others wait. A rank killed before the rename leaves only ``.tmp-step-*``, which the next run
    deletes; the last complete checkpoint stays."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    with main_process_writes() as main:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    backend.save(tmp)  # every rank (DeepSpeed shards optimiser state)
    with main_process_writes() as main:
        if main:
            _finish_checkpoint(root, tmp, final, state, keep)
    return final


def _finish_checkpoint(root: Path, tmp: Path, final: Path, state: TrainState, keep: int) -> None:
    """Rank 0: RNG and state (written last: a readable state.json marks a complete checkpoint), the rename,
    and the rotation to the newest ``keep``."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_json(tmp / "state.json", dataclasses.asdict(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, backend) -> TrainState:
    backend.load(folder)
    raw = json.loads((folder / "state.json").read_text())
    raw["reward_moments"] = tuple(raw["reward_moments"])
    raw["cost_moments"] = tuple(raw.get("cost_moments", (0.0, 0.0, 0)))  # absent in checkpoints from before it
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])  # each step reseeds anyway; restored for anything between steps
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**raw)


def save_policy(policy: nn.Module, tok, out: Path, section: PPOSection, dtype: str) -> None:
    """A plain HF causal-LM folder (safetensors + tokenizer); LoRA adapters are merged into the base
    first so ``AutoModelForCausalLM.from_pretrained`` loads it without peft. Atomic (temp + rename)."""
    from bench.models import torch_dtype

    if section.trainable == "lora":
        policy = policy.merge_and_unload()
    if section.gradient_checkpointing:
        policy.gradient_checkpointing_disable()
    policy = policy.to(torch_dtype(dtype))
    with atomic_dir(out) as tmp:
        policy.save_pretrained(tmp)
        tok.save_pretrained(tmp)
