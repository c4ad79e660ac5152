"""The reported records: ``leaderboards/<profile>/records/``, the source of every reported number.

    bench publish --profile default    # copy the fresh records of runs/default here, then render
    bench verify --profile default     # compare runs/default with the copies committed in git

``<variant>.json`` holds a stage record, ``eval/<variant>.json`` the battery's record of a variant
(:func:`bench.records.record_key`), each pruned of bulky fields (``extra.log_history``; the run
directory keeps the full record). Three ways in and out:

- :func:`publish_records` replaces the copies with the fresh records of ``runs/<profile>/`` (and
  copies the steering audit's PNG beside them). Only ``bench publish`` (``make leaderboard``) calls
  it: an explicit step, so the reference that verify reads is never overwritten behind its back.
- :func:`load_reported` reads the copies in the working tree: what ``bench leaderboard`` renders.
- :func:`load_committed` reads the copies as committed in git (``git show HEAD:...``): what
  ``bench verify`` compares with, so ``make leaderboard`` then ``make verify`` still compares fresh
  numbers with the committed ones. Without git (a container without the repository's history) it
  falls back to the working-tree copies and says so.

``BENCH_LEADERBOARDS`` moves ``leaderboards/`` (the tests do, as for ``bench perf``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from bench.config import REPO_ROOT
from bench.io import atomic_write_bytes, atomic_write_text
from bench.records import RecordError, read_record, record_key
from bench.report import AUDIT_PNG, JUDGE_JSON, RECORDS_DIR, SAMPLES_DIR
from bench.runs import EVAL_STAGE, iter_records, run_dir, runs_root

PRUNE_EXTRA = ("log_history",)  # bulky and not rendered; the run dir keeps the full record


def leaderboards_root() -> Path:
    """Where leaderboards live: ``leaderboards/`` of the checkout, or ``BENCH_LEADERBOARDS``."""
    return Path(os.environ.get("BENCH_LEADERBOARDS", REPO_ROOT / "leaderboards"))


def leaderboard_paths(profile: str, root: Path | None = None) -> tuple[Path, Path, Path]:
    """(markdown file, assets dir, records dir) of a profile's leaderboard."""
    root = Path(root) if root is not None else leaderboards_root()
    return root / f"{profile}.md", root / profile, root / profile / RECORDS_DIR


def prune_record(rec: dict) -> dict:
    out = copy.deepcopy(rec)
    extra = out.get("extra")
    if isinstance(extra, dict):
        for k in PRUNE_EXTRA:
            extra.pop(k, None)
    return out


def collect_records(profile: str, runs: Path | None = None) -> dict[str, dict]:
    """``{relative file name: pruned record}`` for every readable record of ``runs/<profile>``
    (the fresh side of verify, and what :func:`publish_records` copies)."""
    return {record_key(rec): prune_record(rec) for rec in iter_records(profile, runs)}


def publish_records(profile: str, runs: Path | None = None, out_root: Path | None = None) -> list[str]:
    """Replace ``leaderboards/<profile>/records/`` with the pruned records of ``runs/<profile>`` (paths
    made portable, :func:`portable_paths`), copy each scored variant's generations to ``samples/``, the
    judge's held-out agreement to ``judge.json`` and the steering audit PNG. Returns the record names."""
    recs = collect_records(profile, runs)
    if not recs:
        raise RecordError(f"no records under {Path(runs) if runs else runs_root() / profile}; "
                          f"run `make eval PROFILE={profile}`")
    _, assets, rec_dir = leaderboard_paths(profile, out_root)
    plot = None
    for rec in recs.values():
        p = (rec.get("artifacts") or {}).get("audit_plot")
        if p and Path(p).exists():
            plot = Path(p)
    sampled = _publish_samples(profile, recs, assets, runs)  # first: a missing file stops before a record changes
    _publish_judge(assets)
    rec_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(rec_dir.rglob("*.json")):
        if str(old.relative_to(rec_dir)) not in recs:
            old.unlink()
    for name, rec in sorted(recs.items()):
        if rec.get("stage") == EVAL_STAGE and rec["variant"] in sampled:
            rec["artifacts"]["generations"] = sample_path(profile, rec["variant"], assets)
        if "artifacts" in rec:
            rec["artifacts"] = portable_paths(rec["artifacts"], profile_root=Path(runs) if runs else None,
                                              profile=profile)
        text = json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n"
        path = rec_dir / name
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
    if plot is not None:
        atomic_write_bytes(assets / AUDIT_PNG, plot.read_bytes())
    return sorted(recs)


def portable_paths(value, profile_root: Path | None = None, profile: str = ""):
    """``value`` (an artifacts dict, list or string) with the machine's absolute paths made portable:
    a path under the runs folder becomes ``runs/<profile>/...``, one under the checkout becomes
    relative to it, one under the home folder starts with ``~``. Published records say where a file
    was in the layout, not on whose disk."""
    if isinstance(value, dict):
        return {k: portable_paths(v, profile_root, profile) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v, profile_root, profile) for v in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    prof = Path(profile_root) if profile_root is not None else runs_root() / profile
    for root, prefix in ((prof, f"runs/{profile}"), (REPO_ROOT, ""), (Path.home(), "~")):
        try:
            rel = Path(value).relative_to(root).as_posix()
        except ValueError:
            continue
        return f"{prefix}/{rel}".lstrip("/") if prefix != "~" else f"~/{rel}"
    return value


