"""``bench data``: inspect and check the datasets a profile uses.

    bench data stats --profile default        # rows per split and category, for every role
    bench data validate --profile default     # load every role/split strictly; check cross-split disjointness

``stats`` honours the profile's ``on_invalid`` and caps; ``validate`` always loads with
``on_invalid: error`` and no caps, so it reports the first bad row (file, line, field).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter

import click

from bench.config import ConfigError, ProfileConfig, load_config

SPLIT_ORDER = ("train", "validation", "test")


def _load_cfg(profile: str, overrides: tuple[str, ...]) -> ProfileConfig:
    return load_config(profile, list(overrides))


def _fail(e: Exception) -> None:
    if os.environ.get("BENCH_DEBUG"):
        raise e
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


def _pair_summary(rows: list[dict]) -> str:
    if not rows or "is_response_0_safe" not in rows[0]:
        return ""
    both = sum(r["is_response_0_safe"] and r["is_response_1_safe"] for r in rows)
    none = sum(not r["is_response_0_safe"] and not r["is_response_1_safe"] for r in rows)
    one = len(rows) - both - none
    agree = sum(r["better_response_id"] == r["safer_response_id"] for r in rows)
    return f"both safe {both}, one safe {one}, both unsafe {none}; better == safer in {agree}/{len(rows)}"


def stats_text(cfg: ProfileConfig) -> str:
    """The ``bench data stats`` report as text (also used by tests)."""
    from bench.data import ROLES, load_role, row_categories

    lines = [f"profile {cfg.profile.name} ({cfg.source_file}); on_invalid={cfg.data.on_invalid}, "
             f"max_train={cfg.data.max_train}, max_eval={cfg.data.max_eval}"]
    for role in ROLES:
        loaded = {s: load_role(cfg.data, role, s) for s in SPLIT_ORDER}
        first = loaded["train"].identity
        origin = first.get("hub_id") or ", ".join(f["path"].replace("train", "{split}") for f in first.get("files", [])[:1])
        lines.append("")
        lines.append(f"{role}: {first['name']} (schema {first['schema']}; {first['origin']}: {origin})")
        counts = {s: Counter(c for r in ds.rows for c in row_categories(r)) for s, ds in loaded.items()}
        labels = {s: Counter(r.get("label") for r in ds.rows if r.get("label")) for s, ds in loaded.items()}
        cats = sorted(set().union(*counts.values()))
        width = max([len("category"), *(len(c) for c in cats)]) + 2
        lines.append("  " + "split".ljust(width) + "".join(s.rjust(12) for s in SPLIT_ORDER))
        lines.append("  " + "rows".ljust(width) + "".join(str(len(loaded[s])).rjust(12) for s in SPLIT_ORDER))
        lines.append("  " + "skipped".ljust(width) + "".join(str(loaded[s].identity["skipped"]).rjust(12) for s in SPLIT_ORDER))
        if any(labels.values()):
            for lab in sorted(set().union(*labels.values())):
                lines.append("  " + f"label={lab}".ljust(width) + "".join(str(labels[s][lab]).rjust(12) for s in SPLIT_ORDER))
        lines.append("  " + "category".ljust(width))
        for c in cats:
            lines.append("    " + c.ljust(width - 2) + "".join(str(counts[s][c]).rjust(12) for s in SPLIT_ORDER))
        for s in SPLIT_ORDER:
            summ = _pair_summary(loaded[s].rows)
            if summ:
                lines.append(f"  {s}: {summ}")
    return "\n".join(lines)


def validate_report(cfg: ProfileConfig) -> tuple[list[str], list[str]]:
    """Load every role and split strictly (no caps, on_invalid=error) and check that no prompt of a
    held-out split (validation, test) of any role occurs in the train split of any role.
    Returns (report lines, problems)."""
    from bench.data import ROLES, DataError, load_role, prompt_key

    data = dataclasses.replace(cfg.data, on_invalid="error", max_train=0, max_eval=0)
    lines, problems = [], []
    keys: dict[tuple[str, str], set[str]] = {}
    for role in ROLES:
        for split in SPLIT_ORDER:
            try:
                ds = load_role(data, role, split)
            except DataError as e:
                problems.append(str(e))
                lines.append(f"FAIL {role}/{split}: {e}")
                continue
            keys[(role, split)] = {prompt_key(r) for r in ds.rows}
            lines.append(f"ok   {role}/{split}: {ds.identity['name']} {len(ds)} rows")
    for (r1, s1), k1 in keys.items():
        if s1 != "train":
            continue
        for (r2, s2), k2 in keys.items():
            if s2 == "train":
                continue
            shared = k1 & k2
            if shared:
                msg = (f"{len(shared)} prompt(s) of {r2}/{s2} also occur in {r1}/train, e.g. "
                       f"{sorted(shared)[0][:80]!r}")
                problems.append(msg)
                lines.append(f"FAIL {msg}")
    return lines, problems


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Inspect and check the datasets a profile uses."""


@data.command("stats")
@click.option("--profile", "-p", default=lambda: os.environ.get("PROFILE", "default"), show_default="default",
              help="profile name in configs/ or a YAML path")
@click.argument("overrides", nargs=-1)
def stats(profile: str, overrides: tuple[str, ...]) -> None:
    """Rows per split and category for every data role of the profile."""
    from bench.data import DataError

    try:
        click.echo(stats_text(_load_cfg(profile, overrides)))
    except (ConfigError, DataError) as e:
        _fail(e)


@data.command("validate")
@click.option("--profile", "-p", default=lambda: os.environ.get("PROFILE", "default"), show_default="default",
              help="profile name in configs/ or a YAML path")
@click.argument("overrides", nargs=-1)
def validate(profile: str, overrides: tuple[str, ...]) -> None:
    """Load every role and split strictly and check that held-out prompts never occur in train."""
    from bench.data import DataError

    try:
        lines, problems = validate_report(_load_cfg(profile, overrides))
    except (ConfigError, DataError) as e:
        _fail(e)
        return
    click.echo("\n".join(lines))
    if problems:
        click.echo(f"error: {len(problems)} problem(s)", err=True)
        sys.exit(2)
    click.echo("all data valid; held-out splits disjoint from train")


if __name__ == "__main__":
    data()
