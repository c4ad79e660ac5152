"""Compute precision: fp32, or bf16 autocast around each forward pass with fp32 weights and heads.

What: ``model.precision`` in a profile is ``fp32``, ``bf16`` or ``auto``. :func:`resolve` turns
``auto`` into ``bf16`` where the hardware multiplies bf16 natively (a CPU with AVX512-BF16 or
AMX-BF16; a GPU that reports bf16 support) and ``fp32`` elsewhere; the profile loader stores the
resolved value, so a record's config (and every stage hash) says what actually ran. Every loader
passes its model through :func:`for_precision`, which under bf16 makes the output heads compute in
fp32 (:func:`keep_heads_fp32`) and wraps the model's ``forward`` in ``torch.autocast`` (what
accelerate does for ``mixed_precision="bf16"``): every forward pass of every stage, whether
training (HF/TRL trainers, PPO), scoring, lm-eval or generation, runs its matrix products in bf16,
and each backward pass runs outside the context, as autocast's documentation requires.
:func:`generation_autocast` is an extra outer context for a whole ``generate`` call.

Why: on this project's CPUs bf16 matmul runs ~4.5x fp32 (617-929 vs 155-209 GFLOPS, issue 23);
plain autocast made a SmolLM2-135M training step 2.4x and batched greedy generation 2.3x faster.
What stays fp32, and why:

- weights, gradients and optimizer state (autocast casts copies for each matmul; the master copy,
  the update and ``save_pretrained`` are fp32, so checkpoints do not change format);
- the output heads. A bf16 logit of magnitude ~20 carries an error of up to 2^-8 x 20 ~ 0.08 nats;
  summed over a 100-token response that is ~1 nat of noise in a log-prob, larger than the margins
  the battery reports. With the head in fp32 only the hidden state carries bf16 rounding (measured
  on 64 test pairs: mean |change| of a margin 0.33 nats with a bf16 head, 0.22 with an fp32 head,
  against margins of ~58 nats);
- log-softmax, the losses and log-prob sums (``bench.losses`` casts logits to fp32 first), RMSNorm
  (Llama's norm upcasts to fp32 internally), and everything outside a forward pass.

Why per forward and not one context around a stage: autocast caches the bf16 copy of every weight
that requires grad until the *outermost* autocast context exits. A context around a whole training
loop therefore keeps feeding the forward passes the weights of step 1 while the optimizer updates
the fp32 master copy: a first version did exactly that, and its SFT "trained" 80 steps with a flat
loss (3.1 against fp32's 3.0 -> 2.0) and answered every prompt with an empty string. Entered per
forward, the cache lives for one pass. Inference is the place where a longer cache is right
(the weights are fixed for the whole call, and recasting them at every decode step would cost a
copy of the model per token): :func:`generation_autocast` wraps a whole ``generate`` or scoring call.

fp32 changes nothing: no wrapper, no context, the code path the suite always had. The V100 profiles
keep fp32 here: their fp16 is the trainers' ``fp16: true`` (loss scaling, DeepSpeed); V100 has no bf16.

    model = for_precision(model, cfg.model.precision)   # the loaders do this
    with generation_autocast(model):
        model.generate(...)
"""

from __future__ import annotations

