"""Supervised fine-tuning on demonstrations with TRL's SFTTrainer: `make sft`.

    make sft     # == bench sft --profile default

Demonstrations are the chosen responses of the training preference pairs (``sft.pairs`` policy;
with ``only_safe`` a response labelled unsafe is never imitated): on the embedded default that is a
refusal with a reason for harmful requests and a helpful answer for benign ones, so SFT teaches
harm-conditioned refusal directly rather than through a contrast (issue 14). With ``sft.balance``
the demonstrations are interleaved by prompt label before ``max_examples`` cuts them, so a capped
run sees as many helpful answers as refusals (a refusal-heavy mix teaches refusing benign requests). Data are
prompt/completion pairs (prompt formatted by ``bench.chat``), so the loss covers the response only.
The result is the ``sft`` variant: scored by the battery, and a starting policy for reward, DPO and
PPO stages when their ``policy_init`` is ``sft``. A profile without an ``sft`` section skips it.
With ``sft.holdout_prompts`` the first N train prompts (interleaved by label,
``bench.data.pairs.held_out``) are never demonstrated: the on-policy DPO stage answers them instead.
"""

from __future__ import annotations

from bench import chat
from bench.config import ProfileConfig, SFTSection
from bench.data import load
from bench.data.pairs import dpo_pairs, held_out, interleave_by, overlong_error
from bench.distributed import remove_tree_on_main
from bench.models import policy_init_dir, tuning_summary
from bench.runs import is_done, stage_run
from bench.stats import scalar_metric
from bench.train.hf_trainer import (
    fp16_stats,
    guard_callbacks,
    load_trainable_policy,
    save_final,
    train_resumable,
    trainer_kwargs,
)

SECTIONS = ("profile", "model", "data", "sft")


def demonstrations(cfg: ProfileConfig, section: SFTSection, rows: list[dict], tok, where: str,
                   wheres: list[str] | None = None) -> tuple[list[dict], int]:
    """Prompt/completion demonstrations from the rows' chosen responses. An over-long one is an
    error naming the row's file, line and response field (with ``wheres``, the rows' locations from
    ``LoadedDataset.wheres``; without, ``where`` and the pair) or, with ``data.on_invalid: skip``, a
    counted skip."""
    out, skipped, seen = [], 0, set()
    pairs, _ = held_out(dpo_pairs(rows, section.pairs, wheres=wheres), section.holdout_prompts)
    if section.balance:
        pairs = interleave_by(pairs, "prompt_label")
    for i, p in enumerate(pairs):
        if section.only_safe and p.get("chosen_is_safe") is False:
            continue
        key = (p["prompt"], p["chosen"])
        if key in seen:  # the same demonstration twice would just double its weight
            continue
        seen.add(key)
        prompt = chat.format_prompt(tok, p["prompt"], cfg.model.system_prompt, p.get("history"))
        completion = chat.format_response(tok, p["chosen"])
        n = len(tok(prompt + completion, add_special_tokens=False)["input_ids"])
        if n > section.max_length:
            if cfg.data.on_invalid == "error":
                raise overlong_error(p, "chosen", n, f"sft.max_length={section.max_length}", where, "chosen", i)
            skipped += 1
            continue
        out.append({"prompt": prompt, "completion": completion})
    return out, skipped


def extra_callbacks() -> list:
    """Trainer callbacks added to the SFT run (tests inject an interruption here)."""
    return []


def config_hash(cfg: ProfileConfig) -> str:
    """The hash the SFT record carries."""
    return cfg.section_hash(*SECTIONS)


def run_sft(cfg: ProfileConfig, force: bool = False) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if cfg.sft is None:
        print("sft: the profile has no 'sft' section; skipped")
        return
    section = cfg.sft
    if not force and is_done(cfg, "sft", config_hash(cfg)):
        print("sft: up to date")
        return
    policy_dir = policy_init_dir(cfg, "base")
    train = load(cfg.data.preferences, "train", cfg.data)
    with stage_run(cfg, variant="sft", stage="sft", sections=SECTIONS) as run:
        run.datasets = {"train": train.identity}
        model, tok, n_train, n_total = load_trainable_policy(cfg, section, policy_dir)
        demos, skipped = demonstrations(cfg, section, train.rows, tok, f"{cfg.data.preferences}:train",
                                        wheres=train.wheres)
        if section.max_examples:
            demos = demos[: section.max_examples]
        ckpt_dir = run.dir / "checkpoints"
        args = SFTConfig(**trainer_kwargs(section, ckpt_dir, cfg.profile.seed, "sft"), max_length=section.max_length,
                         packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(demos),
                             processing_class=tok, callbacks=extra_callbacks() + guard_callbacks(section))
        result, resume = train_resumable(trainer, ckpt_dir, "sft", run.config_hash)
        out = save_final(trainer, tok, run.dir / "model")
        history = [h for h in trainer.state.log_history if "loss" in h]
        run.metrics = {"train_loss": scalar_metric(result.training_loss), "trainable_params": scalar_metric(n_train)}
        run.artifacts = {"model_dir": str(out), "policy_init": str(policy_dir)}
        run.extra = {**fp16_stats(trainer), "tuning": tuning_summary(section, n_train, n_total), "demonstrations": len(demos), "skipped_overlong": skipped, "resumed_from": resume,
                     "series": [{k: h[k] for k in ("step", "loss", "mean_token_accuracy") if k in h} for h in history]}
        print(f"sft: {len(demos)} demonstrations, train loss {result.training_loss:.4f}")
    remove_tree_on_main(ckpt_dir)  # rank 0, after every rank is done with it
