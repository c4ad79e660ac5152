# shellcheck shell=bash
# Sourced by the slurm/ templates (not run directly): where things are, what the container binds,
# and the command that runs inside align.sif. Every value can be overridden from the environment
# at submission time (sbatch and srun pass the environment through).
#
#   BENCH_REPO     the checkout (default: the directory you submitted from)
#   BENCH_SIF      the image (default: $BENCH_REPO/align.sif, built by `make image`)
#   PROFILE        the profile (default: llama2-7b-v100)
#   HF_HOME        Hugging Face cache on a shared filesystem, filled by `make fetch` on the login node
#   BENCH_RUNS     run directories (checkpoints, records; default: $BENCH_REPO/runs); shared, large
#   BENCH_CACHE    converted models (default: $BENCH_REPO/.cache/bench)
#   HF_HUB_OFFLINE 1 on compute nodes (default here): nothing is downloaded, a missing item is an error
#   GPUS_PER_NODE  default: $SLURM_GPUS_ON_NODE, else 4
#   HF_TOKEN       gated models: passed to the container through the environment (never argv)
#   NCCL_*         pass through to the container (NCCL_IB_HCA, NCCL_SOCKET_IFNAME: docs/containers.md)
#   MASTER_PORT    default: derived from the job id (two jobs on one node do not collide)

REPO="${BENCH_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
SIF="${BENCH_SIF:-$REPO/align.sif}"
export PROFILE="${PROFILE:-llama2-7b-v100}"
export HF_HOME="${HF_HOME:-$HOME/.cache/huggingface}"
export BENCH_RUNS="${BENCH_RUNS:-$REPO/runs}"
export BENCH_CACHE="${BENCH_CACHE:-$REPO/.cache/bench}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}"
export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
if [[ -z "${MASTER_ADDR:-}" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    mapfile -t _nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    export MASTER_ADDR="${_nodes[0]}"  # rank 0 runs on the first node of the allocation
fi
export HOSTFILE="${HOSTFILE:-$BENCH_RUNS/.slurm/hostfile.${SLURM_JOB_ID:-local}}"

if [[ ! -f "$SIF" ]]; then
    echo "align-bench: no image at $SIF; run \`make image\` in $REPO or set BENCH_SIF" >&2
    exit 2
fi
mkdir -p "$HF_HOME" "$BENCH_RUNS" "$BENCH_CACHE" "$REPO/leaderboards"

# bench_container CMD...: run CMD in the project directory inside the image, with the GPUs (--nv)
# and the host's state bound at the same paths: the Hugging Face cache, the runs and the model
# cache, and the checkout's leaderboards/ (committed records in, rendered leaderboards out).
# Set BENCH_NV= (empty) on a node without GPUs, e.g. the login node.
bench_container() {
    local -a nv=()
    if [[ -n "${BENCH_NV---nv}" ]]; then nv=("${BENCH_NV---nv}"); fi
    # Gated models: the token goes in through the environment, never on a command line (argv is
    # world-readable in `ps` and /proc; the environment only to the user). Apptainer hands every
    # APPTAINERENV_X to the container as X, also where --cleanenv is the site default.
    if [[ -n "${HF_TOKEN:-}" ]]; then export APPTAINERENV_HF_TOKEN="$HF_TOKEN"; fi
    apptainer exec "${nv[@]}" \
        --bind "$HF_HOME" --bind "$BENCH_RUNS" --bind "$BENCH_CACHE" --bind "$REPO/leaderboards" \
        --env "HF_HOME=$HF_HOME" --env "BENCH_RUNS=$BENCH_RUNS" --env "BENCH_CACHE=$BENCH_CACHE" \
        --env "BENCH_LEADERBOARDS=$REPO/leaderboards" --env "HF_HUB_OFFLINE=$HF_HUB_OFFLINE" \
        --pwd /opt/align-bench \
        "$SIF" "$@"
}

# write_hostfile PATH: the DeepSpeed hostfile of this allocation, "host slots=GPUS" per node.
write_hostfile() {
    local out="$1"
    mkdir -p "$(dirname "$out")"
    scontrol show hostnames "$SLURM_JOB_NODELIST" \
        | while read -r host; do echo "$host slots=$GPUS_PER_NODE"; done > "$out.tmp"
    mv "$out.tmp" "$out"
}
