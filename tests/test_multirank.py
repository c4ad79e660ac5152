"""Training stages at two ranks (gloo, CPU) against one rank (issue 24): same records, one writer.

Each case runs the smoke profile's stage twice in clean subprocesses (never the launcher variables
in the pytest process): ``bench <stage>`` as one process, and ``torchrun --nproc_per_node 2 -m bench
<stage>`` (gloo). sft also runs under the other launchers the docs name: ``accelerate launch
--multi_gpu --num_processes 2`` (see ACCELERATE_CPU_NOTE for why not ``--cpu``), the ``deepspeed``
launcher (``--num_gpus 2 --no_local_rank --module``: on a host without GPUs DeepSpeed's CPU
accelerator starts one process per slot), and two tasks of an srun job step (SLURM_* variables
only; no Slurm here, so the two processes are started by the test with what srun would set). Slow:
ZeRO-2 offload (the V100 profiles' DeepSpeed JSON) at 2 ranks under ``deepspeed`` and ``accelerate
launch --use_deepspeed``, against one process with the same JSON.

The configured ``batch_size`` x ``grad_accum`` is the global batch of an optimizer step at any world
size (``bench.train.hf_trainer.per_rank_batch``; PPO's ``rollout_prompts`` and ``mini_batch_size``
likewise, ``bench.train.ppo_backends.per_rank_section``), so both runs see the same examples in the
same steps.

What is compared, and why a tolerance: for sft, reward, cost and dpo every metric of the record
and every logged loss of the series, to rel 1e-5 / abs 1e-6. Two ranks average their gradients
with a gloo all-reduce (and the logged loss with a gather) in a different summation order than one
process's batch mean, so the last bits of fp32 differ (measured: <= 1.3e-7 absolute on the reward
and cost scores, identical sft losses under torchrun, accelerate, deepspeed and srun; <= 9.6e-7 on
the sft losses under ZeRO-2 offload). PPO at two ranks samples with noise keyed by (seed, step, global
row, position), pads prompts to the global batch, whitens over both ranks, gathers the rollout and
splits each global mini-batch between the ranks with a token-count-normalised loss, so it is compared
like the others: every metric and series value, to rel 1e-4 (its sampled tokens are equal; the logits
they are drawn from differ in the last bits between batch shapes).

One writer: rank 0's ``log.txt`` records the write, rank 1's ``log.rank1.txt`` says rank 0 wrote it,
the run folder holds exactly one ``model/`` with weights and no temp folders. Kill: SIGKILL to rank 1
after the first PPO checkpoint; the launcher ends rank 0, the run exits non-zero with no record and
no model, and the same command then resumes from the checkpoint and finishes.

    python -m pytest tests/test_multirank.py -q            # fast part: sft, reward, cost, ppo, launchers (~4 min)
    python -m pytest tests/test_multirank.py -q -m slow    # dpo, kill/resume, ZeRO-2 launchers
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
ONE, TWO = "mr1", "mr2"  # profile names of the one-rank and the two-rank runs (separate run folders)
TIMEOUT = 300


def clean_env(**extra) -> dict:
    """No launcher variables at all; the session's runs/cache folders (tests/conftest.py)."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "BENCH_RUNS", "BENCH_CACHE", "BENCH_LEADERBOARDS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1", **extra)
    return env


BIN = Path(sys.executable).parent  # the venv's launchers (accelerate, deepspeed) beside its python
DS_JSON = "configs/deepspeed/zero2_offload.json"  # the V100 profiles' (and slurm/accelerate.sbatch's DS_CONFIG)


def command(stage: str, nproc: int, profile: str, *args: str, launcher: str = "torchrun") -> list[str]:
    """The stage's command line: ``python -m bench`` for one process, else under ``launcher``."""
    bench = ["bench", stage, "--profile", "smoke", f"profile.name={profile}", *args]
    port = str(free_port())
    if nproc == 1:
        return [sys.executable, "-m", *bench]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port,
                "-m", *bench]
    if launcher == "accelerate":  # see ACCELERATE_CPU_NOTE: --multi_gpu is the form that starts nproc processes
        return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines",
                "1", "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *bench]
    if launcher == "accelerate-deepspeed":  # slurm/accelerate.sbatch's form on one node; the JSON from accelerate
        return [str(BIN / "accelerate"), "launch", "--use_deepspeed", "--deepspeed_config_file", DS_JSON,
                "--deepspeed_multinode_launcher", "standard", "--num_processes", str(nproc), "--num_machines", "1",
                "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *bench]
    if launcher == "deepspeed":  # slurm/deepspeed.sbatch's form on one node (CPU accelerator: one rank per slot)
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", port, "--no_local_rank",
                "--module", *bench]
    raise ValueError(launcher)


