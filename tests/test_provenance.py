"""The git state of a record: from git in a checkout, from the commit baked into the image without one.

No git runs here: ``subprocess.run`` inside ``bench.provenance`` is replaced by a fake that answers
like ``git`` outside a checkout (or in one), and the baked commit comes from a temp file and the
environment, as Apptainer.def's %setup and the Dockerfile's build args write them.
"""

from __future__ import annotations

import subprocess

import pytest

from bench import provenance

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _fake_git(monkeypatch, head: str = "", status: str = "", missing: bool = False) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(args, **kwargs):
        calls.append(list(args))
        if missing:
            raise FileNotFoundError("git")
        out = head if args[1] == "rev-parse" else status
        return subprocess.CompletedProcess(args, 0 if out or args[1] != "rev-parse" else 128, stdout=out, stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", run)
    return calls


@pytest.fixture
def no_bake(monkeypatch, tmp_path):
    for var in ("BENCH_GIT_SHA", "BENCH_GIT_DIRTY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BENCH_SOURCE_COMMIT", str(tmp_path / "SOURCE_COMMIT"))
    return tmp_path / "SOURCE_COMMIT"


def test_checkout_uses_git(monkeypatch, no_bake):
    no_bake.write_text(f"sha={OTHER}\ndirty=false\n")  # a checkout ignores what an image baked
    calls = _fake_git(monkeypatch, head=SHA + "\n", status=" M bench/cli.py\n")
    assert provenance.git_state() == {"sha": SHA, "dirty": True}
    assert [c[:2] for c in calls] == [["git", "rev-parse"], ["git", "status"]]
    _fake_git(monkeypatch, head=SHA, status="")
    assert provenance.git_state() == {"sha": SHA, "dirty": False}


@pytest.mark.parametrize("missing", [False, True], ids=["not-a-checkout", "no-git-executable"])
def test_image_reads_the_baked_file(monkeypatch, no_bake, missing):
    _fake_git(monkeypatch, missing=missing)
    no_bake.write_text(f"# written by the image build\nsha={SHA}\ndirty=true\n")
    assert provenance.git_state() == {"sha": SHA, "dirty": True, "source": "image"}
    no_bake.write_text(f"sha={SHA.upper()}\ndirty=\n")  # dirty unknown (a build from an export)
    assert provenance.git_state() == {"sha": SHA, "dirty": None, "source": "image"}


def test_environment_wins_over_the_file(monkeypatch, no_bake):
    _fake_git(monkeypatch)
    no_bake.write_text(f"sha={OTHER}\ndirty=true\n")
    monkeypatch.setenv("BENCH_GIT_SHA", SHA)
    monkeypatch.setenv("BENCH_GIT_DIRTY", "false")
    assert provenance.git_state() == {"sha": SHA, "dirty": False, "source": "image"}
    monkeypatch.delenv("BENCH_GIT_DIRTY")  # the variable's dirty flag, not the file's
    assert provenance.git_state()["dirty"] is None


@pytest.mark.parametrize("text", ["", "sha=unknown\ndirty=\n", "sha=\n", "sha=not a sha; rm -rf /\n"])
def test_no_commit_anywhere(monkeypatch, no_bake, text):
    _fake_git(monkeypatch)
    if text:
        no_bake.write_text(text)
    assert provenance.git_state() == {"sha": None, "dirty": None}


def test_provenance_block_carries_the_baked_commit(monkeypatch, no_bake):
    _fake_git(monkeypatch)
    monkeypatch.setenv("BENCH_GIT_SHA", SHA)
    monkeypatch.setattr(provenance, "hardware", lambda: {})
    prov = provenance.provenance({"model:x@main": OTHER})
    assert prov["git"] == {"sha": SHA, "dirty": None, "source": "image"}
    assert prov["hub_revisions"] == {"model:x@main": OTHER}


def test_default_file_is_in_the_project_directory():
    assert provenance.SOURCE_COMMIT_FILE == provenance.REPO_ROOT / "SOURCE_COMMIT"
