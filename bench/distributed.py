"""Which process am I, and may I write? One place for the launcher variables and the one-writer rule.

What: :func:`ensure_process_group_env` makes the ``env://`` variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) describe how this process was started; :func:`rank`, :func:`world_size`,
:func:`is_main_process`, :func:`barrier` and :func:`main_process_writes` let a stage write its
records, markers and final model from rank 0 alone while the other ranks wait.

Why: ``deepspeed.comm.init_distributed()`` (called by ``deepspeed.initialize`` and so by the HF
Trainer with ``deepspeed=<json>``) needs all five variables; when one is missing it falls back to MPI
discovery and dies with ``ModuleNotFoundError: No module named 'mpi4py'``. A stage started the
documented way (``make sft PROFILE=llama2-7b-v100``, no launcher) therefore never trained. And with
several ranks, every rank used to write the same record and model folder (delete-then-rename).

How each launcher is recognised (first match wins):

- ``torchrun`` / ``deepspeed`` / ``accelerate launch`` (and anything else that sets them): RANK and
  WORLD_SIZE are set. Left as they are. The name is read from what each launcher adds:
  ``ACCELERATE_MIXED_PRECISION`` (accelerate launch), ``CROSS_RANK`` (the deepspeed launcher),
  ``TORCHELASTIC_RUN_ID`` (torchrun), else ``env``. With a world of one, missing LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT are filled in; with more, a missing one is an error that names it.
- ``mpirun`` without those: Open MPI's ``OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}`` or
  MPICH / Intel MPI's ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS`` are mapped
  (what DeepSpeed's MPI discovery does, without mpi4py).
- ``srun`` without those: a job step has ``SLURM_STEP_ID`` (the batch script itself has none, or the
  batch step's id) and ``SLURM_PROCID``; RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS (else
  SLURM_NTASKS), LOCAL_RANK = SLURM_LOCALID.
- Under MPI and srun, MASTER_ADDR is taken from the environment (``slurm/common.sh`` exports the
  first node of the allocation); on a single node it defaults to 127.0.0.1; across nodes a missing
  MASTER_ADDR is an error naming it. MASTER_PORT defaults to 29500.
- Nothing of the above (``make``, ``bench``, python): one process. RANK=0, WORLD_SIZE=1, LOCAL_RANK=0,
  MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, so DeepSpeed and torch use ``env://`` and never MPI.
  A batch script whose allocation has several tasks runs as one process too (with a warning): its
  tasks are started by ``srun``, not by the script.

A world of one (no launcher, or a launcher of one task) gets the variables only when
``set_single_process`` is true (the default): accelerate reads LOCAL_RANK as a request for a
distributed group (MULTI_CPU / MULTI_GPU of one process), so callers without DeepSpeed pass False
and stay exactly as they were.

    from bench.distributed import ensure_process_group_env, main_process_writes

    env = ensure_process_group_env()       # before the trainer (and DeepSpeed) is built
    ...
    with main_process_writes() as main:    # every rank calls it; rank 0 writes, the others wait
        if main:
            save(...)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Iterator

from bench.config import ConfigError

GROUP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_MASTER_PORT = 29500
# Slurm's step ids of the batch script, the extern step and an interactive step (SLURM_BATCH_SCRIPT,
# SLURM_EXTERN_CONT, SLURM_INTERACTIVE_STEP): no srun task layout there.
_SLURM_SPECIAL_STEPS = {"batch", "extern", "interactive", "4294967294", "4294967291", "4294967290"}

# mpirun flavours: (launcher name, rank, size, local rank, local size).
_MPI_VARS = (
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


class DistributedEnvError(ConfigError):
    """The launcher's variables do not describe a process group this process can join."""


