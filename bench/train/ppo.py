"""Stage `ppo`: the PPO family (ppo-kl, ppo-nokl, ppo-js, ppo-lag), our own loop.

    make ppo PROFILE=default          # == bench ppo --profile default
    deepspeed --num_gpus 4 -m bench ppo --profile llama2-7b-v100    # GPU profiles (or accelerate launch)

TRL 1.x ships no PPO and no library has PPO-Lagrangian or a Jensen-Shannon regulariser, so the
recipe is ours; every loss and estimator is a pure function of ``bench.losses`` or ``bench.ppo_losses``
(with its equation and a closed-form test). One step of :func:`train_variant`:

 1. rollout: ``rollout_prompts`` prompts, sampled responses with the KV cache (``bench.train.rollout``),
    masked after the first EOS; rows without EOS are *truncated*.
 2. experience (no grad): old log-probs and values from the policy + value head, reference log-probs
    (LoRA: the same network with adapters disabled; full / top_layers: a frozen copy of the initial
    policy), the per-token regulariser of the variant (``kl`` with estimator k1/k2/k3; ``js``, Sun et al.'s
    clamped sampled-token JS with ``kl_coef``; ``js_exact``, the full-vocabulary JS with ``js_coef``;
    ``none``; ``bench.ppo_losses``),
    RM score and CM cost of each response.
 3. rewards: RM scores normalised with running moments, truncated rows given ``truncated_penalty``
    (if set) and, after the opt-in terms below, ``missing_eos_penalty`` subtracted (on by default;
    ``ppo_losses.missing_eos_penalty``), clipped to ``reward_clip``, placed on the last token with the per-token penalty
    (``losses.shape_rewards``); GAE (``losses.gae``), advantages whitened.
    PPO-Lagrangian (Safe RLHF): a second value column and GAE on the cost, the Lagrange multiplier
    lambda = exp(log_lambda) updated by ``losses.lagrange_update`` (before the policy update, as
    safe-rlhf) from the mean *raw* CM cost of the episode window (``cost_window`` newest episodes,
    ``losses.episode_cost_window``; 0: this batch) vs the threshold d, advantages combined as
    (A_r - lambda A_c) / (1 + lambda) (the composition: ``ppo_advantages.ppo_advantages``). The cost
    stream sees the CM cost on the critic's scale: standardised with running moments of the raw cost
    over all ranks, (c - mean) / std, exactly as the RM score is (when ``normalize_rewards``; both
    clipped to ``reward_clip``), so the zero-initialised cost critic can fit it (the raw cost sits near
    -5). d is on the CM's raw scale: a number, or ``cost_threshold: start``, the starting policy's
    expected episode cost measured before step 1 (:func:`measure_start_cost`): PPO may raise the
    reward but not the expected cost above the starting policy's. The penalty enters
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
mini-batch must be exactly 1, as in TRL and OpenRLHF. Every step reseeds torch from (seed, step),
and the samples are keyed by row, so the prompts, samples and mini-batch order of step k are the same whether the run was
interrupted or not; a re-run resumes from the latest checkpoint of the same config hash.

Ranks (torchrun, deepspeed, accelerate launch, srun): N ranks train what one process trains.
``rollout_prompts`` and ``mini_batch_size`` are global; each rank samples, scores and computes the
experience of its contiguous share of the step's rows (``ppo_backends.per_rank_section``), with
sampling noise keyed by (seed, step, global row, position) (``rollout.keyed_sampler``), prompts
padded to the global batch's width, and whitening, reward and cost moments and the cost window over all
ranks (the threshold's prompts are sampled and scored whole on every rank);
the rollout is then gathered and every global mini-batch is split among the ranks, with the loss
normalised by the mini-batch's token count (``ppo_update``). Every rank enters ``stage_run`` and
rank 0 alone writes checkpoints' state, the model and the record.

Precision: the CPU path is plain torch (fp32). When ``ppo.deepspeed`` names a JSON, the same code runs
through a DeepSpeed engine (ZeRO-2, CPU optimiser offload, fp16 with dynamic loss scaling as set in
the JSON); ``auto`` values in the JSON are filled from the profile. DeepSpeed is imported only then.

Beside it in ``bench/train/``: ``prompt_stream``, ``ppo_models``, ``rollout`` (sampling, experience),
``ppo_advantages`` (one pure function), ``ppo_update``, ``ppo_backends`` (torch / DeepSpeed, distributed
helpers), ``ppo_checkpoints`` (resume I/O), ``ppo_metrics``. Tests: ``python -m pytest tests/test_ppo.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.config import PPOSection, PPOVariant, ProfileConfig, variant_section
from bench.distributed import main_process_writes, remove_tree_on_main
from bench.losses import (
    episode_cost_window,
    hinge_cost_penalty,
    label_weighted_mean,
    lagrange_update,
    rule_based_reward,
    standardize_with_moments,
    update_running_moments,
)
from bench.models import tuning_summary
from bench.ppo_losses import missing_eos_penalty
from bench.precision import keep_heads_fp32
from bench.runs import is_done, stage_run
from bench.train.hf_trainer import hashed_sections, judged_hash
from bench.train.ppo_advantages import ppo_advantages
from bench.train.ppo_backends import (
    all_gather,
    dist_info,
    gather_episodes,
    gather_rollout,
    make_backend,
    per_rank_section,
    step_reducer,
)
from bench.train.ppo_checkpoints import (
    TrainState,
    clear_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_policy,
)
from bench.train.ppo_metrics import episode_values, lagrangian_extra, step_metrics, summary_extra, summary_metrics
from bench.train.ppo_models import load_policy, load_reference, load_score_model, setup_trainable
from bench.train.ppo_update import lr_factor, planned_steps, ppo_update, seed_step
from bench.train.prompt_stream import (
    SHOULD_REFUSE,
    balance_by_label,
    fit_prompts,
    labels_of,
    prompt_labels,
    prompt_set_identity,
    rollout_batch,
    training_prompts,
)
from bench.train.rollout import (
    PolicyWithValueHead,
    Samples,
    eos_token_ids,
    experience,
    regulariser_coef,
    row_key,
    sample_responses,
    score_responses,
)

STAGE = "ppo"
# The sampling keys' step of the threshold measurement (cost_threshold: start): row_key(seed, -1, i),
# apart from every training step's keys (steps are >= 0).
THRESHOLD_STEP = -1
SECTIONS = ("profile", "model", "data", "ppo", "reward", "cost", "policy_answers")  # the score models it uses: their sections and data
CHECKPOINTS = "checkpoints"


# =============================================================================== entry point


def run_ppo(cfg: ProfileConfig, force: bool = False, only: tuple[str, ...] = ()) -> None:
    """Train every variant of ``cfg.ppo.variants`` (or those in ``only``); a variant whose record has
    the same config hash is skipped."""
    section: PPOSection = cfg.require("ppo")
    prompts = identity = None
    for name in cfg.selected_variants("ppo", only):
        variant = section.variants[name]
        if not force and is_done(cfg, name, config_hash(cfg, name)):
            print(f"ppo: {name} up to date")
            continue
        if prompts is None:
            prompts, identity = training_prompts(cfg)
        train_variant(cfg, name, variant, prompts, identity, force=force)


def variant_config(cfg: ProfileConfig, name: str) -> ProfileConfig:
    """The profile with only this variant in ``ppo.variants`` (its record's config hash)."""
    return cfg.only_variant("ppo", name)


def config_hash(cfg: ProfileConfig, name: str) -> str:
    """The hash a variant's record and checkpoints carry."""
    return judged_hash(variant_config(cfg, name).section_hash(*hashed_sections(SECTIONS, cfg.require("ppo").policy_init)))


# =============================================================================== one variant


def train_variant(cfg: ProfileConfig, name: str, variant: PPOVariant, prompts: list[str],
                  prompts_identity: dict | None = None, force: bool = False,
                  on_step: Callable[[int, TrainState], None] | None = None) -> Path:
    """Train one PPO variant from ``prompts`` and write its run directory; returns the model folder.

    ``on_step(step, state)`` is called after each finished step (and its checkpoint, if any).
    """
    setup = set_up(cfg, name, variant, prompts)
    with stage_run(variant_config(cfg, name), variant=name, stage=STAGE,
                   config_hash=setup.config_hash) as run:  # every rank
        state = start_or_resume(setup, run, force)
        tracker = start_tracker(setup, run, state)
        for step in range(state.step, setup.total_steps):
            train_step(setup, state, step, run)
            if state.step % setup.section.save_steps == 0 or state.step == setup.total_steps:
                keep = max(1, setup.section.keep_checkpoints)
                save_checkpoint(run.dir / CHECKPOINTS, state, setup.backend, keep=keep)
            if tracker is not None:
                tracker.after_step(state.step, setup.backend.module.policy, setup.tok)
            if on_step is not None:
                on_step(state.step, state)
        model_dir = save_and_record(setup, state, run, prompts_identity)
        if tracker is not None:
            tracker.finish(run)
    if setup.section.keep_checkpoints == 0:
        remove_tree_on_main(run.dir / CHECKPOINTS)  # rank 0, after every rank is done with them
    return model_dir


@dataclass
class Setup:
    """What :func:`set_up` builds once per variant; every step reads it and none changes it."""

    cfg: ProfileConfig
    name: str
    variant: PPOVariant
    section: PPOSection  # this rank's share of the batches (ppo_backends.per_rank_section); the profile's at world 1
    rank: int
    world: int
    backend: object  # ppo_backends.TorchBackend | DeepSpeedBackend: the policy + value head and its optimiser
    tok: object
    ref_model: nn.Module | None  # None under LoRA: the reference is the policy with adapters disabled
    reward_model: tuple  # (model, tokenizer or None)
    cost_model: tuple  # (None, None) when the variant does not need it and there is none
    eos_ids: list[int]
    prompts: list[str]  # fitted (and label-balanced) training prompts
    n_too_long: int
    labels: dict[str, str]  # prompt -> prompt_label (rule_reward / balance_prompts), else empty
    total_steps: int
    coef: float  # the regulariser's coefficient
    config_hash: str

    @property
    def seed(self) -> int:
        return self.cfg.profile.seed


def set_up(cfg: ProfileConfig, name: str, variant: PPOVariant, prompts: list[str]) -> Setup:
    """Models, backend and prompts. The order is the order the seeded RNG is consumed in (LoRA and
    value-head initialisation), so it is part of the run's result."""
    rank, world = dist_info(cfg.require("ppo"))
    # the variant's own trainable / learning rate where it sets them; global batches, shared by the ranks
    section = per_rank_section(variant_section(cfg.require("ppo"), variant), world, variant.group_size)
    torch.manual_seed(cfg.profile.seed)
    policy, tok = load_policy(cfg, section)
    policy = setup_trainable(policy, section)
    n_values = 2 if variant.lagrangian else 1
    module = PolicyWithValueHead(policy, policy.get_output_embeddings().in_features, n_values)
    if cfg.model.precision == "bf16":
        keep_heads_fp32(module)  # the value head in fp32 (the policy's own head and forward: bench.models loader)
    backend = make_backend(module, section, world)
    device = backend.device
    ref_model = None if section.trainable == "lora" else load_reference(cfg, section, device)
    rm = load_score_model(cfg, "reward", required=True, device=device)
    cm = load_score_model(cfg, "cost", required=variant.lagrangian or variant.cost_penalty > 0, device=device)
    eos_ids = eos_token_ids(backend.module.policy, tok)
    prompts, n_too_long = fit_prompts(prompts, tok, cfg.model.system_prompt, section)
    labels = labels_of(cfg, name, prompts) if variant.rule_reward > 0 or variant.balance_prompts else {}
    if variant.balance_prompts:
        prompts = balance_by_label(prompts, labels)
    return Setup(cfg, name, variant, section, rank, world, backend, tok, ref_model, rm, cm, eos_ids, prompts,
                 n_too_long, labels, planned_steps(section, len(prompts), world, variant.group_size),
                 regulariser_coef(variant, section), config_hash(cfg, name))


def start_or_resume(setup: Setup, run, force: bool) -> TrainState:
    """A fresh state, or the latest checkpoint of this config hash (never with ``force``);
    checkpoints of another config are deleted first."""
    ckpt_root = run.dir / CHECKPOINTS
    with main_process_writes() as main:  # rank 0 cleans the folder; the others wait, then all resume alike
        if main:
            for stale in clear_checkpoints(ckpt_root, setup.config_hash, force):
                run.log.info("removed checkpoint %s of another config", stale)
    state = TrainState(log_lambda=math.log(setup.section.lambda_init), config_hash=setup.config_hash)
    latest = latest_checkpoint(ckpt_root, setup.config_hash)
    # like the HF-trainer stages: perf reports read it to flag a run whose timings are partial
    run.extra["resumed_from"] = str(latest) if latest is not None else None
    if latest is not None:
        state = load_checkpoint(latest, setup.backend)
        run.log.info("resumed from %s (step %d)", latest, state.step)
        print(f"ppo: {setup.name} resuming from step {state.step} ({latest})")
    v = setup.variant
    if v.lagrangian and state.cost_threshold is None:  # fresh (a resumed run keeps its measured d)
        state.cost_threshold, state.threshold_info = cost_threshold(setup)
        run.log.info("cost threshold d=%.6f (%s: %s)", state.cost_threshold, setup.section.cost_threshold,
                     json.dumps(state.threshold_info))
    run.log.info("variant=%s regulariser=%s coef=%s lagrangian=%s cost_penalty=%s rule_reward=%s group_size=%s "
                 "trainable=%s prompts=%d steps=%d", setup.name, v.regulariser, setup.coef, v.lagrangian,
                 v.cost_penalty, v.rule_reward, v.group_size, setup.section.trainable, len(setup.prompts),
                 setup.total_steps)
    return state


def start_tracker(setup: Setup, run, state: TrainState):
    """With ``keep_checkpoints``: intermediate checkpoints + validation series (bench.train.tracking)."""
    if not setup.section.keep_checkpoints:
        return None
    from bench.models import policy_init_dir
    from bench.train.tracking import Tracker

    tracker = Tracker(setup.cfg, setup.section.keep_checkpoints, run.dir, run.dir / "model", setup.config_hash,
                      init_dir=policy_init_dir(setup.cfg, setup.section.policy_init), log=run.log,
                      main_process=setup.rank == 0)
    tracker.start(state.step, setup.total_steps, setup.backend.module.policy, setup.tok)
    return tracker


def train_step(setup: Setup, state: TrainState, step: int, run) -> None:
    """One PPO step (module docstring, 1-5); ``state`` then holds step ``step + 1``.

    Ranks: every rank forms the step's global prompt batch and samples, scores and computes the
    experience of its own contiguous share of rows (``own_rows``); the rollout is then gathered so
    the update's mini-batches are the ones one process forms (``ppo_update``)."""
    section, variant, backend = setup.section, setup.variant, setup.backend
    t0 = time.perf_counter()
    seed_step(setup.seed, step)
    backend.set_lr_factor(lr_factor(section, step, setup.total_steps))
    everyone = rollout_batch(setup.prompts, section.rollout_prompts * setup.world, variant.group_size, step,
                             setup.seed)  # the step's global batch, in prompt-stream order
    rows = own_rows(len(everyone), setup.rank, setup.world)
    batch = everyone[rows]

    # 1. rollout
    backend.module.eval()
    keys = [row_key(setup.seed, step, i) for i in range(len(everyone))]
    samples = sample_responses(backend.module.policy, setup.tok, everyone, setup.cfg.model.system_prompt,
                               section.max_new_tokens, section.temperature, section.batch_size, setup.eos_ids,
                               keys, rows)
    # 2. experience
    exp = experience(backend.module, setup.ref_model, samples, variant, section)
    reward_raw = score_with(setup, setup.reward_model, batch, samples)  # (B,)
    cost_raw = score_with(setup, setup.cost_model, batch, samples) if setup.cost_model[0] is not None else None  # (B,)
    # 3. rewards and advantages
    score, rule = episode_scores(setup, state, batch, samples, reward_raw, cost_raw)  # (B,)
    cost = cost_score(setup, state, cost_raw) if variant.lagrangian else None  # (B,) on the cost critic's scale
    multiplier, episode_cost = update_lagrange_multiplier(setup, state, cost_raw)  # raw cost vs d
    adv = ppo_advantages(score, exp["penalty"], exp["values"], samples.mask, coef=setup.coef, gamma=section.gamma,
                         gae_lambda=section.lam, reward_clip=section.reward_clip, group_size=variant.group_size,
                         cost=cost, lagrange_multiplier=multiplier, sum_over_ranks=step_reducer())
    # 4. PPO update, on the global batch (every rank's rows)
    episodes = gather_episodes(episode_values(samples, exp, reward_raw, cost_raw))  # every rank's, in prompt order
    whole, tensors = gather_rollout(samples, {**exp, "advantages": adv.advantages, "returns": adv.returns},
                                    everyone, setup.eos_ids, setup.tok)
    backend.module.train()  # dropout is off; train() only matters for gradient checkpointing
    upd = ppo_update(backend, whole, tensors, tensors["advantages"], tensors["returns"], section, setup.seed, step,
                     setup.rank, setup.world)

    # 5. log
    row = step_metrics(step + 1, episodes, tensors, whole, upd, multiplier, variant, time.perf_counter() - t0,
                       episode_cost=episode_cost, cost_threshold=state.cost_threshold)
    if rule is not None:  # share of rollouts whose behaviour fits the prompt's label
        row["rule_agreement"] = ((all_gather(rule.float()) + 1) / 2).mean().item()
    if adv.group_advantages is not None:  # groups whose samples all scored alike give no signal
        flat = (adv.group_advantages.view(-1, variant.group_size) == 0).all(dim=1).float()
        row["flat_groups"] = all_gather(flat).mean().item()
    log_step(setup, state, row, episodes, run)


def own_rows(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of ``n`` rows (``n`` divisible by ``world``:
    ``ppo_backends.per_rank_section`` checks it)."""
    share = n // world
    return slice(rank * share, (rank + 1) * share)


def save_and_record(setup: Setup, state: TrainState, run, prompts_identity: dict | None) -> Path:
    """The trained policy as a plain HF folder, and the record's artifacts, datasets, extra and metrics."""
    model_dir = run.dir / "model"
    module = setup.backend.module
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)  # before merging LoRA
    with main_process_writes() as main:  # every rank holds the whole policy; rank 0 writes, the others wait
        if main:
            save_policy(module.policy, setup.tok, model_dir, setup.section, setup.cfg.model.dtype)
    run.artifacts["model_dir"] = str(model_dir)
    run.datasets["ppo_prompts"] = prompts_identity or prompt_set_identity(setup.prompts)
    run.extra["series"] = state.series
    run.extra["prompts_skipped_too_long"] = setup.n_too_long
    run.extra["variant"] = dataclasses.asdict(setup.variant) | {"coef": setup.coef}
    # trainable_params: policy (LoRA adapters / top blocks / all) + value head
    run.extra["tuning"] = tuning_summary(setup.section, n_trainable, sum(p.numel() for p in module.parameters()))
    run.extra.update(summary_extra(state))  # kl_ref_per_token_end (k3, last batch)
    if setup.variant.lagrangian:  # threshold, how it was set, the steps the constraint bound and lambda rose
        run.extra["lagrangian"] = lagrangian_extra(state, setup.section)
    run.metrics.update(summary_metrics(state, setup.total_steps))
    return model_dir


# =============================================================================== the steps' pieces


def score_with(setup: Setup, score_model: tuple, batch: list[str], samples: Samples) -> torch.Tensor:
    """Scores (B,) of the RM or CM on this batch's responses (the policy's tokenizer if it has none)."""
    model, tok = score_model
    return score_responses(model, tok or setup.tok, batch, samples.texts, setup.cfg.model.system_prompt,
                           setup.section.batch_size)


def episode_scores(setup: Setup, state: TrainState, batch: list[str], samples: Samples, reward_raw: torch.Tensor,
                   cost_raw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each response's PPO score (B,): ``reward_weight`` x the RM score (normalised with the running
    moments, truncation penalised), then the variant's opt-in terms (the CM hinge, the rule reward),
    then ``missing_eos_penalty`` off every response without end of turn; also the rule reward itself
    (or None)."""
    section, variant = setup.section, setup.variant
    if section.normalize_rewards:
        state.reward_moments = update_running_moments(*state.reward_moments, all_gather(reward_raw))
    score = variant.reward_weight * reward_score(reward_raw, samples.truncated, state.reward_moments, section)  # (B,)
    if variant.cost_penalty > 0:  # unsafe answers (CM cost > 0) lose cost_penalty per unit of cost
        score = hinge_cost_penalty(score, cost_raw, variant.cost_penalty)
    rule = None
    if variant.rule_reward > 0:  # +1 when the behaviour fits the prompt's label, else -1
        from bench.eval.refusal import detect_many

        refused = torch.tensor([d.is_refusal for d in detect_many(samples.texts)])
        rule = rule_based_reward(refused, torch.tensor([setup.labels[p] in SHOULD_REFUSE for p in batch]))
        score = score + variant.rule_reward * rule.to(score.device)
    # last, so it holds whatever the score's parts (reward_weight 0 included): unfinished text costs
    score = missing_eos_penalty(score, samples.truncated.to(score.device), section.missing_eos_penalty)
    return score, rule


def cost_score(setup: Setup, state: TrainState, cost_raw: torch.Tensor) -> torch.Tensor:
    """PPO-Lagrangian: the CM costs (B,) on the cost critic's scale, as the RM score is put on the
    reward critic's: with ``normalize_rewards``, the running moments of every raw cost so far (all
    ranks, this batch included) are updated and the costs standardised, (c - mean) / std; else raw."""
    if not setup.section.normalize_rewards:
        return cost_raw
    state.cost_moments = update_running_moments(*state.cost_moments, all_gather(cost_raw))
    return standardize_with_moments(cost_raw, state.cost_moments)


def update_lagrange_multiplier(setup: Setup, state: TrainState,
                               cost_raw: torch.Tensor | None) -> tuple[float, float | None]:
    """PPO-Lagrangian: the step's raw CM costs (all ranks, prompt order) join the episode window, and
    one dual-ascent step of log lambda on the window's mean J_c vs the threshold d; returns
    (lambda, J_c), (0.0, None) for the other variants. As in safe-rlhf, lambda is updated before the
    policy update that uses it; safe-rlhf repeats the update before every micro-batch's step (the same
    J_c each time), here it is once per rollout step (a rate ``lambda_lr`` per step)."""
    if not setup.variant.lagrangian:
        return 0.0, None
    state.cost_window, episode_cost = episode_cost_window(state.cost_window, all_gather(cost_raw).tolist(),
                                                          setup.section.cost_window)
    state.log_lambda = lagrange_update(state.log_lambda, episode_cost, state.cost_threshold,
                                       setup.section.lambda_lr, setup.section.lambda_max)
    return math.exp(state.log_lambda), episode_cost


def cost_threshold(setup: Setup) -> tuple[float, dict | None]:
    """The threshold d of PPO-Lagrangian and, when measured (``start``), how (else None: fixed)."""
    if setup.section.cost_threshold != "start":
        return float(setup.section.cost_threshold), None
    return measure_start_cost(setup)


def threshold_prompt_set(cfg: ProfileConfig, tok, exclude: set[str]) -> tuple[list[str], list[str | None]]:
    """The prompts d is measured on and their ``prompt_label``: the unique prompts of the preference
    data's *validation* split (none of the training stream's), interleaved by label so the cap keeps
    every label represented, those that fit ``max_length`` with the response, the first
    ``threshold_prompts``."""
    from bench import data
    from bench.data.pairs import interleave_by

    section = cfg.require("ppo")
    first: dict[str, dict] = {}
    for row in data.load_role(cfg.data, "preferences", "validation").rows:
        if row["prompt"] not in exclude:
            first.setdefault(row["prompt"], row)
    prompts = [r["prompt"] for r in interleave_by(list(first.values()), "prompt_label")]
    prompts = fit_prompts(prompts, tok, cfg.model.system_prompt, section)[0][: section.threshold_prompts]
    return prompts, [first[p].get("prompt_label") or "unlabelled" for p in prompts]


def measure_start_cost(setup: Setup) -> tuple[float, dict]:
    """``cost_threshold: start``: the starting policy's expected episode cost on the training stream's
    prompts. One response per threshold prompt, sampled exactly as rollouts are (``sample_responses``,
    keys ``row_key(seed, THRESHOLD_STEP, i)``, ``temperature``, ``max_new_tokens``), scored by the CM;
    d = each label's mean cost weighted by that label's share of the training prompts
    (``losses.label_weighted_mean``; the plain mean when the training prompts carry no labels): the
    threshold prompts are drawn evenly across labels, the rollouts are not, and unsafe answers come
    mostly from harmful prompts. The constraint then reads: PPO may raise the reward but not the
    expected cost above the starting policy's. Every rank samples and scores all prompts with the
    profile's (global) ``batch_size``, so d is the same number at any world size. Returns (d,
    {"prompts": n, "by_label": {label: {mean, n, weight}}})."""
    cfg, section = setup.cfg, setup.cfg.require("ppo")
    prompts, labels = threshold_prompt_set(cfg, setup.tok, set(setup.prompts))
    keys = [row_key(setup.seed, THRESHOLD_STEP, i) for i in range(len(prompts))]
    setup.backend.module.eval()
    samples = sample_responses(setup.backend.module.policy, setup.tok, prompts, cfg.model.system_prompt,
                               section.max_new_tokens, section.temperature, section.batch_size, setup.eos_ids, keys)
    model, tok = setup.cost_model
    cost = score_responses(model, tok or setup.tok, prompts, samples.texts, cfg.model.system_prompt,
                           section.batch_size)  # (N,)
    train_labels = setup.labels or prompt_labels(cfg)
    shares = Counter(train_labels[p] for p in setup.prompts if p in train_labels)  # the training stream's mix
    d, by_label = label_weighted_mean(cost.double().tolist(), labels, dict(shares))
    return d, {"prompts": len(prompts), "by_label": by_label}


def log_step(setup: Setup, state: TrainState, row: dict, episodes: dict, run) -> None:
    """Append the step's row to the series, keep the first and last episodes, advance the step."""
    state.series.append(row)
    if state.first_episodes is None:
        state.first_episodes = episodes
    state.last_episodes = episodes
    state.step = row["step"]
    run.log.info("step %s", json.dumps(row))
    if setup.rank == 0 and (state.step % setup.section.logging_steps == 0 or state.step in (1, setup.total_steps)):
        lambda_text = (f" lambda {row['lambda']:.3f} episode cost {row['episode_cost']:.3f} "
                       f"(d {row['cost_threshold']:.3f})" if setup.variant.lagrangian else "")
        print(f"ppo: {setup.name} step {state.step}/{setup.total_steps} reward {row['reward']:.3f} "
              f"kl {row['kl_ref']:.3f}{lambda_text} len {row['response_length']:.1f}")


def reward_score(raw: torch.Tensor, truncated: torch.Tensor, moments: tuple[float, float, int],
                 section: PPOSection) -> torch.Tensor:
    """RM scores -> PPO scores: standardised with the running moments (if ``normalize_rewards``),
    and ``truncated_penalty`` for responses cut without EOS. Clipping happens in shape_rewards."""
    score = standardize_with_moments(raw, moments) if section.normalize_rewards else raw
    if section.truncated_penalty is not None:
        score = torch.where(truncated, torch.full_like(score, section.truncated_penalty), score)
    return score

