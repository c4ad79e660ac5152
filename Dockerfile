# align-bench for V100 (sm_70): the same stack as Apptainer.def, from the same lock files.
#
#   docker build -t align-bench --build-arg BENCH_GIT_SHA="$(git rev-parse HEAD)" \
#       --build-arg BENCH_GIT_DIRTY="$(test -z "$(git status --porcelain -uno)" && echo false || echo true)" .
#   docker run --rm --gpus all -e HF_TOKEN -v "$HF_HOME:/data/hf" -v "$PWD/runs:/data/runs" \
#       -v "$PWD/leaderboards:/data/leaderboards" align-bench make ppo PROFILE=llama2-7b-v100
#
# No package version is typed here except the bootstrap pip and setuptools (the same two pins as
# Apptainer.def; a test checks both files and the lock agree). DeepSpeed's CPU ops are built for
# the declared CPU baseline x86-64-v3 (AVX2 + FMA, no AVX-512), as in Apptainer.def. See
# docs/containers.md.
FROM nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ARG DEBIAN_FRONTEND=noninteractive
# The oldest CPU the image runs on: x86-64-v3 = AVX2 + FMA (Haswell, Zen 1 and later), no AVX-512.
ARG CPU_BASELINE=x86-64-v3
ARG CPU_SIMD=__AVX256__

# Python 3.11 from Ubuntu 22.04's own archive, make for the pipeline, git for provenance and
# `make verify`, binutils (objdump) for the CPU-baseline check, and the InfiniBand user-space
# libraries (verbs, RDMA CM, providers) so that multi-node NCCL uses IB, not TCP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev make git ca-certificates binutils \
        rdma-core libibverbs1 ibverbs-providers librdmacm1 ibverbs-utils \
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
    BENCH_CACHE=/data/cache \
    BENCH_LEADERBOARDS=/data/leaderboards \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTEST_ADDOPTS="-o cache_dir=/data/cache/pytest"

WORKDIR /opt/align-bench

# 1. The locked stack except DeepSpeed (torch's cu126 build from the lock's extra index); then the
#    arch list, a property of the wheel (no GPU needed), must still hold Volta.
COPY requirements/ requirements/
RUN grep -iv '^deepspeed==' requirements/v100.txt > /tmp/v100-without-deepspeed.txt \
 && pip install --no-cache-dir -r /tmp/v100-without-deepspeed.txt \
 && rm /tmp/v100-without-deepspeed.txt \
 && python -c 'import torch, sys; a = torch.cuda.get_arch_list(); print("torch", torch.__version__, "CUDA", torch.version.cuda, a); sys.exit(0 if "sm_70" in a else "torch wheel has no sm_70 (V100) kernels: " + str(a))'