def run(stage: str, nproc: int, profile: str, *args: str, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    r = subprocess.run(command(stage, nproc, profile, *args, launcher=launcher), env=clean_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{stage} x{nproc} {launcher}: rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}"
    return r


def srun_env(procid: int, ntasks: int, port: str) -> dict:
    """What ``srun --ntasks <n>`` gives each task on one node (a job step; no RANK / WORLD_SIZE):
    bench.distributed maps it to the env:// variables."""
    return clean_env(SLURM_JOB_ID="4242", SLURM_JOBID="4242", SLURM_STEP_ID="0", SLURM_STEPID="0",
                     SLURM_PROCID=str(procid), SLURM_LOCALID=str(procid), SLURM_NODEID="0",
                     SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_NUM_NODES="1", SLURM_STEP_TASKS_PER_NODE=str(ntasks),
                     SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks), SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1",
                     SLURM_TASKS_PER_NODE=str(ntasks), MASTER_PORT=port)


def run_srun(stage: str, ntasks: int, profile: str, *args: str) -> list[str]:
    """``srun --ntasks <n> python -m bench <stage>`` as our detection sees it: n plain processes
    with a job step's variables. Returns each task's stderr; all must exit 0."""
    port = str(free_port())
    procs = [subprocess.Popen(command(stage, 1, profile, *args), env=srun_env(i, ntasks, port), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(ntasks)]
    outs = []
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, f"{stage} srun task {i}: rc {p.returncode}\n{out[-3000:]}\n{err[-4000:]}"
            outs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def run_dir(profile: str, variant: str) -> Path:
    from bench.runs import run_dir as rd

    return rd(profile, variant)


def record(profile: str, variant: str) -> dict:
    return json.loads((run_dir(profile, variant) / "record.json").read_text())


def assert_one_writer(profile: str, variant: str) -> None:
    d = run_dir(profile, variant)
    main_log = (d / "log.txt").read_text()
    assert main_log.count("record written") == 1 and "by rank 0" not in main_log, main_log
    assert "record written by rank 0" in (d / "log.rank1.txt").read_text()
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")], list(d.iterdir())  # no temp folders
    model = d / "model"
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()
    assert not (d / "checkpoints").exists()  # removed once (by rank 0) after the record


def assert_close(a: float, b: float, what: str) -> None:
    assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{what}: 1 rank {a} vs 2 ranks {b}"


def compare_records(one: dict, two: dict) -> None:
    assert one["config_hash"] != two["config_hash"]  # the profile names differ; everything else is equal
    assert one["metrics"].keys() == two["metrics"].keys()
    for k, m in one["metrics"].items():
        assert m["n"] == two["metrics"][k]["n"], k
        if m["value"] is not None:
            assert_close(m["value"], two["metrics"][k]["value"], k)
    s1, s2 = one["extra"].get("series"), two["extra"].get("series")
    if s1 is None:  # reward / cost keep the trainer's log history
        s1 = [h for h in one["extra"]["log_history"] if "loss" in h]
        s2 = [h for h in two["extra"]["log_history"] if "loss" in h]
    assert [r["step"] for r in s1] == [r["step"] for r in s2] and s1
    for r1, r2 in zip(s1, s2):
        assert_close(r1["loss"], r2["loss"], f"loss at step {r1['step']}")


@pytest.fixture(scope="module")
def base(smoke_base):
    """The micro Llama in the session's BENCH_CACHE, which the subprocesses share."""
    return smoke_base


# sft and dpo: 2 steps of 4 examples; reward and cost: 4 steps of 4 pairs (the smoke profile's).
STAGES = {"sft": ("sft", ()), "reward": ("reward", ()), "cost": ("cost", ()),
          "dpo": ("dpo", ("--variant", "dpo"))}


@pytest.mark.parametrize("stage", ["sft", "reward", "cost", pytest.param("dpo", marks=pytest.mark.slow)])
def test_two_ranks_give_the_records_of_one(base, stage):
    variant, args = STAGES[stage]
    run(stage, 1, ONE, *args)
    r = run(stage, 2, TWO, *args)
    assert "mpi4py" not in r.stderr
    compare_records(record(ONE, variant), record(TWO, variant))
    assert_one_writer(TWO, variant)
    marker = json.loads((run_dir(TWO, "stages") / f"{stage}.done").read_text())
    assert marker["variants"][variant] == record(TWO, variant)["config_hash"]


# ------------------------------------------------------- the other launchers the docs name (sft)

ACCELERATE_CPU_NOTE = """`accelerate launch --cpu --num_processes 2` (accelerate 1.15) starts ONE process: with --cpu,
launch_command always takes simple_launcher, which runs the script once with MASTER_ADDR / MASTER_PORT
and no RANK / WORLD_SIZE (several CPU processes need --mpirun_hostfile and an mpirun). bench therefore
runs it as a world of one, correctly. `--multi_gpu --num_processes 2` is the form that starts 2 ranks:
multi_gpu_launcher hands over to torch.distributed.run, and on a host without GPUs accelerate and the
HF Trainer pick gloo (MULTI_CPU). The docs' form adds --use_deepspeed (slurm/accelerate.sbatch)."""


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_launchers_two_ranks_give_the_records_of_one(base, launcher):
    """sft at 2 ranks under `accelerate launch --multi_gpu` and under the `deepspeed` launcher (CPU
    accelerator; --no_local_rank as in slurm/deepspeed.sbatch; no DeepSpeed JSON, so DDP over gloo)
    against 1 process: the torchrun comparison above, with each launcher's own variables."""
    profile = f"mr-{launcher}"
    run("sft", 1, ONE)
    r = run("sft", 2, profile, launcher=launcher)
    assert "mpi4py" not in r.stderr
    compare_records(record(ONE, "sft"), record(profile, "sft"))
    assert_one_writer(profile, "sft")


def test_srun_two_tasks_give_the_records_of_one(base):
    """Two tasks of an srun job step (SLURM_* only, no RANK / WORLD_SIZE) against 1 process: the
    tasks find each other through bench.distributed alone, and rank 1 knows it is rank 1 from the
    start (its log is log.rank1.txt, it never writes the record)."""
    profile = "mr-srun"
    run("sft", 1, ONE)
    errs = run_srun("sft", 2, profile)
    assert not any("mpi4py" in e for e in errs)
    compare_records(record(ONE, "sft"), record(profile, "sft"))
    assert_one_writer(profile, "sft")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate-deepspeed"])
def test_deepspeed_zero2_offload_two_ranks(base, launcher):
    """The V100 path on CPU, 2 ranks, ZeRO-2 with the optimizer offloaded to DeepSpeed's CPU Adam,
    against 1 process with the same JSON (``sft.deepspeed=``, no launcher): the `deepspeed` launcher
    with the profile's JSON (slurm/deepspeed.sbatch), and `accelerate launch --use_deepspeed
    --deepspeed_config_file` (slurm/accelerate.sbatch; accelerate's plugin engages DeepSpeed on CPU
    too: the Trainer's state is DistributedType.DEEPSPEED). Measured: losses within 1e-6 of one
    process (ZeRO's partitioned reduce sums in another order). About 35 s each, and it needs
    DeepSpeed's CPU ops built (JIT, minutes): skipped without them."""
    from test_distributed import _deepspeed_cpu_ops_ready  # the same check as the 1-process DeepSpeed test

    why = _deepspeed_cpu_ops_ready()
    if why:
        pytest.skip(why)
    ds = f"sft.deepspeed={DS_JSON}"
    run("sft", 1, "mr-ds1", ds)
    profile = f"mr-{launcher}-z2"
    r = run("sft", 2, profile, *((ds,) if launcher == "deepspeed" else ()), launcher=launcher)
    assert "mpi4py" not in r.stderr
    assert "deepspeed_shm_comm" in r.stdout + r.stderr  # DeepSpeed's comm came up (its CPU all-reduce op)
    compare_records(record("mr-ds1", "sft"), record(profile, "sft"))
    assert_one_writer(profile, "sft")


PPO_SERIES = ("reward", "cost", "lambda", "kl_ref", "kl_ref_per_token", "penalty", "entropy", "response_length",
              "truncated", "policy_loss", "value_loss", "clip_frac", "approx_kl", "vf_clip_frac", "grad_norm")


def test_ppo_two_ranks_give_the_records_of_one(base):
    """PPO-Lagrangian (reward and cost models) at 2 ranks trains what one process trains: the same
    sampled responses (noise keyed by row), the same mini-batches and token-normalised losses, so
    every metric and every logged series value agrees to float tolerance; one writer."""
    compare_ppo(ONE, TWO)


@pytest.mark.slow
def test_ppo_two_ranks_under_zero2_offload_give_the_records_of_one(base):
    """The same through a DeepSpeed engine (the V100 profiles' ZeRO-2 JSON with CPU optimiser
    offload; fp32 here): 1 process against 2 torchrun ranks."""
    compare_ppo("mrz1", "mrz2", f"ppo.deepspeed={DS_JSON}")


def compare_ppo(one_profile: str, two_profile: str, *args: str) -> None:
    for nproc, profile in ((1, one_profile), (2, two_profile)):
        for stage in ("reward", "cost"):  # skipped when the parametrized cases above already trained them
            run(stage, nproc, profile)
        run("ppo", nproc, profile, "--variant", "ppo-lag", *args)
    one, two = record(one_profile, "ppo-lag"), record(two_profile, "ppo-lag")
    assert two["metrics"]["steps"]["value"] == one["metrics"]["steps"]["value"] == 2
    assert two["metrics"]["reward_end"]["n"] == 4  # smoke: rollout_prompts 4 = 2 per rank, all gathered
    assert one["metrics"].keys() == two["metrics"].keys()
    for k, m in one["metrics"].items():
        assert m["n"] == two["metrics"][k]["n"], k
        assert math.isclose(m["value"], two["metrics"][k]["value"], rel_tol=1e-4, abs_tol=1e-5), \
            f"{k}: 1 rank {m['value']} vs 2 ranks {two['metrics'][k]['value']}"
    s1, s2 = one["extra"]["series"], two["extra"]["series"]
    assert [r["step"] for r in s1] == [r["step"] for r in s2] == [1, 2]
    for r1, r2 in zip(s1, s2):
        for k in PPO_SERIES:
            if r1[k] is None:
                assert r2[k] is None, k
                continue
            assert math.isclose(r1[k], r2[k], rel_tol=1e-4, abs_tol=1e-5), f"step {r1['step']} {k}: {r1[k]} vs {r2[k]}"
    assert_one_writer(two_profile, "ppo-lag")


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK -> pid of the launcher's worker processes (read from /proc)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(proc.name)
    return out


@pytest.mark.slow
def test_kill_one_rank_then_resume(base):
    """SIGKILL to rank 1 right after the first checkpoint of a 2-rank PPO run: non-zero exit, no
    record, no model; the same command resumes from that checkpoint and finishes."""
    profile, args = "mrkill", ("--variant", "ppo-kl", "ppo.max_steps=8")
    for stage in ("reward", "cost"):
        run(stage, 1, profile)
    d = run_dir(profile, "ppo-kl")
    proc = subprocess.Popen(command("ppo", 2, profile, *args), env=clean_env(), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed, deadline = False, time.time() + TIMEOUT
    try:
        while proc.poll() is None and time.time() < deadline:
            if any((c / "state.json").exists() for c in (d / "checkpoints").glob("step-*")):
                pids = _rank_pids(proc.pid)
                if 1 in pids:
                    os.kill(pids[1], signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "rank 1 finished before the first checkpoint appeared"
    assert proc.returncode != 0, out[-3000:]
    assert not (d / "record.json").exists() and not (d / "model").exists()
    done = sorted(p.name for p in (d / "checkpoints").glob("step-*") if (p / "state.json").exists())
    assert done and int(done[-1].split("-")[1]) < 8

    run("ppo", 2, profile, *args)
    rec = record(profile, "ppo-kl")
    assert rec["extra"]["resumed_from"] and Path(rec["extra"]["resumed_from"]).name in done
    assert [r["step"] for r in rec["extra"]["series"]] == list(range(1, 9))
    assert_one_writer(profile, "ppo-kl")