@dataclass(frozen=True)
class ProcessGroupEnv:
    """How this process was started: its rank, the number of processes, its rank on this node, and
    the launcher recognised (torchrun, deepspeed, accelerate, env, srun, mpirun, or none)."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it), for a one-process group's store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _int(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedEnvError(f"{name}={env[name]!r} is not an integer") from None


def _launcher_name(env) -> str:
    if "ACCELERATE_MIXED_PRECISION" in env:
        return "accelerate"
    if "CROSS_RANK" in env:
        return "deepspeed"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    return "env"


def _slurm_step(env) -> bool:
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    return step is not None and step not in _SLURM_SPECIAL_STEPS and "SLURM_PROCID" in env


def _master_addr(env, single_node: bool, launcher: str) -> str:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if single_node:
        return "127.0.0.1"
    hint = " (slurm/common.sh exports the allocation's first node)" if launcher == "srun" else ""
    raise DistributedEnvError(
        f"{launcher} started this process on several nodes but MASTER_ADDR is not set: set MASTER_ADDR to "
        f"the host name or address of the node that runs rank 0{hint}, and MASTER_PORT to a free port")


def _detect(env) -> tuple[str, int, int, int, bool]:
    """(launcher, rank, world size, local rank, single node) from the environment, without writing."""
    for name, r, s, lr, ls in _MPI_VARS:
        if r in env and s in env:
            world = _int(env, s)
            local = _int(env, lr) if lr in env else 0
            single = ls in env and _int(env, ls) == world
            return name, _int(env, r), world, local, single or world == 1
    if _slurm_step(env):
        world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        nodes = env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1"))
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        return "srun", _int(env, "SLURM_PROCID"), world, local, nodes == "1"
    return "none", 0, 1, 0, True


def ensure_process_group_env(set_single_process: bool = True, env=None) -> ProcessGroupEnv:
    """Make RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT describe this process (see the
    module docstring for how each launcher is recognised) and return what was found. Idempotent.

    ``set_single_process=False``: with a world of one, leave the environment untouched (a trainer
    without DeepSpeed then stays non-distributed). ``env``: the mapping to read and write
    (``os.environ`` by default; tests pass a dict)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        missing = [v for v in GROUP_VARS if not env.get(v)]
        if missing and world == 1:
            env["LOCAL_RANK"] = env.get("LOCAL_RANK") or "0"
            env["MASTER_ADDR"] = env.get("MASTER_ADDR") or "127.0.0.1"
            env["MASTER_PORT"] = env.get("MASTER_PORT") or str(free_port())
        elif missing:
            raise DistributedEnvError(
                f"RANK={rank} WORLD_SIZE={world} are set but {', '.join(missing)} not: start the stage with "
                "torchrun, deepspeed, accelerate launch or srun, which set all of "
                f"{', '.join(GROUP_VARS)}")
        return ProcessGroupEnv(rank, world, _int(env, "LOCAL_RANK"), _launcher_name(env))

    launcher, rank, world, local, single_node = _detect(env)
    if launcher == "none" and _int_or(env.get("SLURM_NTASKS"), 1) > 1:
        print(f"bench: running as one process although this Slurm allocation has SLURM_NTASKS="
              f"{env['SLURM_NTASKS']} tasks; start the stage with srun (or a launcher) to use them", file=sys.stderr)
    if world == 1 and not set_single_process:
        return ProcessGroupEnv(0, 1, 0, launcher)
    if not 0 <= rank < world:
        raise DistributedEnvError(f"{launcher}: rank {rank} is outside a world of {world} processes")
    addr = _master_addr(env, single_node, launcher)
    port = env.get("MASTER_PORT") or str(free_port() if launcher == "none" else DEFAULT_MASTER_PORT)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
                "MASTER_ADDR": addr, "MASTER_PORT": port})
    return ProcessGroupEnv(rank, world, local, launcher)


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# ------------------------------------------------------------------------------- who am I, and wait


