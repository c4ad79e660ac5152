"""Pins live in one place: top.in's versions are what cpu.txt locks, and v100.txt is cpu.txt with
only the torch build changed."""

from __future__ import annotations

from bench.lockfiles import REQ_DIR, TORCH_CUDA, derive_v100, parse_pins


def test_top_level_pins_are_locked():
    top = parse_pins((REQ_DIR / "top.in").read_text())
    cpu = parse_pins((REQ_DIR / "cpu.txt").read_text())
    assert "torch" in top and "trl" in top
    for name, version in top.items():
        assert cpu.get(name) == version, f"{name}: top.in {version} vs cpu.txt {cpu.get(name)}"


def test_v100_lock_is_derived_from_cpu_lock():
    cpu_text = (REQ_DIR / "cpu.txt").read_text()
    v100_text = (REQ_DIR / "v100.txt").read_text()
    assert v100_text == derive_v100(cpu_text), "run `python -m bench.lockfiles derive`"
    cpu, v100 = parse_pins(cpu_text), parse_pins(v100_text)
    assert set(cpu) == set(v100)
    assert {k for k in cpu if cpu[k] != v100[k]} == {"torch"}
    assert v100["torch"] == cpu["torch"] + "+" + TORCH_CUDA


def test_derive_replaces_only_torch():
    out = derive_v100("# c\nnumpy==2.0\ntorch==2.13.0\n")
    assert parse_pins(out) == {"numpy": "2.0", "torch": "2.13.0+cu126"}
    assert "--extra-index-url" in out


def test_parse_pins_canonicalises_names():
    assert parse_pins("Foo_Bar.baz==1.0 ; python_version>'3'\n-e .\n") == {"foo-bar-baz": "1.0"}
