"""GPU memory plan per stage: will a model shape fit on a 16 GB or 32 GB V100?

A small, pure calculator (no torch import) for the paper-scale profiles: fp16 mixed precision,
DeepSpeed ZeRO (stage 2 by default) with the optimizer offloaded to CPU (``configs/deepspeed/
zero2_offload.json``), data parallel over ``n_gpus``. It is an *estimate* for planning sequence
lengths, micro-batches and LoRA-vs-full, accurate to perhaps +-20%; measure on the card before
trusting a row that is within a gigabyte of the limit.

    python -m bench.memory_plan                      # every named shape, 8 GPUs, seq 512, micro-batch 1
    python -m bench.memory_plan llama2-7b --n-gpus 16 --seq-len 1024
    python -m bench.memory_plan llama2-7b --zero-stage 3
    python -m bench.memory_plan llama2-7b --score-models resident   # PPO without score-model offload

Profiles point at a shape by name (``SHAPES``, :func:`get_shape`).

The formula (bytes per GPU; P = all parameters of a model, T = its trainable parameters,
N = data-parallel GPUs; "GB" means 1e9 bytes everywhere, and a plan fits a card when its total
is at most the card's nominal size, e.g. 16e9 bytes for a "16 GB" V100, whose real 16 GiB leave
~7% for what the estimate misses):

* weights, fp16: ``2 P`` per model (ZeRO stages 0-2 replicate parameters; stage 3 keeps ``2 P / N``
  plus a gathered working set of two layers, ``2 * 2 * max(layer, embedding)``). Frozen models
  (the reference, and the reward and cost models during PPO when they are on the GPU) count the
  same way.
* gradients, fp16: ``2 T`` (stage 0-1) or ``2 T / N`` (stage >= 2: ZeRO-2 partitions gradients).
* optimizer, fp32 master weights + Adam m + v: ``12 T`` (stage 0) or ``12 T / N`` (stage >= 1);
  **0 on the GPU with CPU offload**: those ``12 T / N`` bytes plus the fp32 gradient partition
  (``4 T / N``) live in host RAM instead (the ``cpu`` column, per GPU: multiply by GPUs per node).
* DeepSpeed communication buckets: ``2 * (min(ag, T) + min(rb, T))`` bytes, times 4.5 with
  ``overlap_comm`` (DeepSpeed's own rule of thumb), per trainable engine; ``ag`` and ``rb`` are the
  JSON's ``allgather_bucket_size`` and ``reduce_bucket_size`` (``"auto"`` = hidden**2, as HF fills it).
* activations, per token per decoder layer, fp16 tensors saved for backward with SDPA attention
  (no L x L score matrix is stored; eager attention would add ``2 * heads * L`` bytes):
  attention ``2 (3 h + 2 kv)`` (normed input, Q, K, V, attention output), SwiGLU MLP
  ``2 (h + 4 I)`` (normed input, gate, up, silu(gate), product), two RMSNorms ``2 * 6 h`` (fp16
  input + fp32 upcast) - in all ``a = 20 h + 4 kv + 8 I`` bytes. Without checkpointing a step holds
  ``tokens * layers * a``; with activation checkpointing each layer keeps only its fp16 input and one
  layer is recomputed at a time: ``tokens * (layers * 2 h + a)``. LoRA is counted like full
  fine-tuning (frozen linears still need most saved tensors to backpropagate to lower adapters),
  which slightly overstates it.
* logits: ``10 * tokens * vocab`` bytes when a loss is taken over them (fp16 logits, their fp32
  upcast and fp32 log-softmax), ``6 * tokens * vocab`` for a no-grad forward (reference log-probs);
  score models (one scalar head) have none.
* overhead: 1 GB for the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation.

Stages (``tokens`` = micro_batch * seq_len per sequence), each as the code holds it:

* ``sft``: the policy trained on demonstrations (1 sequence per example), no reference.
* ``reward`` / ``cost``: one score model (the LM head replaced by a scalar head) trained on pairs:
  2 sequences per example.
* ``dpo``: the policy trained on pairs (2 sequences per example) and a reference forward. Full
  fine-tuning holds a second fp16 copy as the reference; LoRA uses the same base with the adapters
  disabled (no extra weights). Peak = max(reference forward, policy step).
* ``ppo`` (``bench.train.ppo``; PPO-Lagrangian and the other variants alike): the policy with its
  value head (``rollout.PolicyWithValueHead``: the critic is a linear head on the policy's last
  hidden state, ``VALUE_COLUMNS`` outputs, trained with it: there is no separate critic model);
  the reference (a frozen copy under full fine-tuning, the same network with the adapters off under
  LoRA); the reward model and the cost model (loaded for PPO-Lagrangian and cost-shaped rewards, and
  as a logged monitor for the other variants whenever the profile has one: ``cost_model``).
  With ``score_models="offload"`` (what ``bench.train.ppo_models`` does on a GPU) the score models
  live in host RAM (the ``cpu`` column) and visit the GPU one at a time for their scoring pass:
  the GPU then holds one score model's weights during that pass only. ``"resident"`` keeps both on
  every GPU (what the code did before issue 24). The peak is the largest phase: ``rollout``
  (generation's KV cache, the experience pass's no-grad forwards with logits), ``policy step``
  (activations + logits with grad) or ``scoring`` (a score model's no-grad forward, plus its
  weights when offloaded); ``StagePlan.peak`` names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Iterable, Sequence

GB = 1e9
BYTES_16 = 2  # fp16 weight / gradient / activation
BYTES_ADAM = 12  # fp32 master copy + Adam first and second moments
BYTES_GRAD_FP32 = 4  # fp32 gradient partition DeepSpeed keeps next to the offloaded optimizer
LOGIT_BYTES_TRAIN = 10  # fp16 logits + fp32 upcast + fp32 log-softmax, per token per vocab entry
LOGIT_BYTES_FORWARD = 6  # fp16 logits + fp32 log-softmax, no backward
OVERLAP_COMM_FACTOR = 4.5  # DeepSpeed: overlap_comm needs ~4.5x the two bucket sizes
OVERHEAD_GB = 1.0  # CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation
# Defaults that mirror configs/deepspeed/*.json (a test checks they agree).
ALLGATHER_BUCKET = 50_000_000
OVERLAP_COMM = True
STAGES = ("sft", "reward", "dpo", "ppo")  # "cost" has exactly the reward model's plan
TUNINGS = ("full", "lora")
SCORE_MODELS = ("offload", "resident")  # where PPO keeps the reward/cost models between scoring passes
ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VALUE_COLUMNS = 2  # PPO's value head: reward and cost values (PPO-Lagrangian; 1 for the other variants)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only Llama-family shape (SwiGLU MLP, RMSNorm, rotary, optional GQA)."""

    name: str
    hub_id: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        attn = h * (h + 2 * kv) + h * h + ((h + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * i + 2 * h  # + gate/up/down + two RMSNorm weights

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters of the causal LM (embeddings, layers, final norm, untied LM head)."""
        head = 0 if self.tied_embeddings else self.embed_params
        return self.embed_params + self.layers * self.layer_params + self.hidden + head

    @property
    def score_params(self) -> int:
        """A score model (reward / cost): the LM head replaced by a 1-output linear (no bias)."""
        head = 0 if self.tied_embeddings else self.embed_params
        return self.params - head + self.hidden

    def lora_params(self, rank: int, targets: Sequence[str] = ALL_LINEARS) -> int:
        """LoRA on the ``targets`` linears of every layer (default: all seven): r (d_in + d_out) each."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        dims = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
                "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}
        unknown = set(targets) - set(dims)
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; known: {', '.join(dims)}")
        return self.layers * rank * sum(dims[t] for t in targets)

    def act_bytes_per_token_layer(self) -> int:
        """``a = 20 h + 4 kv + 8 I``: bytes saved for backward per token per decoder layer (see module doc)."""
        return 20 * self.hidden + 4 * self.kv_dim + 8 * self.intermediate


SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("llama2-7b", "meta-llama/Llama-2-7b-hf", layers=32, hidden=4096, intermediate=11008,
                   heads=32, kv_heads=32, vocab=32000, tied_embeddings=False),
        # The 1B Llama shape (Llama-3.2-1B): used by the performance benchmarks too.
        ModelShape("llama-1b", "meta-llama/Llama-3.2-1B", layers=16, hidden=2048, intermediate=8192,
                   heads=32, kv_heads=8, vocab=128256, tied_embeddings=True),
        # Smaller open (ungated) models.
        ModelShape("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", layers=22, hidden=2048,
                   intermediate=5632, heads=32, kv_heads=4, vocab=32000, tied_embeddings=False),
        ModelShape("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", layers=24, hidden=896, intermediate=4864,
                   heads=14, kv_heads=2, vocab=151936, tied_embeddings=True, qkv_bias=True),
        ModelShape("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", layers=30, hidden=576,
                   intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied_embeddings=True),
    )
}


