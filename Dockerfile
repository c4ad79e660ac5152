# align-bench for V100 (sm_70): the same stack as Apptainer.def, from the same lock files.
#
#   make docker                       # = docker build -t align-bench .
#   docker run --rm --gpus all -v "$HF_HOME:/data/hf" -v "$PWD/runs:/data/runs" \
#       -v "$PWD/leaderboards:/opt/align-bench/leaderboards" align-bench make ppo PROFILE=llama2-7b-v100
#
# No package version is typed here except the bootstrap pip and setuptools (the same two pins as
# Apptainer.def; a test checks both files and the lock agree). See docs/containers.md.
FROM nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ARG DEBIAN_FRONTEND=noninteractive

# Python 3.11 from Ubuntu 22.04's own archive, make for the pipeline, git for provenance.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev make git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir "pip==${PIP_VERSION}" "setuptools==${SETUPTOOLS_VERSION}"

ENV PATH=/opt/venv/bin:$PATH \
    LC_ALL=C.UTF-8 \
    LANG=C.UTF-8 \
    BENCH_PYTHON=/opt/venv/bin/python \
    PYTHONNOUSERSITE=1 \
    HF_HOME=/data/hf \
    BENCH_RUNS=/data/runs \
    BENCH_CACHE=/data/cache

WORKDIR /opt/align-bench

# 1. The locked stack except DeepSpeed (torch's cu126 build from the lock's extra index); then the
#    arch list, a property of the wheel (no GPU needed), must still hold Volta.
COPY requirements/ requirements/
RUN grep -iv '^deepspeed==' requirements/v100.txt > /tmp/v100-without-deepspeed.txt \
 && pip install --no-cache-dir -r /tmp/v100-without-deepspeed.txt \
 && rm /tmp/v100-without-deepspeed.txt \
 && python -c 'import torch, sys; a = torch.cuda.get_arch_list(); print("torch", torch.__version__, "CUDA", torch.version.cuda, a); sys.exit(0 if "sm_70" in a else "torch wheel has no sm_70 (V100) kernels: " + str(a))'

# 2. DeepSpeed at the lock's pin with CPU Adam (optimizer offload) and fused Adam compiled for V100.
#    DS_ACCELERATOR=cuda: no GPU to detect at build time. CPU Adam uses -march=native: build on a
#    CPU no newer than the compute nodes'.
# DL3013 below: the version is pinned, read from the lock into DS_PIN where hadolint cannot see it.
# hadolint ignore=DL3013
RUN DS_PIN="$(grep -i '^deepspeed==' requirements/v100.txt)" \
 && DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST="7.0" DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 \
    MAX_JOBS=4 pip install --no-cache-dir --no-build-isolation --no-deps "${DS_PIN}" \
 && python -c 'from deepspeed.git_version_info import installed_ops as o; import sys; print("deepspeed prebuilt ops:", sorted(k for k, v in o.items() if v)); sys.exit(0 if o.get("cpu_adam") else "DeepSpeed cpu_adam op was not built")'

# 3. The project (the same paths as Apptainer.def's %files), editable, and the no-deps package.
COPY Makefile pyproject.toml README.md CITATION.cff ./
COPY bench/ bench/
COPY configs/ configs/
COPY tasks/ tasks/
COPY tests/ tests/
COPY slurm/ slurm/
COPY docs/ docs/
RUN pip install --no-cache-dir --no-deps -r requirements/nodeps.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/align-bench \
 && python -c 'from importlib.metadata import version; from bench.lockfiles import REQ_DIR, parse_pins; pins = {**parse_pins((REQ_DIR / "v100.txt").read_text()), **parse_pins((REQ_DIR / "nodeps.txt").read_text())}; bad = {n: (p, version(n)) for n, p in pins.items() if version(n) != p}; assert not bad, f"installed versions differ from the lock: {bad}"; print(len(pins), "packages match the lock")' \
 && bench --help > /dev/null

# Non-root user; writable state under /data (mount host directories there) and leaderboards/
# (data, not code: mount the checkout's there to read committed records and keep what is rendered).
RUN groupadd --gid 1000 bench \
 && useradd --uid 1000 --gid bench --create-home --shell /bin/bash bench \
 && mkdir -p /data/hf /data/runs /data/cache /opt/align-bench/leaderboards \
 && chown -R bench:bench /data /opt/align-bench/leaderboards
USER 1000:1000

LABEL org.opencontainers.image.title="align-bench" \
      org.opencontainers.image.description="LLM alignment benchmark suite, V100 (sm_70) fp16 DeepSpeed stack" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.align-bench.base-image="nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04" \
      org.align-bench.cuda="12.6" \
      org.align-bench.python="3.11" \
      org.align-bench.gpu-arch="sm_70" \
      org.align-bench.precision="fp16" \
      org.align-bench.attention="sdpa" \
      org.align-bench.lock="requirements/v100.txt"

CMD ["make", "help"]
