"""Settings every HF/TRL-trainer recipe shares (reward, cost, sft, dpo): one place, so a fix to
precision or checkpointing applies to all stages at once."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import TrainSection


def hashed_sections(sections: tuple[str, ...], policy_init: str) -> tuple[str, ...]:
    """Config sections a training stage's record hash covers: its own, plus ``sft`` when it starts
    from the SFT policy (the SFT settings decide its starting weights, so retraining SFT re-runs it)."""
    return sections + (("sft",) if policy_init == "sft" else ())


def judged_hash(section_hash: str) -> str:
    """A stage's config hash that also covers the refusal judge's name and version: for the stages
    whose outputs depend on its verdicts (the on-policy pairs it labels, DPO trained on them, and the
    DPO / PPO records whose tracking series hold refusal rates). A new judge version re-runs them."""
    from bench.eval.refusal import DETECTOR_NAME, DETECTOR_VERSION
    from bench.io import json_sha256

    return json_sha256([section_hash, DETECTOR_NAME, DETECTOR_VERSION], length=16)


def per_rank_batch(batch_size: int, grad_accum: int, world: int, stage: str = "") -> tuple[int, int]:
    """(per-device batch, accumulation steps per rank) that keep the global batch of an optimizer
    step at the configured ``batch_size`` x ``grad_accum`` whatever the number of ranks.

    The rule: the configured batch is the *global* batch. The ranks take accumulation steps first
    (``grad_accum`` / g with g = gcd(grad_accum, world): each rank's micro-batch stays the memory-
    sized ``batch_size``), and the rest of the world splits the micro-batch (``batch_size`` /
    (world / g)). A world of one changes nothing. When neither divides, a ConfigError names both
    keys. With the sampler's one permutation sharded batch by batch across ranks (accelerate), an
    optimizer step then sees the same examples at any world size, and mean losses averaged over the
    ranks (DDP) equal the mean over the whole batch."""
    import math

    from bench.config import ConfigError

    if world <= 1:
        return batch_size, grad_accum
    g = math.gcd(grad_accum, world)
    split = world // g
    if batch_size % split:
        key = f"{stage}." if stage else ""
        raise ConfigError(
            f"{key}batch_size={batch_size} x {key}grad_accum={grad_accum} is the global batch of an optimizer step, "
            f"which {world} ranks cannot share evenly: {world} must divide {key}grad_accum x {key}batch_size with "
            f"{key}grad_accum taken first (here {world // g} ranks would split a micro-batch of {batch_size}); "
            f"make {key}grad_accum or {key}batch_size a multiple of {split}")
    return batch_size // split, grad_accum // g


def trainer_kwargs(section: TrainSection, out: Path, seed: int, stage: str = "") -> dict:
    """TrainingArguments keywords from a stage section. On CPU: fp32, no gradient checkpointing
    (TRL defaults to bf16 + checkpointing, about ten times slower on CPU; V100 has no bf16).

    Called before the trainer is built, so it also sets up the process-group variables
    (:func:`bench.distributed.ensure_process_group_env`): a launcher's ranks join its group (srun's
    tasks get RANK / WORLD_SIZE / LOCAL_RANK from SLURM's variables), and with ``deepspeed`` set a
    stage started without a launcher runs as a world of one instead of dying in DeepSpeed's MPI
    discovery (``No module named 'mpi4py'``). Without DeepSpeed a single process is left untouched:
    accelerate reads LOCAL_RANK as a request for a distributed group (MULTI_CPU over gloo on CPU),
    which would change the default profile's path.

    ``batch_size`` x ``grad_accum`` is the global batch of one optimizer step at any world size
    (:func:`per_rank_batch` says how the ranks share it; ``stage`` names the keys in its error)."""
    from bench.distributed import ensure_process_group_env

    env = ensure_process_group_env(set_single_process=bool(section.deepspeed))
    per_device, accum = per_rank_batch(section.batch_size, section.grad_accum, env.world_size, stage)
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out), per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum, learning_rate=section.learning_rate,
        num_train_epochs=section.epochs, max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=section.weight_decay, logging_steps=section.logging_steps, save_steps=section.save_steps,
        save_total_limit=2, seed=seed, data_seed=seed, report_to=[], use_cpu=not cuda,
        bf16=False, fp16=section.fp16 and cuda, gradient_checkpointing=section.gradient_checkpointing,
        deepspeed=section.deepspeed, dataloader_num_workers=0, eval_strategy="no", disable_tqdm=None,
        # Log a NaN loss as NaN (the default replaces it with the running mean, hiding the failure).
        logging_nan_inf_filter=False,
    )


def load_trainable_policy(cfg, section: TrainSection, policy_dir: Path):
    """The starting causal LM and tokenizer with the section's trainable parameters set.
    Returns (model, tokenizer, n_trainable, n_total)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.models import configure_trainable, torch_dtype, trainable_count

    tok = AutoTokenizer.from_pretrained(policy_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        policy_dir, dtype=torch_dtype(cfg.model.dtype), attn_implementation=cfg.model.attn_implementation,
        use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code)
    from bench.precision import for_precision

    model = configure_trainable(for_precision(model, cfg.model.precision), section)
    return (model, tok, *trainable_count(model))


