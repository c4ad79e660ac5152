"""DPO family with TRL's DPOTrainer: `make dpo`.

    make dpo                          # == bench dpo --profile default
    make dpo ARGS="dpo.beta=0.05"

Each entry of ``dpo.variants`` is one run and one record, named after the entry (``dpo``, ``ipo``,
``dpo-js``, ...). A variant maps onto TRL's DPOConfig:

- ``dpo``:    loss_type [sigmoid]  (Rafailov et al. 2023, eq. 7)
- ``ipo``:    loss_type [ipo]      (Azar et al. 2023; beta is IPO's regularisation tau)
- ``dpo-js``: loss_type [sigmoid], f_divergence js_divergence  (Wang et al. 2023, f-DPO)
- ``dpo-sft``: loss_type [sigmoid, sft] with loss_weights: DPO plus an NLL term on the chosen
  response (RPO), which keeps the chosen log-probability from falling with the rejected one.

Pairs come from PKU labels through ``bench.data.pairs.dpo_pairs`` under ``dpo.pairs`` (default
``safer_then_better``: the safe response is chosen when exactly one is safe, else the better one).
With ``rejected: on_policy`` (section or variant) the rejected response is the starting policy's own
answer wherever its behaviour is wrong for the prompt (``bench.train.onpolicy``, issue 14).
Prompts are formatted by ``bench.chat`` so training and evaluation see the same text.

Reference log-probabilities are computed once before training (``precompute_ref``: the reference
is frozen, so recomputing it every step would double the forward cost), and once per profile for
variants that train on the same pairs from the same policy (``bench.train.ref_logps``). Under LoRA the reference
is the base with adapters disabled. The saved checkpoint is plain: LoRA is merged before saving.
"""

from __future__ import annotations

from collections import Counter

from bench import chat
from bench.config import DPOSection, DPOVariant, ProfileConfig, variant_section
from bench.data import load
from bench.data.pairs import dpo_pairs, overlong_error
from bench.distributed import remove_tree_on_main
from bench.models import policy_init_dir, tuning_summary
from bench.runs import cache_dir, is_done, stage_run
from bench.stats import scalar_metric
from bench.train.hf_trainer import (
    fp16_stats,
    guard_callbacks,
    hashed_sections,
    judged_hash,
    load_trainable_policy,
    save_final,
    train_resumable,
    trainer_kwargs,
)

SECTIONS = ("profile", "model", "data", "dpo")
REF_CACHE = "dpo-ref-logps"  # runs/<profile>/cache/<this>/: reference log-probs shared by variants
# TRL log keys kept in the record (last logged value and the whole series).
TRAIN_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
              "logps/chosen", "logps/rejected")


def build_pairs(cfg: ProfileConfig, section: DPOSection, pairs: list[dict], tok, where: str) -> tuple[list[dict], int]:
    """Text triples for TRL (prompt already chat-formatted) from chosen/rejected dicts; over-long
    pairs are an error or, with ``data.on_invalid: skip``, a counted skip. The error names the source
    row's file, line and response field where the pair carries them (``where``/``source_fields`` from
    ``dpo_pairs(..., wheres=)``), else ``where`` and the pair (on-policy pairs)."""
    out, skipped = [], 0
    for i, p in enumerate(pairs):
        prompt = chat.format_prompt(tok, p["prompt"], cfg.model.system_prompt, p.get("history"))
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        lengths = {k: len(tok(chat.format_response(tok, p[k]), add_special_tokens=False)["input_ids"])
                   for k in ("chosen", "rejected")}
        n_resp = max(lengths.values())
        if n_prompt + n_resp > section.max_length:
            if cfg.data.on_invalid == "error":
                raise overlong_error(p, max(lengths, key=lengths.get), n_prompt + n_resp,
                                     f"dpo.max_length={section.max_length}", where, "chosen/rejected", i)
            skipped += 1
            continue
        out.append({"prompt": prompt, "chosen": p["chosen"], "rejected": p["rejected"],
                    "rejected_source": p.get("rejected_source", "offline"),
                    "chosen_source": p.get("chosen_source", "offline")})
    return out, skipped


def extra_callbacks() -> list:
    """Trainer callbacks added to every DPO run (tests inject an interruption here)."""
    return []


def dpo_args(section: DPOSection, variant: DPOVariant, out, seed: int):
    from trl import DPOConfig

    return DPOConfig(
        **trainer_kwargs(section, out, seed, "dpo"), beta=variant.beta if variant.beta is not None else section.beta,
        loss_type=list(variant.loss_type), loss_weights=variant.loss_weights,
        f_divergence_type=variant.f_divergence, precompute_ref_log_probs=section.precompute_ref,
        max_length=section.max_length)


def config_hash(cfg: ProfileConfig, name: str) -> str:
    """The hash a variant's record and checkpoints carry: this variant's settings only (adding or removing
    another variant does not re-run it), the shared sections, SFT's when it starts there, and the judge
    (on-policy pairs and the tracking pass use it)."""
    section: DPOSection = variant_section(cfg.require("dpo"), cfg.require("dpo").variants[name])
    return judged_hash(cfg.only_variant("dpo", name).section_hash(*hashed_sections(SECTIONS, section.policy_init)))


