"""Stage `ppo`: the PPO family (ppo-kl, ppo-nokl, ppo-js, ppo-lag), our own loop.

    make ppo PROFILE=default          # == bench ppo --profile default
    deepspeed --num_gpus 4 -m bench ppo --profile llama2-7b-v100    # GPU profiles (or accelerate launch)

TRL 1.x ships no PPO and no library has PPO-Lagrangian or a Jensen-Shannon regulariser, so the
recipe is ours; every loss and estimator is a pure function of ``bench.losses`` (with its
equation and a closed-form test). One step of :func:`train_variant`:

 1. rollout: ``rollout_prompts`` prompts, sampled responses with the KV cache (``bench.train.rollout``),
    masked after the first EOS; rows without EOS are *truncated*.
 2. experience (no grad): old log-probs and values from the policy + value head, reference log-probs
    (LoRA: the same network with adapters disabled; full / top_layers: a frozen copy of the initial
    policy), the per-token regulariser of the variant (``kl`` with estimator k1/k2/k3, ``js``, ``none``),
    RM score and CM cost of each response.
 3. rewards: RM scores normalised with running moments, truncated rows given ``truncated_penalty``,
    clipped to ``reward_clip``, placed on the last token with the per-token penalty
    (``losses.shape_rewards``); GAE (``losses.gae``), advantages whitened.
    PPO-Lagrangian (Safe RLHF): a second value column and GAE on the cost (raw CM cost on the last
    token), lambda = exp(log_lambda) updated by ``losses.lagrange_update`` from the mean episode cost vs
    ``cost_threshold``, advantages combined as (A_r - lambda A_c) / (1 + lambda). The penalty enters
    the reward stream with -coef and the cost stream with +coef, so the combined advantage carries
    the penalty at strength coef whatever lambda is (as safe-rlhf does).
    Opt-in scores (variant settings, off by default): ``cost_penalty: c`` makes the score
    RM - c * max(0, CM cost) (``losses.hinge_cost_penalty``: only answers the CM judges unsafe are
    penalised); ``rule_reward: w`` adds +-w by whether the refusal detector's verdict fits the
    prompt's label (``losses.rule_based_reward``; the series records ``rule_agreement``);
    ``group_size: g`` samples each prompt g times and replaces the value-head advantage with the score
    relative to the prompt's group (``losses.group_relative_advantages``, GRPO/RLOO) plus the
    regulariser's penalty-to-go (the series records ``flat_groups``, the share without signal);
    ``reward_weight: 0`` drops the RM from the score (behaviour alone, with ``rule_reward``);
    ``balance_prompts`` draws the rollout prompts equally from every prompt label.
 4. update: ``ppo_epochs`` passes of shuffled mini-batches (``mini_batch_size`` sequences per
    optimiser step, processed in micro-batches of ``batch_size``): clipped policy loss +
    ``vf_coef`` x clipped value loss, gradient clipping, AdamW (policy lr ``learning_rate``, value
    head ``critic_learning_rate``).
 5. log the step's metrics into the series; every ``save_steps`` steps an atomic checkpoint.

Dropout is switched off in the policy (LoRA dropout included): the importance ratio of the first
mini-batch must be exactly 1, as in TRL and OpenRLHF. Every step reseeds torch from (seed, step,
rank), so the prompts, samples and mini-batch order of step k are the same whether the run was
interrupted or not; a re-run resumes from the latest checkpoint of the same config hash.

Precision: the CPU path is plain torch (fp32). When ``ppo.deepspeed`` names a JSON, the same code runs
through a DeepSpeed engine (ZeRO-2, CPU optimiser offload, fp16 with dynamic loss scaling as set in
the JSON); ``auto`` values in the JSON are filled from the profile. DeepSpeed is imported only then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.config import PPOSection, PPOVariant, ProfileConfig
from bench.io import atomic_dir, atomic_write_json
from bench.losses import (
    entropy_from_logits,
    gae,
    group_relative_advantages,
    hinge_cost_penalty,
    js_divergence_per_token,
    kl_penalty,
    lagrange_update,
    lagrangian_advantages,
    masked_mean,
    masked_whiten,
    normalize_scores,
    ppo_policy_loss,
    rule_based_reward,
    sequence_logprobs,
    shape_rewards,
    update_running_moments,
    value_loss,
)
from bench.records import RecordError
from bench.runs import find_record, is_done, stage_run
from bench.stats import mean_metric, rate_metric, scalar_metric
from bench.train.hf_trainer import hashed_sections
from bench.train.rollout import (
    PolicyWithValueHead,
    Samples,
    eos_token_ids,
    reference_logits,
    sample_responses,
    score_responses,
)

STAGE = "ppo"
SECTIONS = ("profile", "model", "data", "ppo", "reward", "cost")
CHECKPOINTS = "checkpoints"


# =============================================================================== entry point


def run_ppo(cfg: ProfileConfig, force: bool = False, only: tuple[str, ...] = ()) -> None:
    """Train every variant of ``cfg.ppo.variants`` (or those in ``only``); a variant whose record has
    the same config hash is skipped."""
    section: PPOSection = cfg.require("ppo")
    prompts = identity = None
    for name in cfg.selected_variants("ppo", only):
        variant = section.variants[name]
        vcfg = variant_config(cfg, name)
        if not force and is_done(cfg, name, vcfg.section_hash(*hashed_sections(SECTIONS, section.policy_init))):
            print(f"ppo: {name} up to date")
            continue
        if prompts is None:
            prompts, identity = training_prompts(cfg)
        train_variant(cfg, name, variant, prompts, identity, force=force)


def variant_config(cfg: ProfileConfig, name: str) -> ProfileConfig:
    """The profile with only this variant in ``ppo.variants`` (its record's config hash)."""
    return cfg.only_variant("ppo", name)


SHOULD_REFUSE = ("harmful", "unsafe-contrast")  # prompt labels whose right behaviour is a refusal


def prompt_labels(cfg: ProfileConfig) -> dict[str, str]:
    """``prompt -> prompt_label`` of the preference train split (the rule-based reward's targets); a
    row without a label is left out, and a prompt given two labels is an error naming both rows."""
    from bench import data
    from bench.data.schema import DataError

    ds = data.load_role(cfg.data, "preferences", "train")
    first: dict[str, tuple[str, str]] = {}  # prompt -> (label, where it was first given)
    for row, where in zip(ds.rows, ds.wheres):
        label = row.get("prompt_label")
        if label is None:
            continue
        known, at = first.setdefault(row["prompt"], (label, where))
        if known != label:
            raise DataError(where, "prompt_label", f"{label!r} contradicts {known!r} given to the same prompt at {at}")
    return {p: label for p, (label, _) in first.items()}


def labels_of(cfg: ProfileConfig, name: str, prompts: list[str]) -> dict[str, str]:
    """``prompt -> prompt_label`` for every training prompt (the rule-based reward's targets and the
    label-balanced stream); a prompt without a label is a DataError naming the field."""
    from bench.data.schema import DataError

    labels = prompt_labels(cfg)
    missing = [p for p in prompts if p not in labels]
    if missing:
        raise DataError(f"{cfg.data.preferences}:train", "prompt_label",
                        f"ppo.variants.{name} (rule_reward / balance_prompts) needs a label for every training "
                        f"prompt; {len(missing)} of {len(prompts)} have none (first: {missing[0][:60]!r})")
    return {p: labels[p] for p in prompts}


def balance_by_label(prompts: list[str], labels: dict[str, str]) -> list[str]:
    """Every label's prompts cycled to the size of the largest label, interleaved label by label (in
    order of first appearance): a uniform draw from the result picks each label equally often."""
    groups: dict[str, list[str]] = {}
    for p in prompts:
        groups.setdefault(labels[p], []).append(p)
    size = max((len(g) for g in groups.values()), default=0)
    return [g[i % len(g)] for i in range(size) for g in groups.values()]


def training_prompts(cfg: ProfileConfig) -> tuple[list[str], dict]:
    """Unique prompts of the train split of the preference data (harmful and benign prompts mixed,
    as the PKU-style pairs have both), and the dataset identity for the record."""
    from bench import data  # the registry; imported here so the recipe imports without it

    ds = data.load_role(cfg.data, "preferences", "train")
    prompts = list(dict.fromkeys(row["prompt"] for row in ds.rows))
    return prompts, ds.identity


# =============================================================================== one variant


@dataclass
class TrainState:
    """Everything besides weights and optimiser that a resumed run needs (JSON in each checkpoint)."""

    step: int = 0
    log_lambda: float = 0.0
    reward_moments: tuple[float, float, int] = (0.0, 0.0, 0)  # (mean, population var, count) of raw RM scores
    series: list[dict] = field(default_factory=list)
    first_episodes: dict | None = None  # per-episode values of step 1 and of the last step (for metrics)
    last_episodes: dict | None = None
    config_hash: str = ""


def train_variant(cfg: ProfileConfig, name: str, variant: PPOVariant, prompts: list[str],
                  prompts_identity: dict | None = None, force: bool = False,
                  on_step: Callable[[int, TrainState], None] | None = None) -> Path:
    """Train one PPO variant from ``prompts`` and write its run directory; returns the model folder.

    ``on_step(step, state)`` is called after each finished step (and its checkpoint, if any).
    """
    section: PPOSection = cfg.require("ppo")
    vcfg = variant_config(cfg, name)
    rank, world = dist_info()
    seed = cfg.profile.seed

    # ------------------------------------------------------------------ setup
    torch.manual_seed(seed)
    policy, tok = load_policy(cfg, section)
    policy = setup_trainable(policy, section)
    n_values = 2 if variant.lagrangian else 1
    module = PolicyWithValueHead(policy, policy.get_output_embeddings().in_features, n_values)
    backend = make_backend(module, section, world)
    device = backend.device
    ref_model = None if section.trainable == "lora" else load_reference(cfg, section, device)
    rm, rm_tok = load_score_model(cfg, "reward", required=True, device=device)
    cm, cm_tok = load_score_model(cfg, "cost", required=variant.lagrangian or variant.cost_penalty > 0, device=device)
    eos_ids = eos_token_ids(backend.module.policy, tok)
    prompts, n_too_long = fit_prompts(prompts, tok, cfg.model.system_prompt, section)
    labels = labels_of(cfg, name, prompts) if variant.rule_reward > 0 or variant.balance_prompts else {}
    if variant.balance_prompts:
        prompts = balance_by_label(prompts, labels)
    if variant.rule_reward > 0:
        from bench.eval.refusal import detect_many
    total_steps = planned_steps(section, len(prompts), world, variant.group_size)
    coef = regulariser_coef(variant, section)

    with stage_run_on_main(vcfg, name, rank) as run:
        ckpt_root = run.dir / CHECKPOINTS
        chash = vcfg.section_hash(*hashed_sections(SECTIONS, section.policy_init))
        if rank == 0:
            if force:
                shutil.rmtree(ckpt_root, ignore_errors=True)
            for stale in drop_foreign_checkpoints(ckpt_root, chash):
                run.log.info("removed checkpoint %s of another config", stale)
        barrier()
        state = TrainState(log_lambda=math.log(section.lambda_init), config_hash=chash)
        latest = latest_checkpoint(ckpt_root, chash)
        # like the HF-trainer stages: perf reports read it to flag a run whose timings are partial
        run.extra["resumed_from"] = str(latest) if latest is not None else None
        if latest is not None:
            state = load_checkpoint(latest, backend)
            run.log.info("resumed from %s (step %d)", latest, state.step)
            print(f"ppo: {name} resuming from step {state.step} ({latest})")
        run.log.info("variant=%s regulariser=%s coef=%s lagrangian=%s cost_penalty=%s rule_reward=%s group_size=%s "
                     "trainable=%s prompts=%d steps=%d", name, variant.regulariser, coef, variant.lagrangian,
                     variant.cost_penalty, variant.rule_reward, variant.group_size, section.trainable, len(prompts),
                     total_steps)
        tracker = None
        if section.keep_checkpoints:  # intermediate checkpoints + validation series (bench.train.tracking)
            from bench.models import policy_init_dir
            from bench.train.tracking import Tracker

            tracker = Tracker(cfg, section.keep_checkpoints, run.dir, run.dir / "model", chash,
                              init_dir=policy_init_dir(cfg, section.policy_init), log=run.log, main_process=rank == 0)
            tracker.start(state.step, total_steps, backend.module.policy, tok)

        # -------------------------------------------------------------- loop
        for step in range(state.step, total_steps):
            t0 = time.perf_counter()
            seed_step(seed, step, rank)
            backend.set_lr_factor(lr_factor(section, step, total_steps))
            g = variant.group_size  # each prompt sampled g times, consecutively (one group)
            batch = [prompts[i] for i in prompt_indices(len(prompts), section.rollout_prompts // g, step, seed, rank, world)
                     for _ in range(g)]

            # 1. rollout
            backend.module.eval()
            samples = sample_responses(backend.module.policy, tok, batch, cfg.model.system_prompt,
                                       section.max_new_tokens, section.temperature, section.batch_size, eos_ids)
            # 2. experience
            exp = experience(backend.module, ref_model, samples, variant, section)
            reward_raw = score_responses(rm, rm_tok or tok, batch, samples.texts, cfg.model.system_prompt,
                                         section.batch_size)  # (B,)
            cost_raw = (score_responses(cm, cm_tok or tok, batch, samples.texts, cfg.model.system_prompt,
                                        section.batch_size) if cm is not None else None)  # (B,)
            # 3. rewards and advantages
            if section.normalize_rewards:
                state.reward_moments = update_running_moments(*state.reward_moments, all_gather(reward_raw))
            score = variant.reward_weight * reward_score(reward_raw, samples.truncated, state.reward_moments, section)  # (B,)
            if variant.cost_penalty > 0:  # unsafe answers (CM cost > 0) lose cost_penalty per unit of cost
                score = hinge_cost_penalty(score, cost_raw, variant.cost_penalty)
            rule = None
            if variant.rule_reward > 0:  # +1 when the behaviour fits the prompt's label, else -1
                refused = torch.tensor([d.is_refusal for d in detect_many(samples.texts)])
                rule = rule_based_reward(refused, torch.tensor([labels[p] in SHOULD_REFUSE for p in batch]))
                score = score + variant.rule_reward * rule.to(score.device)
            rewards = shape_rewards(score, exp["penalty"], samples.mask, coef, clip=section.reward_clip)  # (B, R)
            adv, ret_r = gae(rewards, exp["values"][..., 0], samples.mask, section.gamma, section.lam)
            if g == 1:
                adv = whiten(adv, samples.mask)
            else:  # GRPO-style: the score relative to the prompt's group, plus the penalty-to-go
                group_adv = group_relative_advantages(score, g).to(score.device)  # (B,); 0 for a flat group
                shaped = shape_rewards(group_adv, exp["penalty"], samples.mask, coef, clip=None)
                adv, _ = gae(shaped, torch.zeros_like(shaped), samples.mask, 1.0, 1.0)  # (B, R) reward-to-go
            returns = [ret_r]
            lam = 0.0
            if variant.lagrangian:
                mean_cost = all_gather(cost_raw).mean().item()
                state.log_lambda = lagrange_update(state.log_lambda, mean_cost, section.cost_threshold,
                                                   section.lambda_lr, section.lambda_max)
                lam = math.exp(state.log_lambda)
                costs = shape_rewards(cost_raw, exp["penalty"], samples.mask, -coef, clip=section.reward_clip)
                adv_c, ret_c = gae(costs, exp["values"][..., 1], samples.mask, section.gamma, section.lam)
                adv = lagrangian_advantages(adv, whiten(adv_c, samples.mask), lam)  # (B, R)
                returns.append(ret_c)
            returns = torch.stack(returns, dim=-1)  # (B, R, n_values)

            # 4. PPO update
            backend.module.train()  # dropout is off; train() only matters for gradient checkpointing
            upd = ppo_update(backend, samples, exp, adv, returns, section, seed, step, rank)

            # 5. log, checkpoint
            episodes = episode_values(samples, exp, reward_raw, cost_raw)
            row = step_metrics(step + 1, episodes, exp, samples, upd, lam, variant, time.perf_counter() - t0)
            if rule is not None:  # share of rollouts whose behaviour fits the prompt's label
                row["rule_agreement"] = ((rule + 1) / 2).mean().item()
            if g > 1:  # groups whose samples all scored alike give no signal
                row["flat_groups"] = (group_adv.view(-1, g) == 0).all(dim=1).float().mean().item()
            state.series.append(row)
            if state.first_episodes is None:
                state.first_episodes = episodes
            state.last_episodes = episodes
            state.step = step + 1
            run.log.info("step %s", json.dumps(row))
            if rank == 0 and (state.step % section.logging_steps == 0 or state.step in (1, total_steps)):
                lam_text = f" lambda {row['lambda']:.3f}" if variant.lagrangian else ""
                print(f"ppo: {name} step {state.step}/{total_steps} reward {row['reward']:.3f} "
                      f"kl {row['kl_ref']:.3f}{lam_text} len {row['response_length']:.1f}")
            if state.step % section.save_steps == 0 or state.step == total_steps:
                save_checkpoint(ckpt_root, state, backend, keep=max(1, section.keep_checkpoints))
            if tracker is not None:
                tracker.after_step(state.step, backend.module.policy, tok)
            if on_step is not None:
                on_step(state.step, state)

        # -------------------------------------------------------------- save, record
        model_dir = run.dir / "model"
        n_trainable = sum(p.numel() for p in backend.module.parameters() if p.requires_grad)
        if rank == 0:
            save_policy(backend.module.policy, tok, model_dir, section, cfg.model.dtype)
        barrier()
        run.artifacts["model_dir"] = str(model_dir)
        run.datasets["ppo_prompts"] = prompts_identity or prompt_set_identity(prompts)
        run.extra["series"] = state.series
        run.extra["prompts_skipped_too_long"] = n_too_long
        run.extra["variant"] = dataclasses.asdict(variant) | {"coef": coef}
        run.extra["trainable_params"] = n_trainable  # policy (LoRA adapters / top blocks / all) + value head
        run.metrics.update(summary_metrics(state, total_steps))
        if tracker is not None:
            tracker.finish(run)
    if rank == 0 and section.keep_checkpoints == 0:
        shutil.rmtree(run.dir / CHECKPOINTS, ignore_errors=True)
    return model_dir


# =============================================================================== the PPO pieces


PENALTIES: dict[str, Callable[..., torch.Tensor]] = {
    # (variant, logp, ref_logp, logits, ref_logits, mask) -> (B, R) per-token penalty
    "kl": lambda v, lp, rlp, lg, rlg, m: kl_penalty(lp, rlp, v.kl_estimator),
    "js": lambda v, lp, rlp, lg, rlg, m: js_divergence_per_token(lg, rlg, m),
    "none": lambda v, lp, rlp, lg, rlg, m: torch.zeros_like(lp),
}


def regulariser_coef(variant: PPOVariant, section: PPOSection) -> float:
    if variant.coef is not None:
        return variant.coef
    return {"kl": section.kl_coef, "js": section.js_coef, "none": 0.0}[variant.regulariser]


@torch.no_grad()
def experience(module: PolicyWithValueHead, ref_model: nn.Module | None, s: Samples, variant: PPOVariant,
               section: PPOSection) -> dict[str, torch.Tensor]:
    """Old log-probs, values, reference log-probs, per-token penalty, entropy and k3 KL, each (B, R)
    (values (B, R, n_values)), computed in micro-batches of ``batch_size``."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "ref_logp", "values", "penalty", "entropy", "kl")}
    for sl in micro_slices(len(s.prompts), section.batch_size):
        ids, attn, y, m = s.input_ids[sl], s.attention_mask[sl], s.responses[sl], s.mask[sl]
        logits, values = module(ids, attn, s.prompt_len, section.temperature)  # (b, R, V), (b, R, K)
        ref_logits = reference_logits(module, ref_model, ids, attn, s.prompt_len, section.temperature)
        logp = sequence_logprobs(logits, y, m)  # (b, R)
        ref_logp = sequence_logprobs(ref_logits, y, m)  # (b, R)
        parts["logp"].append(logp)
        parts["ref_logp"].append(ref_logp)
        parts["values"].append(values)
        parts["penalty"].append(PENALTIES[variant.regulariser](variant, logp, ref_logp, logits, ref_logits, m))
        parts["entropy"].append(entropy_from_logits(logits))
        parts["kl"].append(torch.where(m.bool(), kl_penalty(logp, ref_logp, "k3"), 0.0))
    return {k: torch.cat(v) for k, v in parts.items()}


def reward_score(raw: torch.Tensor, truncated: torch.Tensor, moments: tuple[float, float, int],
                 section: PPOSection) -> torch.Tensor:
    """RM scores -> PPO scores: standardised with the running moments (if ``normalize_rewards``),
    and ``truncated_penalty`` for responses cut without EOS. Clipping happens in shape_rewards."""
    score = raw
    if section.normalize_rewards:
        mean, var, n = moments
        std = math.sqrt(var * n / (n - 1)) if n > 1 else 1.0
        score = normalize_scores(raw, mean, std)
    if section.truncated_penalty is not None:
        score = torch.where(truncated, torch.full_like(score, section.truncated_penalty), score)
    return score


def whiten(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whitened advantages; a batch with fewer than two valid tokens has no variance and is left as is."""
    return masked_whiten(adv, mask) if mask.sum() >= 2 else adv


def ppo_update(backend, s: Samples, exp: dict, adv: torch.Tensor, returns: torch.Tensor, section: PPOSection,
               seed: int, step: int, rank: int) -> dict[str, float]:
    """``ppo_epochs`` passes over the rollout in shuffled mini-batches; returns mean loss statistics."""
    g = torch.Generator().manual_seed(step_seed(seed, step, rank) + 1)
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl", "vf_clip_frac")}
    grad_norms: list[float] = []
    n = len(s.prompts)
    for _ in range(section.ppo_epochs):
        perm = torch.randperm(n, generator=g).to(adv.device)
        for mb in perm.split(section.mini_batch_size):
            for idx in mb.split(section.batch_size):
                m = s.mask[idx]  # (b, R)
                logits, values = backend.forward(s.input_ids[idx], s.attention_mask[idx], s.prompt_len,
                                                 section.temperature)  # (b, R, V), (b, R, K)
                logp = sequence_logprobs(logits, s.responses[idx], m)  # (b, R)
                pl, pst = ppo_policy_loss(logp, exp["logp"][idx], adv[idx], m, section.clip_eps)
                vl_total = 0.0
                vf_clip = []
                for k in range(values.shape[-1]):  # reward critic, and cost critic under PPO-Lagrangian
                    vl, vst = value_loss(values[..., k], exp["values"][idx][..., k], returns[idx][..., k], m,
                                         section.value_clip_eps)
                    vl_total = vl_total + vl
                    vf_clip.append(vst["vf_clip_frac"].item())
                backend.backward(pl + section.vf_coef * vl_total)
                norm = backend.step()
                if norm is not None:
                    grad_norms.append(norm)
                stats["policy_loss"].append(pl.item())
                stats["value_loss"].append(float(vl_total.detach()))
                stats["clip_frac"].append(pst["clip_frac"].item())
                stats["approx_kl"].append(pst["approx_kl"].item())
                stats["vf_clip_frac"].append(sum(vf_clip) / len(vf_clip))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    return out


# =============================================================================== metrics


def episode_values(s: Samples, exp: dict, reward_raw: torch.Tensor, cost_raw: torch.Tensor | None) -> dict:
    """Per-episode numbers of one rollout batch (plain lists, JSON-ready)."""
    length = s.mask.sum(1)  # (B,)
    return {
        "reward": reward_raw.tolist(),
        "cost": cost_raw.tolist() if cost_raw is not None else None,
        "kl_ref": (exp["kl"] * s.mask).sum(1).tolist(),  # k3 summed over the response: KL(pi || ref) per sequence
        "response_length": length.tolist(),
        "truncated": s.truncated.int().tolist(),
    }


def step_metrics(step: int, ep: dict, exp: dict, s: Samples, upd: dict, lam: float, variant: PPOVariant,
                 seconds: float) -> dict:
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "step": step,
        "reward": mean(ep["reward"]),
        "cost": mean(ep["cost"]) if ep["cost"] is not None else None,
        "lambda": lam if variant.lagrangian else None,
        "kl_ref": mean(ep["kl_ref"]),
        "penalty": masked_mean(exp["penalty"], s.mask).item(),
        "entropy": masked_mean(exp["entropy"], s.mask).item(),
        "response_length": mean(ep["response_length"]),
        "truncated": mean(ep["truncated"]),
        **upd,
        "seconds": seconds,
    }


def summary_metrics(state: TrainState, total_steps: int) -> dict[str, dict]:
    """Record metrics: the first and last rollout batch's episodes, with 95% intervals."""
    first, last = state.first_episodes, state.last_episodes
    out = {
        "reward_start": mean_metric(first["reward"]),
        "reward_end": mean_metric(last["reward"]),
        "kl_ref_end": mean_metric(last["kl_ref"]),
        "response_length_end": mean_metric(last["response_length"]),
        "truncated_end": rate_metric(sum(last["truncated"]), len(last["truncated"])),
        "entropy_end": scalar_metric(state.series[-1]["entropy"]),
        "steps": scalar_metric(total_steps),
    }
    if last["cost"] is not None:
        out["cost_start"] = mean_metric(first["cost"])
        out["cost_end"] = mean_metric(last["cost"])
    if state.series[-1]["lambda"] is not None:
        out["lambda_end"] = scalar_metric(state.series[-1]["lambda"])
    return out


def prompt_set_identity(prompts: list[str]) -> dict:
    blob = json.dumps(prompts, ensure_ascii=False).encode()
    return {"name": "prompts", "n": len(prompts), "sha256": hashlib.sha256(blob).hexdigest()}


# =============================================================================== setup helpers


def load_policy(cfg: ProfileConfig, section: PPOSection):
    """The initial policy and its tokenizer: the verified base, or the SFT stage's model."""
    from bench.models import load_pretrained, policy_init_dir

    return load_pretrained(policy_init_dir(cfg, section.policy_init), cfg.model)


def load_reference(cfg: ProfileConfig, section: PPOSection, device: torch.device) -> nn.Module:
    """A frozen copy of the initial policy (full / top_layers training), in eval mode."""
    from bench.models import load_pretrained, policy_init_dir

    ref, _ = load_pretrained(policy_init_dir(cfg, section.policy_init), cfg.model)
    if section.deepspeed and section.fp16:
        ref = ref.half()
    return ref.to(device).eval().requires_grad_(False)


def load_score_model(cfg: ProfileConfig, kind: str, required: bool, device: torch.device):
    """The reward or cost model named by its stage's record, or (None, None) when optional and absent."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.models import torch_dtype

    p = cfg.profile.name
    rec = find_record(p, kind)
    path = Path(rec["artifacts"]["model_dir"]) if rec and "model_dir" in rec.get("artifacts", {}) else None
    if path is None or not path.exists():
        if not required:
            return None, None
        why = f"record names {path}, which does not exist" if rec else "no record"
        raise RecordError(f"ppo needs the {kind} model of profile '{p}' ({why}); run `make {kind} PROFILE={p}` first")
    tok = None
    if (path / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    dtype = torch.float16 if (cfg.ppo and cfg.ppo.deepspeed and cfg.ppo.fp16) else torch_dtype(cfg.model.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code)
    return model.to(device).eval().requires_grad_(False), tok


def setup_trainable(policy: nn.Module, section: PPOSection) -> nn.Module:
    """``bench.models.configure_trainable`` (full | lora | top_layers, as every stage), then dropout off
    (LoRA dropout included: the first PPO ratio must be exactly 1) and gradient checkpointing if set."""
    from bench.models import configure_trainable

    policy = configure_trainable(policy, section)
    for m in policy.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    if section.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if hasattr(policy, "enable_input_require_grads"):
            policy.enable_input_require_grads()
    return policy


def fit_prompts(prompts: list[str], tok, system_prompt: str | None, section: PPOSection) -> tuple[list[str], int]:
    """Prompts whose formatted length leaves room for ``max_new_tokens`` within ``max_length`` (never
    truncated: a cut prompt is another prompt); returns them and how many were skipped."""
    from bench import chat

    room = section.max_length - section.max_new_tokens
    kept = [p for p in prompts if len(tok(chat.format_prompt(tok, p, system_prompt), add_special_tokens=False)["input_ids"]) <= room]
    if not kept:
        from bench.config import ConfigError

        raise ConfigError(f"ppo: no prompt fits max_length={section.max_length} with max_new_tokens={section.max_new_tokens}")
    return kept, len(prompts) - len(kept)


def planned_steps(section: PPOSection, n_prompts: int, world: int, group_size: int = 1) -> int:
    if section.max_steps > 0:
        return section.max_steps
    return max(1, math.ceil(section.epochs * n_prompts * group_size / (section.rollout_prompts * world)))


def lr_factor(section: PPOSection, step: int, total_steps: int) -> float:
    """Linear warmup over ``warmup_ratio`` of the steps, then constant."""
    warm = int(section.warmup_ratio * total_steps)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + (step + 1) * 7_919 + rank * 104_729) % (2**63 - 1)


def seed_step(seed: int, step: int, rank: int) -> None:
    torch.manual_seed(step_seed(seed, step, rank))  # also seeds every CUDA device


def prompt_indices(n: int, per_step: int, step: int, seed: int, rank: int, world: int) -> list[int]:
    """Indices of this rank's prompts at ``step``: a stream of per-epoch permutations (seeded by the
    epoch), so each prompt is used once per epoch and the choice depends on the step alone."""
    start = (step * world + rank) * per_step
    out, perms = [], {}
    for k in range(start, start + per_step):
        epoch = k // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch)).tolist()
        out.append(perms[epoch][k % n])
    return out


# =============================================================================== optimiser backends


def param_groups(module: PolicyWithValueHead, section: PPOSection) -> list[dict]:
    head = [p for p in module.value_head.parameters()]
    policy = [p for p in module.policy.parameters() if p.requires_grad]
    return [{"params": policy, "lr": section.learning_rate, "weight_decay": section.weight_decay},
            {"params": head, "lr": section.critic_learning_rate, "weight_decay": 0.0}]


class TorchBackend:
    """Plain torch: AdamW, gradient accumulation over micro-batches, gradient-norm clipping."""

    def __init__(self, module: PolicyWithValueHead, section: PPOSection):
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.module = module.to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(module, section))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.gas = section.mini_batch_size // section.batch_size
        self.max_grad_norm = section.max_grad_norm
        self._micro = 0

    def forward(self, *args, **kw):
        return self.module(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.gas).backward()

    def step(self) -> float | None:
        """Call after every micro-batch; steps at the accumulation boundary and returns the grad norm."""
        self._micro += 1
        if self._micro % self.gas:
            return None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def set_lr_factor(self, factor: float) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.trainable_state(), str(folder / "trainable.safetensors"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(folder / "trainable.safetensors"))
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        expected = set(self.trainable_state())
        if set(state) != expected or unexpected:
            raise RecordError(f"{folder}: checkpoint does not match the trainable parameters; delete "
                              f"{folder.parent} to restart")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True))


class DeepSpeedBackend:
    """The same interface over a DeepSpeed engine (ZeRO-2, CPU optimiser offload, fp16 loss scaling
    as set in the JSON). ``engine.step`` is called after every micro-batch: DeepSpeed itself steps
    at the accumulation boundary, scales the loss by 1/gas, clips and skips overflowing fp16 steps."""

    def __init__(self, module: PolicyWithValueHead, section: PPOSection, world: int):
        import deepspeed  # imported only on this path: it is slow to import

        conf = deepspeed_config(section, world, module.value_head.in_features)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=param_groups(module, section), config=conf)
        self.device = self.engine.device
        self.module = self.engine.module
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def forward(self, *args, **kw):
        return self.engine(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def set_lr_factor(self, factor: float) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", exclude_frozen_parameters=True)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag="engine", load_module_strict=False)


def deepspeed_config(section: PPOSection, world: int, hidden_size: int) -> dict:
    """The profile's DeepSpeed JSON with every ``"auto"`` filled from the PPO section (as the HF
    integration fills them for Trainer); an ``auto`` left unfilled, or ZeRO stage 3, is an error."""
    from bench.config import ConfigError

    conf = json.loads(Path(section.deepspeed).read_text())
    gas = section.mini_batch_size // section.batch_size
    zero = conf.get("zero_optimization", {})
    if int(zero.get("stage", 0)) > 2:
        raise ConfigError(f"ppo.deepspeed={section.deepspeed}: ZeRO stage {zero['stage']} is not supported by the PPO "
                          "recipe (generation and saving need whole parameters); use ZeRO-2 (zero2_offload.json)")

    def fill(node: dict, values: dict) -> None:
        for k, v in values.items():
            if node.get(k, "auto") == "auto":
                node[k] = v

    fill(conf, {"train_micro_batch_size_per_gpu": section.batch_size, "gradient_accumulation_steps": gas,
                "train_batch_size": section.batch_size * gas * world, "gradient_clipping": section.max_grad_norm})
    if "fp16" in conf:
        fill(conf["fp16"], {"enabled": section.fp16})
    if "bf16" in conf:
        fill(conf["bf16"], {"enabled": False})
    conf.setdefault("optimizer", {"type": "AdamW", "params": {}})
    fill(conf["optimizer"].setdefault("params", {}),
         {"lr": section.learning_rate, "weight_decay": section.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8})
    if zero:
        fill(zero, {"reduce_bucket_size": hidden_size * hidden_size})
    conf.pop("scheduler", None)  # the recipe sets the learning rate itself (lr_factor)
    left = _auto_paths(conf)
    if left:
        raise ConfigError(f"ppo.deepspeed={section.deepspeed}: cannot fill 'auto' at {', '.join(left)}")
    return conf


def _auto_paths(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def make_backend(module: PolicyWithValueHead, section: PPOSection, world: int):
    if section.deepspeed:
        return DeepSpeedBackend(module, section, world)
    if world > 1:
        from bench.config import ConfigError

        raise ConfigError("ppo: several processes need ppo.deepspeed (a DeepSpeed JSON); the torch path is one process")
    return TorchBackend(module, section)


# =============================================================================== distributed helpers


def dist_info() -> tuple[int, int]:
    """(rank, world size); a DeepSpeed / accelerate launch sets WORLD_SIZE and RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import deepspeed

        deepspeed.init_distributed()
        return torch.distributed.get_rank(), world
    return 0, 1


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if _dist():
        torch.distributed.barrier()