# 2. DeepSpeed at the lock's pin with CPU Adam (optimizer offload) and fused Adam compiled for V100.
#    DS_ACCELERATOR=cuda: no GPU to detect at build time. DeepSpeed compiles CPU ops with
#    -march=native (and -D__AVX512__ on an AVX-512 host; no variable overrides it), so the sdist's
#    OpBuilder (the build copy and the runtime copy) is given the declared baseline first; then the
#    machine code is checked: no AVX-512 in any prebuilt op, AVX2 (ymm) in CPU Adam.
# DL3013 below: the version is pinned, read from the lock into DS_PIN where hadolint cannot see it.
# hadolint ignore=DL3013
RUN DS_PIN="$(grep -i '^deepspeed==' requirements/v100.txt)" \
 && mkdir -p /tmp/ds \
 && DS_ACCELERATOR=cuda DS_BUILD_OPS=0 pip download --no-cache-dir --no-deps --no-binary :all: \
        --no-build-isolation -d /tmp/ds "${DS_PIN}" \
 && tar -xzf /tmp/ds/deepspeed-*.tar.gz -C /tmp/ds \
 && DS_SRC="$(find /tmp/ds -mindepth 1 -maxdepth 1 -type d -name 'deepspeed-*')" \
 && for f in "$DS_SRC/op_builder/builder.py" "$DS_SRC/deepspeed/ops/op_builder/builder.py"; do \
        grep -q '^class OpBuilder' "$f" \
        && printf '%s\n' '' '# align-bench: CPU ops for the declared baseline, not the build host.' \
            "OpBuilder.cpu_arch = lambda self: '-march=${CPU_BASELINE}'" \
            "OpBuilder.simd_width = lambda self: '-D${CPU_SIMD}'" >> "$f" || exit 1; \
    done \
 && DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST="7.0" DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 \
    MAX_JOBS=4 pip install --no-cache-dir --no-build-isolation --no-deps "${DS_SRC}" \
 && rm -rf /tmp/ds \
 && python -c 'from deepspeed.git_version_info import installed_ops as o; import sys; print("deepspeed prebuilt ops:", sorted(k for k, v in o.items() if v)); sys.exit(0 if o.get("cpu_adam") else "DeepSpeed cpu_adam op was not built")' \
 && find /opt/venv/lib -path '*/deepspeed/ops/*' -name '*.so' > /tmp/ds-ops.txt \
 && while read -r so; do \
        objdump -d --no-show-raw-insn "$so" > /tmp/ds-op.asm || exit 1; \
        if grep -Eq '%zmm[0-9]|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{%k[1-7]\}' /tmp/ds-op.asm; then \
            echo "$so holds AVX-512 instructions: not built for ${CPU_BASELINE}" >&2; exit 1; \
        fi; \
    done < /tmp/ds-ops.txt \
 && objdump -d --no-show-raw-insn "$(grep 'cpu_adam_op' /tmp/ds-ops.txt | head -n 1)" | grep -q '%ymm' \
 && rm /tmp/ds-ops.txt /tmp/ds-op.asm

# 3. The project (the same paths as Apptainer.def's %files), editable, and the no-deps package.
COPY Makefile pyproject.toml README.md CITATION.cff ./
COPY bench/ bench/
COPY configs/ configs/
COPY tasks/ tasks/
COPY tests/ tests/
COPY slurm/ slurm/
COPY docs/ docs/
COPY leaderboards/ leaderboards/
COPY Apptainer.def Dockerfile .dockerignore .hadolint.yaml ./
RUN pip install --no-cache-dir --no-deps -r requirements/nodeps.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/align-bench \
 && python -c 'from importlib.metadata import version; from bench.lockfiles import REQ_DIR, parse_pins; pins = {**parse_pins((REQ_DIR / "v100.txt").read_text()), **parse_pins((REQ_DIR / "nodeps.txt").read_text())}; bad = {n: (p, version(n)) for n, p in pins.items() if version(n) != p}; assert not bad, f"installed versions differ from the lock: {bad}"; print(len(pins), "packages match the lock")' \
 && bench --help > /dev/null

# The source commit (the build context has no .git): pass it as build args (see the top). Late, so
# a new commit rebuilds only the last layers. bench.provenance reads BENCH_GIT_SHA / SOURCE_COMMIT.
ARG BENCH_GIT_SHA=unknown
ARG BENCH_GIT_DIRTY=
RUN printf 'sha=%s\ndirty=%s\n' "${BENCH_GIT_SHA}" "${BENCH_GIT_DIRTY}" > /opt/align-bench/SOURCE_COMMIT
ENV BENCH_GIT_SHA=${BENCH_GIT_SHA} \
    BENCH_GIT_DIRTY=${BENCH_GIT_DIRTY}

# Non-root user; every write goes under /data (mount host directories there): runs, caches, and
# leaderboards (mount the checkout's leaderboards/ at /data/leaderboards: `make verify` reads its
# committed records with git, `make leaderboard` writes there). /opt/align-bench/leaderboards holds
# the image commit's.
RUN groupadd --gid 1000 bench \
 && useradd --uid 1000 --gid bench --create-home --shell /bin/bash bench \
 && mkdir -p /data/hf /data/runs /data/cache /data/leaderboards \
 && chown -R bench:bench /data
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
      org.align-bench.cpu-baseline="x86-64-v3" \
      org.align-bench.lock="requirements/v100.txt"

# Like Apptainer's %runscript: a stage of a GPU profile without a GPU (no --gpus) stops with one line.
ENTRYPOINT ["/bin/sh", "-c", "/opt/venv/bin/python -m bench.nv_check \"$@\" || exit $?; exec \"$@\"", "align-bench"]
CMD ["make", "help"]