def is_initialized() -> bool:
    """Whether a torch.distributed process group is up in this process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _launcher_rank_world(env) -> tuple[int, int]:
    """(rank, world size) the launcher gave this process, read without writing: RANK / WORLD_SIZE
    when set, else srun's or mpirun's own variables (before :func:`ensure_process_group_env` has
    mapped them, e.g. when a stage opens its log), else (0, 1)."""
    if "RANK" in env or "WORLD_SIZE" in env:
        return _int_or(env.get("RANK"), 0), _int_or(env.get("WORLD_SIZE"), 1)
    try:
        _, r, w, _, _ = _detect(env)
    except DistributedEnvError:
        return 0, 1
    return r, w


def rank() -> int:
    """This process's global rank: the process group's when one is up, else the launcher's (RANK,
    or srun's / mpirun's variables before they are mapped), so a rank that has not joined the group
    yet already knows it must not write; else 0."""
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return _launcher_rank_world(os.environ)[0]


def world_size() -> int:
    """Number of processes: the process group's when one is up, else the launcher's (as :func:`rank`),
    else 1."""
    if is_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return _launcher_rank_world(os.environ)[1]


def is_main_process() -> bool:
    """True on rank 0, the one process that writes records, markers and final models."""
    return rank() == 0


def join_launcher_group() -> bool:
    """Join the launcher's process group now when this process is one of several ranks and no group is
    up yet (a stage that coordinates its ranks before its trainer joins them, e.g. the reward stage's
    policy answers). Without it :func:`barrier` would be a no-op there while :func:`rank` already says
    "not rank 0": rank 1 would read an artefact rank 0 had not written yet (seen in CI's 2-rank reward
    test). gloo on CPU, NCCL on the rank's GPU; accelerate, DeepSpeed and the PPO backend reuse a group
    that is up. Returns whether a group is up afterwards."""
    if is_initialized():
        return True
    if _launcher_rank_world(os.environ)[1] <= 1:
        return False
    import torch
    import torch.distributed as dist

    env = ensure_process_group_env(set_single_process=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def barrier() -> None:
    """Wait until every rank reaches this line; a no-op in a single process. Under a launcher of several
    ranks it joins the group first (:func:`join_launcher_group`)."""
    if join_launcher_group():
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Close this process's group at the end of a successful stage: a barrier (no rank leaves while
    another still talks to it), then ``destroy_process_group``. A no-op without a group.

    Why: a process that exits with a gloo group still up tears its worker threads down in static
    destructors, racing the interpreter's exit; CI saw ``terminate called without an active
    exception`` (SIGABRT on rank 0) after the reward and cost stages had written their records."""
    global _FINISHED_A_GROUP
    if not is_initialized():
        return
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    _FINISHED_A_GROUP = True


_FINISHED_A_GROUP = False  # set by finish(); read by exit_process


def exit_process(code) -> None:
    """The end of a ``bench`` process (``bench.cli.run``): after a stage that closed a process group
    (:func:`finish`), leave with ``os._exit`` once stdout, stderr and the log files are flushed, so
    that no C++ static destructor runs. Why: closing the group was not enough; gloo / c10d worker
    threads still raced the interpreter's teardown now and then (``terminate called without an
    active exception``, SIGABRT, after the records were written: CI on 2-rank reward and cost, and
    the deepspeed launcher's sft here). Every file the stage wrote is closed by then (atomic writes),
    and every rank has passed the barrier. Otherwise (one process, or no stage): a normal exit."""
    if not _FINISHED_A_GROUP:
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def broadcast_from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself without a process
    group. A collective: every rank calls it. For decisions that must be the same on every rank
    (whether a cache is hit, which checkpoint to resume)."""
    if not join_launcher_group():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_error(message: str | None) -> str | None:
    """Rank 0's error message (or None) on every rank; a no-op without a process group."""
    return broadcast_from_main(message)


@contextlib.contextmanager
def main_process_writes() -> Iterator[bool]:
    """Every rank enters; after a barrier (all ranks finished what the write depends on) the block
    runs with ``True`` on rank 0 and ``False`` elsewhere; the others then wait until rank 0 has
    finished writing. If rank 0's block fails, its error is re-raised there and every other rank
    raises :class:`RuntimeError` naming it, so no rank goes on as if the artefact existed.

        with main_process_writes() as main:
            if main:
                atomic_write_json(path, record)

    Every rank must call it the same number of times (it is a collective). Without a process group
    (one process) it only runs the block. A rank killed inside leaves the others waiting at the
    barrier until the group's timeout."""
    barrier()
    main = is_main_process()
    error: Exception | None = None
    try:
        yield main
    except Exception as e:  # KeyboardInterrupt and SystemExit pass straight through
        error = e
    message = _broadcast_error(f"{type(error).__name__}: {error}" if error is not None else None)  # rank 0's
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank {rank()}: the main process failed to write: {message}")


def remove_tree_on_main(path) -> None:
    """Delete a folder every rank shares (a stage's checkpoints once its record is written): rank 0
    alone, after a barrier (no rank still reads it), while the others wait. Every rank calls it."""
    import shutil

    with main_process_writes() as main:
        if main:
            shutil.rmtree(path, ignore_errors=True)