def collective_device(backend: str) -> torch.device:
    """Where a collective's tensors must live: NCCL moves only CUDA tensors (a CPU tensor fails with "No
    backend type associated with device type cpu", seen on an H200 under DeepSpeed), gloo CPU ones."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``x`` (B,) over ranks (itself in one process), on ``x``'s device. The score
    models' outputs may sit on the CPU while the process group is NCCL, so the values travel through
    the backend's device."""
    if not _dist():
        return x
    y = x.detach().to(collective_device(torch.distributed.get_backend())).contiguous()
    parts = [torch.empty_like(y) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, y)
    return torch.cat(parts).to(x.device)


class _NullRun:
    """What non-main ranks get instead of a StageRun: same attributes, writes nothing."""

    def __init__(self, dir: Path):
        import logging

        self.dir, self.log = dir, logging.getLogger("bench.run.null")
        self.metrics, self.datasets, self.artifacts, self.extra = {}, {}, {}, {}


def stage_run_on_main(cfg: ProfileConfig, name: str, rank: int):
    import contextlib

    from bench.runs import run_dir

    if rank == 0:
        return stage_run(cfg, variant=name, stage=STAGE,
                         sections=hashed_sections(SECTIONS, cfg.require("ppo").policy_init))
    return contextlib.nullcontext(_NullRun(run_dir(cfg.profile.name, name)))


# =============================================================================== checkpoints


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
    """Write ``root/step-NNNNNN`` atomically (temp folder + rename) and keep the newest ``keep``."""
    rank = torch.distributed.get_rank() if _dist() else 0
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    backend.save(tmp)  # every rank (DeepSpeed shards optimiser state)
    barrier()
    if rank == 0:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", dataclasses.asdict(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(folder: Path, backend) -> TrainState:
    backend.load(folder)
    raw = json.loads((folder / "state.json").read_text())
    raw["reward_moments"] = tuple(raw["reward_moments"])
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])  # each step reseeds anyway; restored for anything between steps
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**raw)


# =============================================================================== saving the policy


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
