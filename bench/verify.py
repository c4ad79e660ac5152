"""Reproduction check: fresh records against the committed ones, within per-metric tolerances.

    make verify PROFILE=default                      # == bench verify --profile default
    bench verify --profile default --variant dpo     # one variant (its training and eval records)
    bench verify --profile default --rescore         # re-score even when runs/ has up-to-date eval records

The committed records are ``leaderboards/<profile>/records/`` as committed in git (``HEAD``; read
with ``git show``, :func:`bench.published.load_committed`), not the working-tree copies: ``make
leaderboard`` (``bench publish``) overwrites those with the fresh records, and verify after it must
still compare with what was reported. Without git (e.g. in a container) the working-tree copies are
used, with a note. The fresh records are ``runs/<profile>/``: ``bench verify`` first brings the eval
records up to date (the battery skips variants whose eval record matches; ``--rescore`` forces it),
so after ``make`` has re-run the profile's stages the comparison covers every stage. Every committed
metric is compared with the fresh value under its tolerance in the metric catalogue
(:func:`bench.metrics.tolerance_for`); a metric or a record missing from the fresh side is a
failure too. The exit status is non-zero when anything fails, and every failing metric is listed.

:func:`compare` is a pure function of two ``{record name: record}`` dicts (tested on hand-made
records); :func:`run_verify` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench.config import ProfileConfig
from bench.metrics import tolerance_for, value_of
from bench.records import RecordError, is_eval_key, key_for


@dataclass(frozen=True)
class Check:
    record: str
    metric: str
    status: str  # "ok" | "outside" | "missing metric" | "missing record"
    committed: dict | None = None
    fresh: dict | None = None
    tolerance: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        def show(m):
            if m is None:
                return "–"
            v = value_of(m)
            s = "nan" if v is None else f"{v:.6g}"
            lo, hi = value_of(m, "ci_low"), value_of(m, "ci_high")
            return s + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")

        if self.status == "missing record":
            return f"{self.record}: record missing from the fresh run"
        return (f"{self.record} {self.metric}: {self.status}; committed {show(self.committed)}, "
                f"fresh {show(self.fresh)}; tolerance {self.tolerance}")


def compare(committed: dict[str, dict], fresh: dict[str, dict]) -> list[Check]:
    """One :class:`Check` per committed metric (and per committed record missing from ``fresh``).
    Metrics only the fresh side has are not checked (new metrics do not fail old leaderboards)."""
    checks: list[Check] = []
    for name in sorted(committed):
        crec = committed[name]
        frec = fresh.get(name)
        if frec is None:
            checks.append(Check(name, "*", "missing record"))
            continue
        for metric in sorted(crec.get("metrics") or {}):
            tol = tolerance_for(metric)
            if tol is None:
                continue
            cm = crec["metrics"][metric]
            fm = (frec.get("metrics") or {}).get(metric)
            if fm is None:
                checks.append(Check(name, metric, "missing metric", cm, None, tol.describe()))
            else:
                checks.append(Check(name, metric, "ok" if tol.accepts(cm, fm) else "outside", cm, fm, tol.describe()))
    return checks


def select(records: dict[str, dict], variant: str | None) -> dict[str, dict]:
    """The records of one variant (its own and its eval record), or all."""
    if variant is None:
        return dict(records)
    return {k: v for k, v in records.items() if k in (key_for(variant), key_for(variant, "eval"))}


def run_verify(cfg: ProfileConfig, variant: str | None = None, rescore: bool = False,
               progress: Callable[[str], None] = print) -> list[Check]:
    """Bring eval records up to date (or re-score), compare with the committed records, report."""
    from bench.eval.battery import run_eval
    from bench.published import collect_records, load_committed

    profile = cfg.profile.name
    committed = select(load_committed(profile, progress=progress), variant)
    if not committed:
        raise RecordError(f"leaderboards/{profile}/records has no record for variant '{variant}'")
    for name in sorted(r["variant"] for k, r in committed.items() if is_eval_key(k)):
        try:
            status = run_eval(cfg, variant=name, force=rescore, progress=progress)
            progress(f"verify: {name}: {status.get(name)}")
        except RecordError as e:  # the variant is not in runs/: reported as a missing record below
            progress(f"verify: {name}: cannot score ({e})")
    fresh = select(collect_records(profile), variant)
    checks = compare(committed, fresh)
    bad = [c for c in checks if not c.ok]
    hw_c = {str((r.get("provenance") or {}).get("hardware")) for r in committed.values()}
    hw_f = {str((r.get("provenance") or {}).get("hardware")) for r in fresh.values()}
    if hw_f and hw_c != hw_f:
        progress("verify: note: the fresh records come from other hardware than the committed ones; "
                 "log-prob tolerances assume the same machine")
    progress(f"verify: {len(checks) - len(bad)} of {len(checks)} checks within tolerance "
             f"({len(committed)} committed records)")
    for c in bad:
        progress(f"  FAIL {c.line()}")
    return checks
