"""Set-up shared by the measured units of `bench perf` (:mod:`bench.perf.units`,
:mod:`bench.perf.generation`): the profile's config and threads, the two models a unit compares
(plain fp32 as a user loads it, and the same weights made ready for bf16), the compute-precision
context of one side, and the interleaved timing of sides. Nothing here measures anything by itself.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

PRECISIONS = ("fp32", "bf16")


def unit_cfg(args: dict):
    """The unit's profile (``args["profile"]``, ``args["overrides"]``), its torch threads set."""
    from bench.config import load_config

    cfg = load_config(args["profile"], list(args.get("overrides") or []))
    set_threads(cfg)
    return cfg


def set_threads(cfg) -> None:
    import torch

    if cfg.profile.cpu_threads:
        torch.set_num_threads(cfg.profile.cpu_threads)


@contextlib.contextmanager
def compute(precision: str, model=None, whole_call: bool = False):
    """The compute precision of one side, as the pipeline sets it.

    ``fp32``: autocast explicitly off, so no enclosing autocast can leak into an fp32 side.
    ``bf16``: the model carries its precision (the loaders' ``bench.precision.for_precision``: fp32
    heads, and each forward under bf16 autocast); ``whole_call`` (generation) adds the outer
    ``generation_autocast`` the pipeline's generators enter, so one cast of the weights serves the
    whole call."""
    import torch

    from bench.precision import generation_autocast

    if precision == "fp32":
        ctx = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", enabled=False)
    elif whole_call and model is not None:
        ctx = generation_autocast(model)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def with_precision(cfg, precision: str):
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, precision=precision))


def plain_and_bf16_models(cfg) -> tuple[object, object, object]:
    """(plain fp32 model as a user loads it, the same weights made ready for bf16, tokenizer)."""
    from bench.models import load_pretrained, prepare_base

    folder, _ = prepare_base(cfg, progress=lambda s: None)
    plain, tok = load_pretrained(folder, with_precision(cfg, "fp32").model)
    ours16, _ = load_pretrained(folder, with_precision(cfg, "bf16").model)
    return plain.eval(), ours16.eval(), tok


def cpu_bf16() -> dict:
    import torch

    from bench.precision import native_cpu_bf16, resolve

    return {"native_bf16_flags": native_cpu_bf16(), "auto_resolves_to": resolve("auto"),
            "cuda": torch.cuda.is_available()}


def heldout_pairs(cfg, n: int) -> list[dict]:
    """Held-out preference pairs (test split), as the battery forms them."""
    from bench.data import dpo_pairs, load_role

    prefs = load_role(cfg.data, "preferences", "test")
    policy = cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better"
    pairs = dpo_pairs(prefs.rows, policy) if prefs.schema == "pku" else [dict(r) for r in prefs.rows]
    return pairs[:n] if n else pairs


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(sides: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """One untimed warm-up call of each side, then ``repeats`` rounds; the order alternates per
    round. Returns ({side: [seconds]}, {side: output of its last call})."""
    last = {k: fn() for k, fn in sides.items()}
    secs: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            dt, last[k] = timed(sides[k])
            secs[k].append(dt)
    return secs, last