def sample_path(profile: str, variant: str, assets: Path) -> str:
    """Where a variant's committed generations are, relative to the checkout (the path the published
    eval record names): ``leaderboards/<profile>/samples/<variant>.jsonl``."""
    return f"{assets.parent.name}/{profile}/{SAMPLES_DIR}/{variant}.jsonl"


def _publish_samples(profile: str, recs: dict[str, dict], assets: Path, runs: Path | None) -> set[str]:
    """Copy every scored variant's ``generations.jsonl`` (prompt, answer, verdict, scores) to
    ``samples/<variant>.jsonl``: the generations behind every reported rate, committed so a reader can
    audit them; samples of variants no longer reported are removed. Returns the variants copied.
    A record of battery 2 names the file relative to its folder and the file must exist; an older
    record names an absolute path, copied when it still exists."""
    out = assets / SAMPLES_DIR
    keep, copied = set(), set()
    for rec in recs.values():
        gen = (rec.get("artifacts") or {}).get("generations")
        if rec.get("stage") != EVAL_STAGE or not gen:
            continue
        src = run_dir(profile, rec["variant"], stage=EVAL_STAGE, root=runs) / gen
        if not src.exists():
            if Path(gen).is_absolute():
                continue
            raise RecordError(f"{src}: the generations of the eval record of '{rec['variant']}' are missing; "
                              f"re-score it (bench eval --profile {profile} --variant {rec['variant']} --force)")
        dst = out / f"{rec['variant']}.jsonl"
        keep.add(dst.name)
        copied.add(rec["variant"])
        data = src.read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            atomic_write_bytes(dst, data)
    for old in sorted(out.glob("*.jsonl")) if out.exists() else []:
        if old.name not in keep:
            old.unlink()
    return copied


def _publish_judge(assets: Path) -> None:
    """``judge.json``: the refusal judge's agreement, kappa and confusion matrix on the held-out test
    split of labelled model outputs (:func:`bench.eval.judge_report.validation_report`), recomputed at each
    publish so it always describes the judge version that produced the rates."""
    from bench.eval.judge_report import held_out_report

    report = held_out_report()
    if report is not None:
        atomic_write_text(assets / JUDGE_JSON, json.dumps(report, indent=2, sort_keys=True) + "\n")


def load_reported(profile: str, out_root: Path | None = None) -> dict[str, dict]:
    """The reported records as they are in the working tree (what the leaderboard renders)."""
    _, _, rec_dir = leaderboard_paths(profile, out_root)
    if not rec_dir.exists():
        raise RecordError(f"{rec_dir}: no reported records (`bench publish --profile {profile}` copies "
                          f"the records of runs/{profile} there)")
    return {str(p.relative_to(rec_dir)): read_record(p) for p in sorted(rec_dir.rglob("*.json"))}


# =========================================================================== the committed copies


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, check=False)


def git_records(rec_dir: Path, rev: str = "HEAD") -> dict[str, dict] | None:
    """The records under ``rec_dir`` as committed at ``rev``, read with ``git show``: ``{}`` when
    ``rev`` has none there, None when ``rec_dir`` is not in a git checkout (or git is missing)."""
    probe = Path(rec_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        top = _git(probe, "rev-parse", "--show-toplevel")
    except OSError:  # no git executable
        return None
    if top.returncode != 0:
        return None
    root = Path(top.stdout.decode().strip()).resolve()
    try:
        rel = Path(rec_dir).resolve().relative_to(root).as_posix()
    except ValueError:
        return None
    if _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        return {}  # a repository without that commit (e.g. no commit yet): nothing committed
    listing = _git(root, "ls-tree", "-r", "-z", "--name-only", rev, "--", f"{rel}/")
    if listing.returncode != 0:
        raise RecordError(f"git ls-tree {rev} {rel}: {listing.stderr.decode().strip()}")
    names = sorted(n for n in listing.stdout.decode().split("\0") if n.endswith(".json"))
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            blob = _git(root, "show", f"{rev}:{name}")
            if blob.returncode != 0:
                raise RecordError(f"git show {rev}:{name}: {blob.stderr.decode().strip()}")
            path = Path(tmp) / Path(name).name
            path.write_bytes(blob.stdout)
            try:
                rec = read_record(path)  # the same checks as a record on disk
            except RecordError as e:
                raise RecordError(str(e).replace(str(path), f"{rev}:{name}")) from None
            out[name[len(rel) + 1:]] = rec
    return out


def load_committed(profile: str, out_root: Path | None = None, rev: str = "HEAD",
                   progress: Callable[[str], None] = print) -> dict[str, dict]:
    """The reported records as committed at ``rev`` (what verify compares with); the working-tree
    copies, with a note, when the leaderboards are not in a git checkout."""
    _, _, rec_dir = leaderboard_paths(profile, out_root)
    committed = git_records(rec_dir, rev)
    if committed is None:
        progress(f"verify: note: {rec_dir} is not in a git checkout; comparing with the working-tree copies "
                 f"(after `bench publish` these are the fresh records themselves)")
        return load_reported(profile, out_root)
    if not committed:
        raise RecordError(f"{rec_dir}: no records committed at {rev} (publish with `bench publish --profile "
                          f"{profile}`, review and commit them first)")
    if rec_dir.exists():
        try:
            differs = load_reported(profile, out_root) != committed
        except RecordError:
            differs = True
        if differs:
            progress(f"verify: note: {rec_dir} differs from {rev} (published, not committed); "
                     f"comparing with the records committed at {rev}")
    return committed