def get_shape(name: str | ModelShape) -> ModelShape:
    if isinstance(name, ModelShape):
        return name
    try:
        return SHAPES[name]
    except KeyError:
        raise KeyError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}") from None


@dataclass(frozen=True)
class PlanSettings:
    """Everything besides the shape that decides the plan; defaults = the V100 paper-scale set-up."""

    n_gpus: int = 8
    seq_len: int = 512
    micro_batch: int = 1  # examples per GPU per step: pairs for reward/dpo, prompts for ppo
    act_ckpt: bool = False
    tuning: str = "full"  # "full" or "lora"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ALL_LINEARS
    zero_stage: int = 2
    offload_optimizer: bool = True
    allgather_bucket: int = ALLGATHER_BUCKET
    reduce_bucket: int | None = None  # None = "auto" = hidden**2
    overlap_comm: bool = OVERLAP_COMM
    overhead_gb: float = OVERHEAD_GB
    score_models: str = "offload"  # PPO: "offload" (host RAM, on the GPU per scoring pass) or "resident"
    cost_model: bool = True  # PPO loads a cost model (PPO-Lagrangian; a monitor for the others)

    def __post_init__(self):
        if self.tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {TUNINGS}, got {self.tuning!r}")
        if self.score_models not in SCORE_MODELS:
            raise ValueError(f"score_models must be one of {SCORE_MODELS}, got {self.score_models!r}")
        unknown = sorted(set(self.lora_targets) - set(ALL_LINEARS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; known: {', '.join(ALL_LINEARS)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {self.zero_stage}")
        for name in ("n_gpus", "seq_len", "micro_batch", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class StagePlan:
    """Bytes per GPU by component (and host RAM per GPU for the offloaded optimizer)."""

    stage: str
    shape: str
    settings: PlanSettings
    parts: dict[str, float] = field(default_factory=dict)  # bytes on each GPU, at the peak
    cpu_bytes: float = 0.0  # host RAM per GPU (offloaded optimizer + fp32 grads, offloaded score models)
    peak: str = "step"  # the phase that sets the peak (PPO: rollout, policy step or scoring)
    phases: dict[str, float] = field(default_factory=dict)  # activation bytes of each phase

    @property
    def total_bytes(self) -> float:
        return sum(self.parts.values())

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    def gb(self, part: str) -> float:
        return self.parts.get(part, 0.0) / GB

    def fits(self, gpu_gb: float) -> bool:
        return self.total_bytes <= gpu_gb * GB


# --------------------------------------------------------------------------- building blocks


def _weights(params: int, s: PlanSettings, shape: ModelShape) -> float:
    if s.zero_stage == 3:
        working = 2 * BYTES_16 * max(shape.layer_params, shape.embed_params)
        return BYTES_16 * params / s.n_gpus + working
    return BYTES_16 * params


def _engine(total: int, trainable: int, s: PlanSettings, shape: ModelShape) -> dict[str, float]:
    """GPU bytes of one trainable DeepSpeed engine: weights, grads, optimizer, buckets."""
    n = s.n_gpus
    grads = BYTES_16 * trainable / (n if s.zero_stage >= 2 else 1)
    if s.offload_optimizer:
        optim = 0.0
    else:
        optim = BYTES_ADAM * trainable / (n if s.zero_stage >= 1 else 1)
    rb = s.reduce_bucket if s.reduce_bucket is not None else shape.hidden**2
    buckets = BYTES_16 * (min(s.allgather_bucket, trainable) + min(rb, trainable))
    if s.overlap_comm:
        buckets *= OVERLAP_COMM_FACTOR
    return {"weights": _weights(total, s, shape), "grads": grads, "optimizer": optim, "buckets": buckets}


def _engine_cpu(trainable: int, s: PlanSettings) -> float:
    if not s.offload_optimizer:
        return 0.0
    return (BYTES_ADAM + BYTES_GRAD_FP32) * trainable / s.n_gpus


def activation_bytes(shape: ModelShape, tokens: int, act_ckpt: bool) -> float:
    """Saved activations of one forward+backward over ``tokens`` tokens (see module doc)."""
    a = shape.act_bytes_per_token_layer()
    if act_ckpt:
        return tokens * (shape.layers * BYTES_16 * shape.hidden + a)
    return tokens * shape.layers * a


def _add(parts: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        parts[k] = parts.get(k, 0.0) + v


def _trainable(shape_total: int, shape: ModelShape, s: PlanSettings) -> tuple[int, int]:
    """(all params incl. adapters, trainable params) of one trained model."""
    if s.tuning == "lora":
        lora = shape.lora_params(s.lora_rank, s.lora_targets)
        return shape_total + lora, lora
    return shape_total, shape_total


# --------------------------------------------------------------------------- the plan


def _ppo(plan: StagePlan, shape: ModelShape, score: ModelShape, s: PlanSettings) -> None:
    """The PPO stage as ``bench.train.ppo`` holds it (module docstring): policy + value head engine,
    reference copy (full only), reward and cost models resident or offloaded, the largest phase."""
    parts = plan.parts
    value_head = VALUE_COLUMNS * (shape.hidden + 1)
    p_total, p_train = _trainable(shape.params, shape, s)
    _add(parts, _engine(p_total + value_head, p_train + value_head, s, shape))
    plan.cpu_bytes = _engine_cpu(p_train + value_head, s)
    if s.tuning == "full":
        parts["frozen weights"] = _weights(shape.params, s, shape)  # the reference copy
    n_score = 2 if s.cost_model else 1
    score_weights = _weights(score.score_params, s, score)
    tokens = s.micro_batch * s.seq_len
    kv_cache = tokens * shape.layers * 2 * shape.kv_dim * BYTES_16
    plan.phases = {
        "rollout": max(kv_cache, tokens * (LOGIT_BYTES_FORWARD * shape.vocab + shape.act_bytes_per_token_layer())),
        "policy step": activation_bytes(shape, tokens, s.act_ckpt) + LOGIT_BYTES_TRAIN * tokens * shape.vocab,
        "scoring": tokens * score.act_bytes_per_token_layer(),  # one no-grad forward, one layer live
    }
    if s.score_models == "resident":
        parts["score models"] = n_score * score_weights
        visiting = 0.0
    else:  # host RAM; one of them on the GPU during its scoring pass
        plan.cpu_bytes += n_score * BYTES_16 * score.score_params
        visiting = score_weights
    transient = {k: v + (visiting if k == "scoring" else 0.0) for k, v in plan.phases.items()}
    plan.peak = max(transient, key=transient.get)
    if plan.peak == "scoring" and visiting:
        parts["score models"] = visiting
    parts["activations"] = plan.phases[plan.peak]


def stage_plan(stage: str, shape: str | ModelShape, settings: PlanSettings | None = None,
               score_shape: str | ModelShape | None = None, **overrides) -> StagePlan:
    """Per-GPU memory of one stage. ``score_shape`` (default: the policy's shape) sizes the reward
    and cost models; ``overrides`` replace fields of ``settings`` (e.g. ``n_gpus=16``)."""
    shape = get_shape(shape)
    score = get_shape(score_shape) if score_shape is not None else shape
    s = dataclasses.replace(settings or PlanSettings(), **overrides)
    plan = StagePlan(stage=stage, shape=shape.name, settings=s)
    parts = plan.parts
    seq_tokens = s.micro_batch * s.seq_len

    if stage == "sft":
        total, trainable = _trainable(shape.params, shape, s)
        _add(parts, _engine(total, trainable, s, shape))
        plan.cpu_bytes = _engine_cpu(trainable, s)
        parts["activations"] = (activation_bytes(shape, seq_tokens, s.act_ckpt)
                                + LOGIT_BYTES_TRAIN * seq_tokens * shape.vocab)
    elif stage in ("reward", "cost"):
        total, trainable = _trainable(score.score_params, score, s)
        _add(parts, _engine(total, trainable, s, score))
        plan.cpu_bytes = _engine_cpu(trainable, s)
        parts["activations"] = activation_bytes(score, 2 * seq_tokens, s.act_ckpt)
    elif stage == "dpo":
        total, trainable = _trainable(shape.params, shape, s)
        _add(parts, _engine(total, trainable, s, shape))
        plan.cpu_bytes = _engine_cpu(trainable, s)
        if s.tuning == "full":  # a frozen copy as reference; LoRA disables its adapters instead
            parts["frozen weights"] = _weights(shape.params, s, shape)
        tokens = 2 * seq_tokens
        ref_forward = tokens * (LOGIT_BYTES_FORWARD * shape.vocab + shape.act_bytes_per_token_layer())
        policy_step = activation_bytes(shape, tokens, s.act_ckpt) + LOGIT_BYTES_TRAIN * tokens * shape.vocab
        parts["activations"] = max(ref_forward, policy_step)
    elif stage == "ppo":
        _ppo(plan, shape, score, s)
    else:
        raise ValueError(f"unknown stage {stage!r}; known: sft, reward, cost, dpo, ppo")
    parts["overhead"] = s.overhead_gb * GB
    return plan


def memory_plan(shape: str | ModelShape, settings: PlanSettings | None = None,
                score_shape: str | ModelShape | None = None, **overrides) -> list[StagePlan]:
    """Every stage x {full, lora} x {no checkpointing, activation checkpointing}."""
    out = []
    for stage in STAGES:
        for tuning in TUNINGS:
            for ckpt in (False, True):
                out.append(stage_plan(stage, shape, settings, score_shape,
                                      **{**overrides, "tuning": tuning, "act_ckpt": ckpt}))
    return out


_COLUMNS = ("weights", "frozen weights", "score models", "grads", "optimizer", "buckets", "activations", "overhead")


def plan_table(shape: str | ModelShape, gpus: Sequence[float] = (16, 32), *,
               settings: PlanSettings | None = None, score_shape: str | ModelShape | None = None,
               **overrides) -> str:
    """Markdown table: GB per GPU by component and whether each row fits each card size in ``gpus``
    (GB; 16 and 32 for the two V100 variants)."""
    shape = get_shape(shape)
    plans = memory_plan(shape, settings, score_shape, **overrides)
    s = plans[0].settings
    score_note = f", reward/cost models shaped like `{get_shape(score_shape).name}`" if score_shape else ""
    offload = "CPU optimizer offload" if s.offload_optimizer else "no offload"
    lora = "all linears" if tuple(s.lora_targets) == ALL_LINEARS else ", ".join(s.lora_targets)
    scores = ("in host RAM, one at a time on the GPU for its scoring pass" if s.score_models == "offload"
              else "resident on every GPU")
    models = "reward and cost models" if s.cost_model else "reward model (no cost model)"
    lines = [
        f"**{shape.name}** (`{shape.hub_id}`, {shape.params / 1e9:.2f} B params{score_note}): "
        f"fp16, ZeRO-{s.zero_stage} with {offload}, {s.n_gpus} GPUs, seq len {s.seq_len}, "
        f"micro-batch {s.micro_batch}, LoRA rank {s.lora_rank} on {lora}. PPO: policy with a value head "
        f"(no separate critic), reference = adapters off under LoRA, {models} {scores}. "
        "GB (1e9 bytes) per GPU at the peak phase.",
        "",
        "| stage | tuning | act. ckpt | " + " | ".join(_COLUMNS) + " | **total** | peak at | "
        + " | ".join(f"{g:g} GB" for g in gpus) + " | host RAM/GPU |",
        "|---|---|---|" + "---:|" * (len(_COLUMNS) + 1) + "---|" + ":---:|" * len(gpus) + "---:|",
    ]
    for p in plans:
        stage = "reward / cost" if p.stage == "reward" else p.stage
        cells = [f"{p.gb(c):.1f}" for c in _COLUMNS]
        fits = ["fits" if p.fits(g) else "**no**" for g in gpus]
        lines.append(f"| {stage} | {p.settings.tuning} | {'on' if p.settings.act_ckpt else 'off'} | "
                     + " | ".join(cells) + f" | **{p.total_gb:.1f}** | {p.peak} | " + " | ".join(fits)
                     + f" | {p.cpu_bytes / GB:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory_plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", help=f"named shapes (default: all): {', '.join(SHAPES)}")
    ap.add_argument("--n-gpus", type=int, default=PlanSettings.n_gpus, help="data-parallel GPUs")
    ap.add_argument("--seq-len", type=int, default=PlanSettings.seq_len)
    ap.add_argument("--micro-batch", type=int, default=PlanSettings.micro_batch)
    ap.add_argument("--lora-rank", type=int, default=PlanSettings.lora_rank)
    ap.add_argument("--zero-stage", type=int, default=PlanSettings.zero_stage, choices=(0, 1, 2, 3))
    ap.add_argument("--no-offload", action="store_true", help="optimizer states on the GPU")
    ap.add_argument("--score-shape", default=None, help="shape of the reward/cost models (default: same)")
    ap.add_argument("--score-models", default="offload", choices=SCORE_MODELS,
                    help="PPO: reward/cost models in host RAM between scoring passes (the code on a GPU) or resident")
    ap.add_argument("--lora-targets", nargs="+", default=list(ALL_LINEARS), metavar="MODULE",
                    help="linears LoRA adapts (default: all seven)")
    ap.add_argument("--gpu-gb", type=float, nargs="+", default=[16, 32], help="card sizes to check")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        shapes = [get_shape(n) for n in (args.shapes or SHAPES)]
        score = get_shape(args.score_shape) if args.score_shape else None
        settings = PlanSettings(n_gpus=args.n_gpus, seq_len=args.seq_len, micro_batch=args.micro_batch,
                                lora_rank=args.lora_rank, zero_stage=args.zero_stage,
                                offload_optimizer=not args.no_offload, score_models=args.score_models,
                                lora_targets=tuple(args.lora_targets))
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(plan_table(sh, args.gpu_gb, settings=settings, score_shape=score) for sh in shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
