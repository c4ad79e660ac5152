"""Settings every HF/TRL-trainer recipe shares (reward, cost, sft, dpo): one place, so a fix to
precision or checkpointing applies to all stages at once."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import TrainSection


def trainer_kwargs(section: TrainSection, out: Path, seed: int) -> dict:
    """TrainingArguments keywords from a stage section. On CPU: fp32, no gradient checkpointing
    (TRL defaults to bf16 + checkpointing, about ten times slower on CPU; V100 has no bf16)."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out), per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum, learning_rate=section.learning_rate,
        num_train_epochs=section.epochs, max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=section.weight_decay, logging_steps=section.logging_steps, save_steps=section.save_steps,
        save_total_limit=2, seed=seed, data_seed=seed, report_to=[], use_cpu=not cuda,
        bf16=False, fp16=section.fp16 and cuda, gradient_checkpointing=section.gradient_checkpointing,
        deepspeed=section.deepspeed, dataloader_num_workers=0, eval_strategy="no", disable_tqdm=None,
    )
