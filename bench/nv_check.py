"""Stop at once, with one line, when a GPU profile runs in a container started without ``--nv``.

    python -m bench.nv_check make ppo PROFILE=llama2-7b-v100     # Apptainer.def's %runscript runs this
    python -m bench.nv_check bench sft --profile llama2-7b-v100  # before `exec "$@"`; exit 0 = go on

Without ``--nv`` Apptainer binds no NVIDIA driver library into the container, so ``libcuda.so.1``
cannot be loaded, torch sees no GPU and a fp16 DeepSpeed stage of a V100 profile would fail deep
inside DeepSpeed (or crawl on the CPU). The check reads the profile's YAML (no torch import, no
config validation: the stage does that) and the command's words:

- the command computes: a word names a stage (``base sft reward cost dpo ppo steer eval``),
  ``verify``, ``bench``/``perf`` or ``gpu-check``; ``fetch``, ``test``, ``help``, ``leaderboard`` and
  the rest run without a GPU;
- the profile needs a GPU: a stage section sets ``deepspeed`` or ``fp16: true``, or
  ``model.dtype`` is ``float16``/``bfloat16``, or a ``device`` key names ``cuda``;
- no GPU is visible: ``libcuda.so.1`` does not load, or ``cuInit``/``cuDeviceGetCount`` report none
  (``CUDA_VISIBLE_DEVICES=""`` too).

All three: one line on stderr telling the user to add ``--nv`` and exit status 2. Anything the
check cannot read (an unknown profile, a broken YAML) lets the command run and report it itself.
``BENCH_SKIP_GPU_CHECK=1`` skips the check.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import yaml

# Make targets / bench subcommands that load a model and train or evaluate it.
COMPUTE_WORDS = frozenset({"base", "sft", "reward", "cost", "dpo", "ppo", "steer", "eval", "verify", "bench",
                           "perf", "gpu-check"})
GPU_DTYPES = frozenset({"float16", "fp16", "half", "bfloat16", "bf16"})
EXIT_NO_GPU = 2


def profile_from_argv(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The profile a command names: ``PROFILE=x`` (make), ``--profile x``/``--profile=x``/``-p x``
    (bench), else ``$PROFILE``, else ``default`` (the Makefile's and the CLI's default)."""
    env = os.environ if env is None else env
    found = None
    for i, word in enumerate(argv):
        if word.startswith("PROFILE="):
            found = word.split("=", 1)[1]
        elif word.startswith("--profile="):
            found = word.split("=", 1)[1]
        elif word in ("--profile", "-p") and i + 1 < len(argv):
            found = argv[i + 1]
    return found or env.get("PROFILE") or "default"


def computes(argv: list[str]) -> bool:
    """Whether the command runs a stage (make target or bench subcommand) that may need the GPU."""
    return any(word in COMPUTE_WORDS for word in argv)


def gpu_reasons(raw: dict) -> list[str]:
    """Why a profile (its YAML as a dict) needs a GPU: ``["sft.deepspeed", "model.dtype=float16"]``."""
    reasons = []
    model = raw.get("model") or {}
    if isinstance(model, dict) and str(model.get("dtype", "")).lower() in GPU_DTYPES:
        reasons.append(f"model.dtype={model['dtype']}")
    for section, body in raw.items():
        if not isinstance(body, dict):
            continue
        if body.get("deepspeed"):
            reasons.append(f"{section}.deepspeed")
        if body.get("fp16") is True:
            reasons.append(f"{section}.fp16")
        if "cuda" in str(body.get("device", "")).lower():
            reasons.append(f"{section}.device={body['device']}")
    return reasons


def profile_reasons(profile: str) -> list[str]:
    """:func:`gpu_reasons` of a profile name or YAML path; [] when it cannot be read."""
    from bench.config import CONFIG_DIR

    path = Path(profile) if profile.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{profile}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return gpu_reasons(raw) if isinstance(raw, dict) else []


def visible_gpus() -> int:
    """CUDA devices the driver shows this process: 0 when ``libcuda.so.1`` is not there (a container
    started without ``--nv``), cannot initialise, or ``CUDA_VISIBLE_DEVICES`` hides every device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value


def check(argv: list[str], env: dict[str, str] | None = None, gpus=visible_gpus) -> str | None:
    """The one-line error for ``argv`` (the command the container was asked to run), or None to go on."""
    env = os.environ if env is None else env
    if env.get("BENCH_SKIP_GPU_CHECK") == "1" or not computes(argv):
        return None
    profile = profile_from_argv(argv, env)
    reasons = profile_reasons(profile)
    if not reasons or gpus() > 0:
        return None
    hidden = " (CUDA_VISIBLE_DEVICES is empty)" if env.get("CUDA_VISIBLE_DEVICES") == "" else ""
    return (f"align-bench: profile {profile} needs a GPU ({', '.join(reasons[:3])}) but none is visible{hidden}: "
            f"start the container with --nv (apptainer run --nv align.sif ...; docker run --gpus all ...), "
            f"or set BENCH_SKIP_GPU_CHECK=1")


def main(argv: list[str] | None = None) -> int:
    message = check(sys.argv[1:] if argv is None else argv)
    if message:
        print(message, file=sys.stderr)
        return EXIT_NO_GPU
    return 0


if __name__ == "__main__":
    sys.exit(main())