def checkpoint_complete(folder: Path) -> bool:
    """A trainer checkpoint is usable when its state file parses and weights and optimizer exist;
    the state is written last, so a kill mid-save leaves it missing or truncated."""
    import json

    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = any((folder / n).exists() for n in ("model.safetensors", "adapter_model.safetensors",
                                                  "model.safetensors.index.json"))
    optimizer = (folder / "optimizer.pt").exists() or any(folder.glob("global_step*"))  # torch / DeepSpeed
    return "global_step" in state and weights and optimizer


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """Newest complete ``checkpoint-N`` in ``ckpt_dir``; incomplete ones (a kill while saving) are
    removed so the trainer's rotation never counts them."""
    import shutil

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for p in found:
        if checkpoint_complete(p):
            return str(p)
        shutil.rmtree(p, ignore_errors=True)
    return None


CONFIG_HASH_FILE = "config_hash"


def claim_checkpoints(ckpt_dir: Path, config_hash: str, label: str) -> None:
    """Make ``ckpt_dir`` hold only checkpoints of ``config_hash``: a run interrupted under other
    settings left weights that must never be resumed (they would mix two configs in one record)."""
    import shutil

    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / CONFIG_HASH_FILE
    old = marker.read_text().strip() if marker.exists() else None
    if ckpt_dir.exists() and old != config_hash and any(ckpt_dir.glob("checkpoint-*")):
        print(f"{label}: discarding checkpoints of another config ({old or 'unknown'}, now {config_hash})")
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(config_hash + "\n")


def train_resumable(trainer, ckpt_dir: Path, label: str, config_hash: str):
    """``trainer.train``, resuming from the newest complete checkpoint in ``ckpt_dir`` if an earlier
    run of the same ``config_hash`` was interrupted (checkpoints of another config are discarded).
    Returns (TrainOutput, the checkpoint resumed from or None).

    After a resume, ``training_loss`` (and ``metrics["train_loss"]``, and the summary row of the
    log history) is the mean over every optimiser step, not only those after the resume (which is
    what transformers returns): see :func:`resumed_mean_loss`.

    TRL's fused LM head (SFT, DPO) scores only the labelled positions on the CPU too
    (:mod:`bench.train.fused_head`: the same numbers, fewer rows)."""
    from bench.distributed import is_main_process, main_process_writes
    from bench.train.fused_head import compact_fused_head

    with main_process_writes() as main:  # one rank cleans the checkpoint folder; the others wait
        if main:
            claim_checkpoints(ckpt_dir, config_hash, label)
            last_complete_checkpoint(ckpt_dir)  # removes a checkpoint a kill left half-written
    resume = last_complete_checkpoint(ckpt_dir)  # every rank resumes from the same one (nothing left to remove)
    if resume and is_main_process():
        print(f"{label}: resuming from {resume}")
    with compact_fused_head(trainer.model):
        result = trainer.train(resume_from_checkpoint=resume)
    if resume:
        resume_step = int(Path(resume).name.rsplit("-", 1)[1])
        loss = resumed_mean_loss(trainer.state.log_history, resume_step, result.training_loss,
                                 result.global_step - resume_step)
        if loss is not None:
            result = result._replace(training_loss=loss)
            if isinstance(result.metrics, dict) and "train_loss" in result.metrics:
                result.metrics["train_loss"] = loss
            for row in reversed(trainer.state.log_history):  # the trainer's end-of-training summary row
                if "train_loss" in row:
                    row["train_loss"] = loss
                    break
    return result, resume


