#!/bin/bash
# Login node (it has internet, compute nodes may not): download everything a profile needs into
# HF_HOME (models, tokenizers, datasets at their pinned revisions, lm-eval task data), using the
# image's own stack. Afterwards every stage of that profile runs on compute nodes with
# HF_HUB_OFFLINE=1, which the slurm/ templates set.
#
#   PROFILE=llama2-7b-v100 bash slurm/fetch.sh
#   export HF_TOKEN; PROFILE=llama2-7b-v100 bash slurm/fetch.sh   # gated models (accept the licence first); the token
#       reaches the container through the environment (APPTAINERENV_HF_TOKEN), never a command line
#
# HF_HOME must be on a filesystem the compute nodes mount (not the login node's /tmp).
set -euo pipefail
export BENCH_REPO="${BENCH_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# shellcheck source=slurm/common.sh
source "$BENCH_REPO/slurm/common.sh"
export HF_HUB_OFFLINE=0
BENCH_NV="" bench_container make fetch PROFILE="$PROFILE" "$@"