def train_variant(cfg: ProfileConfig, name: str, variant: DPOVariant, force: bool = False) -> None:
    from datasets import Dataset
    from trl import DPOTrainer

    section: DPOSection = variant_section(cfg.require("dpo"), variant)  # its own trainable / learning rate, if set
    chash = config_hash(cfg, name)
    cfg = cfg.only_variant("dpo", name)
    if not force and is_done(cfg, name, chash):
        print(f"{name}: up to date")
        return
    policy_dir = policy_init_dir(cfg, section.policy_init)
    train = load(cfg.data.preferences, "train", cfg.data)
    rejected = variant.rejected or section.rejected
    if rejected == "on_policy":
        from bench.train import onpolicy

        onpolicy.ensure_onpolicy_pairs(cfg)
        source, where = onpolicy.read_pairs(cfg), str(onpolicy.pairs_path(cfg))
    else:
        source, where = dpo_pairs(train.rows, section.pairs, wheres=train.wheres), f"{cfg.data.preferences}:train"

    with stage_run(cfg, variant=name, stage="dpo", config_hash=chash) as run:
        run.datasets = {"train": train.identity}
        if rejected == "on_policy":
            run.datasets["on_policy_pairs"] = {"path": where, "config_hash": onpolicy.config_hash(cfg)}
        model, tok, n_train, n_total = load_trainable_policy(cfg, section, policy_dir)
        run.log.info("variant %s: %s; trainable %d of %d", name, variant, n_train, n_total)

        pairs, skipped = build_pairs(cfg, section, source, tok, where)
        if section.max_examples:
            pairs = pairs[: section.max_examples]
        sources = dict(sorted(Counter(p.pop("rejected_source") for p in pairs).items()))  # TRL gets prompt/chosen/rejected only
        chosen_sources = dict(sorted(Counter(p.pop("chosen_source") for p in pairs).items()))
        ckpt_dir = run.dir / "checkpoints"
        callbacks, tracker = extra_callbacks() + guard_callbacks(section), None
        if section.keep_checkpoints:  # intermediate checkpoints + validation series (bench.train.tracking)
            from bench.train.tracking import KeepCheckpoints, Tracker

            tracker = Tracker(cfg, section.keep_checkpoints, run.dir, run.dir / "model", chash,
                              init_dir=policy_dir, log=run.log)
            callbacks.append(KeepCheckpoints(tracker, tok))
        trainer_cls = DPOTrainer
        if section.precompute_ref:  # variants on the same pairs from the same policy share them (bench.train.ref_logps)
            from bench.train.ref_logps import shared_ref_trainer

            trainer_cls = shared_ref_trainer(cache_dir(cfg.profile.name, REF_CACHE), log=run.log)
        trainer = trainer_cls(model=model, args=dpo_args(section, variant, ckpt_dir, cfg.profile.seed),
                              train_dataset=Dataset.from_list(pairs), processing_class=tok,
                              callbacks=callbacks)
        result, resume = train_resumable(trainer, ckpt_dir, name, run.config_hash)
        out = save_final(trainer, tok, run.dir / "model")

        history = [h for h in trainer.state.log_history if "loss" in h]
        run.metrics["train_loss"] = scalar_metric(result.training_loss)
        run.metrics["trainable_params"] = scalar_metric(n_train)
        if history:
            for key in TRAIN_KEYS[1:]:
                if key in history[-1]:
                    run.metrics["train_" + key.replace("/", "_")] = scalar_metric(history[-1][key])
        run.artifacts = {"model_dir": str(out), "policy_init": str(policy_dir)}
        run.extra = {**fp16_stats(trainer), "variant": {"loss_type": variant.loss_type, "loss_weights": variant.loss_weights,
                                 "f_divergence": variant.f_divergence,
                                 "beta": variant.beta if variant.beta is not None else section.beta,
                                 "rejected": rejected},
                     "tuning": tuning_summary(section, n_train, n_total),
                     "pairs_policy": section.pairs, "rejected_sources": sources, "chosen_sources": chosen_sources,
                     "train_pairs": len(pairs), "skipped_overlong": skipped,
                     "resumed_from": resume,
                     "series": [{k: h[k] for k in ("step", *TRAIN_KEYS) if k in h} for h in history]}
        if tracker is not None:
            tracker.finish(run)
        acc = history[-1].get("rewards/accuracies") if history else None
        print(f"{name}: train loss {result.training_loss:.4f}" + (f", last reward accuracy {acc:.2f}" if acc is not None else ""))
    remove_tree_on_main(ckpt_dir)  # rank 0, after every rank is done with it


def run_dpo(cfg: ProfileConfig, force: bool = False, only: tuple[str, ...] = ()) -> None:
    section: DPOSection = cfg.require("dpo")
    for name in cfg.selected_variants("dpo", only):
        train_variant(cfg, name, section.variants[name], force=force)
