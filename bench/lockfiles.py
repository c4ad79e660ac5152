"""Lock files: pins live in one place.

``requirements/top.in`` names the direct dependencies and their versions (edited by hand).
``make lock`` resolves it in a fresh CPU venv and freezes the result into ``requirements/cpu.txt``
(used by ``make setup`` and CI); ``requirements/v100.txt`` (the containers) is *derived* from
cpu.txt by swapping only the torch build for the CUDA 12.6 one, the last CUDA line of torch that
still ships Volta (sm_70) kernels. A test checks that the three agree.

    python -m bench.lockfiles derive   # rewrite v100.txt from cpu.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bench.config import REPO_ROOT

REQ_DIR = REPO_ROOT / "requirements"
TORCH_CUDA = "cu126"
TORCH_INDEX = f"https://download.pytorch.org/whl/{TORCH_CUDA}"
V100_HEADER = (
    "# GENERATED from requirements/cpu.txt by `python -m bench.lockfiles derive`; do not edit.\n"
    "# Same pins as cpu.txt except the torch build: +cu126 keeps sm_70 (V100) kernels.\n"
    f"--extra-index-url {TORCH_INDEX}\n"
)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """{canonical name: version} of every ``name==version`` line (comments/options ignored)."""
    pins = {}
    for line in text.splitlines():
        m = _PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def derive_v100(cpu_text: str) -> str:
    pins = parse_pins(cpu_text)
    if "torch" not in pins:
        raise ValueError("requirements/cpu.txt has no torch pin")
    base = pins["torch"].split("+")[0]
    lines = [V100_HEADER.rstrip("\n")]
    for line in cpu_text.splitlines():
        m = _PIN.match(line)
        if m and canonical(m.group(1)) == "torch":
            line = f"torch=={base}+{TORCH_CUDA}"
        if line.startswith("#"):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] != ["derive"]:
        print("usage: python -m bench.lockfiles derive", file=sys.stderr)
        return 2
    cpu = (REQ_DIR / "cpu.txt").read_text()
    (REQ_DIR / "v100.txt").write_text(derive_v100(cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