import contextlib
import functools
import types
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of a CPU that multiplies bf16 in hardware (AVX512-BF16: Cooper Lake, Zen 4+;
# AMX: Sapphire Rapids+). Without them bf16 is emulated and slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (first ``flags`` line of /proc/cpuinfo); empty where there is none."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags") and ":" in line:
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_cpu_bf16(flags: Iterable[str] | None = None) -> list[str]:
    """The native-bf16 flags this CPU has (empty: none; bf16 would be emulated)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return [f for f in NATIVE_BF16_FLAGS if f in have]


def resolve(requested: str, cuda: bool | None = None, flags: Iterable[str] | None = None) -> str:
    """``fp32`` / ``bf16`` for a requested precision. ``auto``: on a GPU, bf16 where the device
    supports it (not V100); on a CPU, bf16 where the CPU has a native-bf16 flag; else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() if cuda is None else cuda
    if on_gpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_cpu_bf16(flags) else "fp32"


def _autocast_forward(forward):
    """``forward`` (a class's function) run under bf16 autocast on the device of the module's weights."""

    @functools.wraps(forward)
    def run(self, *args, **kwargs):
        p = next(self.parameters(), None)
        with torch.autocast(p.device.type if p is not None else "cpu", dtype=torch.bfloat16):
            return forward(self, *args, **kwargs)

    return run


def autocast_forward(model: nn.Module) -> nn.Module:
    """Wrap ``model.forward`` (a bound method on the instance, so ``copy.deepcopy`` rebinds it to the
    copy, as for accelerate's wrapper) in bf16 autocast; idempotent. :func:`for_precision` wraps the
    model and its backbone (``model.base_model``): TRL 1.16's SFT and DPO patch ``model.forward`` with
    a fused LM head that calls the backbone directly (``trl.trainer.utils.add_fused_lm_head``), so a
    wrapper on the top-level forward alone left their training in fp32."""
    if not getattr(model, "bench_autocast", False):
        model.forward = types.MethodType(_autocast_forward(type(model).forward), model)
        model.bench_autocast = True
    return model


@contextlib.contextmanager
def generation_autocast(model: nn.Module):
    """An outer bf16 autocast context for a whole ``generate`` (or other inference) call on a model
    :func:`for_precision` wrapped: the per-forward contexts inside it then share one cast of the
    weights; a no-op context for an fp32 model.

    Autocast caches the cast only of leaf weights that require grad. Frozen fp32 weights (a LoRA
    policy's base, a reference or score model made ``requires_grad_(False)``) would otherwise be cast
    again at every forward, i.e. at every decode step: a copy of the model per token, which on the
    AMX host made a bf16 LoRA-PPO step slower than fp32 (docs/experiments.md#generation-ceiling). So
    inside the context, which runs under ``torch.no_grad`` (no graph is built, nothing is trained),
    they are marked as requiring grad and restored on exit; the cast values are the same either way.
    One side effect outside autocast: with its weight requiring grad, an fp32 head's ``F.linear`` on a
    non-contiguous input (a prefill's ``logits_to_keep=1`` slice) takes the contiguous input's kernel,
    not the strided one a frozen weight gets: logits ~1e-7 apart on the smoke model, so a frozen model
    scored inside this context is not bitwise one scored outside it. Weights that already require grad
    (a policy as ``load_pretrained`` returns it) see no change (docs/experiments.md#steer-scan-cast)."""
    if not getattr(model, "bench_autocast", False):
        yield
        return
    p = next(model.parameters(), None)
    frozen = [w for w in model.parameters() if not w.requires_grad and w.dtype == torch.float32]
    with torch.no_grad():
        try:
            for w in frozen:
                w.requires_grad_(True)
            with torch.autocast(p.device.type if p is not None else "cpu", dtype=torch.bfloat16):
                yield
        finally:
            for w in frozen:
                w.requires_grad_(False)


class FP32Linear(nn.Linear):
    """An ``nn.Linear`` that computes in fp32 whatever autocast says (an output head). Swapped in by
    class (same parameters, same state-dict keys; tied weights stay tied)."""

    def forward(self, x):
        low = self.weight.dtype in (torch.bfloat16, torch.float16)
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.float() if low else self.weight
            b = None if self.bias is None else self.bias.to(w.dtype)
            return nn.functional.linear(x.to(w.dtype), w, b)


HEAD_NAMES = ("lm_head", "score", "value_head")  # causal LM, score model, PPO's critic


def for_precision(model, precision: str):
    """The loaded ``model`` made ready for ``precision``: under bf16 its heads in fp32 and its forward
    under autocast; untouched for fp32 (the fp16 V100 path keeps fp16 heads: its logits' memory is
    the budget there)."""
    if precision == "bf16":
        keep_heads_fp32(model)
        autocast_forward(model)
        backbone = getattr(model, "base_model", model)
        if isinstance(backbone, nn.Module) and backbone is not model:
            autocast_forward(backbone)  # TRL's fused LM head (SFT, DPO) calls the backbone, not model.forward
    elif precision != "fp32":
        raise ValueError(f"for_precision needs a resolved precision (fp32 or bf16), got {precision!r}")
    return model


def keep_heads_fp32(model):
    """Make the model's output heads (:data:`HEAD_NAMES`; plain ``nn.Linear`` only) compute in
    fp32 from an fp32 input. Returns the number of heads changed; idempotent; a no-op on the
    numbers outside autocast for an fp32 model (the same ``linear`` on the same fp32 tensors)."""
    n = 0
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if type(head) is nn.Linear:
            head.__class__ = FP32Linear
            n += 1
        elif isinstance(head, FP32Linear):
            n += 1
    return n