def resumed_mean_loss(log_history: list[dict], resume_step: int, post_mean: float, post_steps: int) -> float | None:
    """Mean training loss over all steps of a resumed run. transformers returns the loss summed since
    the resume divided by the steps since the resume (``post_mean`` over ``post_steps``); the steps
    before it are known only through the logged ``loss`` rows the checkpoint carried in its
    ``log_history``, each the mean over the steps since the previous logged row. Weighted by the steps
    each row covers, they give the sum up to the last row logged before the resume.

    Exact when ``logging_steps`` divides ``save_steps`` (every checkpoint, hence every resume point,
    is a logging step). Otherwise the steps between the last logged row and the checkpoint are known
    to no record and are left out of the mean (and a history that went through several such resumes
    weights its rows approximately)."""
    total, covered, prev = 0.0, 0, 0
    for row in sorted((h for h in log_history if "loss" in h and h.get("step", 0) <= resume_step),
                      key=lambda h: h["step"]):
        span = row["step"] - prev
        if span <= 0:
            continue
        total += float(row["loss"]) * span
        covered += span
        prev = row["step"]
    if post_steps > 0:
        total += float(post_mean) * post_steps
        covered += post_steps
    return total / covered if covered else None


def save_final(trainer, tok, out: Path) -> Path:
    """Save the trained model as a plain checkpoint (LoRA merged) that plain transformers loads.

    Every rank calls it; rank 0 alone writes, after a barrier, and the others wait until the folder
    is in place (several ranks renaming into one folder would delete each other's copy). Under
    ZeRO-2 every rank holds the whole model, so rank 0's copy is the model."""
    from bench.distributed import main_process_writes
    from bench.io import atomic_dir

    with main_process_writes() as main:
        if main:
            final = trainer.model
            if hasattr(final, "merge_and_unload"):
                final = final.merge_and_unload()
            with atomic_dir(out) as tmp:  # a kill mid-save never leaves half a model
                final.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
    return out


class NumericsError(RuntimeError):
    """Training produced a non-finite loss or gradient; the stage stopped before the bad step."""


def guard_callbacks(section: TrainSection) -> list:
    """Stop before an optimizer step would write NaN/inf into the weights: the last checkpoint stays
    good and a re-run resumes from it. Under fp16 an overflow is the loss scaler's business (it
    skips the step and lowers the scale), so the guard is off there."""
    if section.fp16:
        return []
    from transformers import TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            for name, p in model.named_parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise NumericsError(
                        f"non-finite gradient in {name} at step {state.global_step + 1}; stopped before the "
                        f"optimizer step. Checkpoints in {args.output_dir} are intact; fix the cause (learning "
                        "rate, data) and re-run to resume")

    return [StopOnNonFinite()]


def fp16_stats(trainer) -> dict:
    """Loss-scaling state of an fp16 run, for the record: DeepSpeed's skipped (overflow) steps and
    current loss scale, or torch AMP's scale. Empty on fp32/CPU runs, where nothing is scaled."""
    engine = getattr(trainer, "model_wrapped", None)
    if getattr(trainer, "is_deepspeed_enabled", False) and engine is not None:
        if not getattr(engine, "fp16_enabled", lambda: True)():  # DeepSpeed without fp16 (CPU, fp32)
            return {}
        opt = getattr(engine, "optimizer", None)
        return {"fp16_skipped_steps": int(getattr(engine, "skipped_steps", 0)),
                "fp16_loss_scale": float(getattr(opt, "cur_scale", getattr(opt, "loss_scale", float("nan"))))}
    scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return {"fp16_loss_scale": float(scaler.get_scale())}
    return {}
