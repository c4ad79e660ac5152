"""Compute precision of a stage: fp32, or bf16 autocast with fp32 weights and fp32 output heads.

What: ``model.precision`` in a profile is ``fp32``, ``bf16`` or ``auto``. :func:`resolve` turns
``auto`` into ``bf16`` where the hardware multiplies bf16 natively (a CPU with AVX512-BF16 or
AMX-BF16; a GPU that reports bf16 support) and ``fp32`` elsewhere; the profile loader stores the
resolved value, so a record's config (and every stage hash) says what actually ran.
:func:`stage_autocast` is the one context a stage command runs in (``bench.cli``): every forward
pass of the stage, whether training (HF/TRL trainers, PPO), scoring or generation, runs its matrix
products in bf16. :func:`keep_heads_fp32` makes the output heads (``lm_head``, a score model's
``score``) compute in fp32 from an fp32 copy of their input, inside or outside autocast.

Why: on this project's CPUs bf16 matmul runs ~4.5x fp32 (617-929 vs 155-209 GFLOPS, issue 23);
plain autocast made a SmolLM2-135M training step 2.4x and batched greedy generation 2.3x faster.
What stays fp32, and why:

- weights, gradients and optimizer state (autocast casts copies for each matmul; the master copy,
  the update and ``save_pretrained`` are fp32, so checkpoints do not change format);
- the output heads. A bf16 logit of magnitude ~20 carries an error of up to 2^-8 x 20 ~ 0.08 nats;
  summed over a 100-token response that is ~1 nat of noise in a log-prob, larger than the margins
  the battery reports. With the head in fp32 only the hidden state carries bf16 rounding;
- log-softmax, the losses and log-prob sums (``bench.losses`` casts logits to fp32 first), RMSNorm
  (Llama's norm upcasts to fp32 internally), and everything outside a forward pass.

How: autocast is thread-local state entered once per stage command, like ``torch.set_num_threads``
(``profile.cpu_threads``); nothing below the CLI needs a precision argument. ``fp32`` enters
nothing, so the fp32 path is the code path the suite always had. The V100 profiles keep fp32 here:
their fp16 is the trainers' ``fp16: true`` (loss scaling, DeepSpeed), and V100 has no bf16.

    cfg.model.precision                      # 'bf16' on this machine for the default profile
    with stage_autocast(cfg.model.precision):
        ...                                  # the stage
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator

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


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def stage_autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the stage's device for ``bf16``; nothing at all for ``fp32``."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"stage_autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    with torch.autocast(device_type(), dtype=torch.bfloat16):
        yield


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
    """The loaded ``model`` made ready for ``precision``: its heads in fp32 under bf16; untouched
    for fp32 (the fp16 V100 path keeps fp16 heads: its logits' memory is the budget there)."""
    if precision == "bf16":
        keep_heads_fp32(model)
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
