"""Command-line interface: every Make target calls one subcommand.

    bench --help
    bench base --profile default
    bench config show --profile smoke model.dtype=float16

Each stage subcommand takes ``--profile`` and trailing ``section.key=value`` overrides. Errors that
users can cause (bad config, missing base model, corrupt cache or record) print one line and exit 2,
without a traceback; set ``BENCH_DEBUG=1`` to see one.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from bench.config import ConfigError, ProfileConfig, known_profiles, load_config

# Errors a user can cause and fix; they get one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bench.data.schema import DataError
    from bench.hub_errors import HubError
    from bench.models import ModelError
    from bench.records import RecordError
    from bench.train.hf_trainer import NumericsError

    return USER_ERRORS + (ModelError, RecordError, HubError, NumericsError, DataError)


def with_config(fn, stage: str | None = None, auto_offline: bool = True):
    """Add --profile and trailing overrides; load the config; turn user errors into one line.
    With ``stage``, mark the stage done (its Make file target) after the command succeeds.
    With ``auto_offline`` (all but `fetch`), go offline when `make fetch` cached everything."""

    @click.option("--profile", "-p", default=lambda: os.environ.get("PROFILE", "default"), show_default="default",
                  help=f"profile name in configs/ ({', '.join(known_profiles())}) or a YAML path")
    @click.argument("overrides", nargs=-1)
    @functools.wraps(fn)
    def wrapper(profile: str, overrides: tuple[str, ...], **kw):
        try:
            cfg = load_config(profile, list(overrides))
            if auto_offline:
                from bench.hub_fetch import offline_by_default

                offline_by_default(cfg, progress=lambda line: click.echo(line, err=True))
            _set_threads(cfg)
            out = fn(cfg, **kw)
            if stage:
                from bench.runs import mark_stage_done

                mark_stage_done(cfg, stage)
                from bench.distributed import finish

                finish()
            return out
        except _user_errors() as e:
            if os.environ.get("BENCH_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def stage_command(stage: str):
    """A pipeline stage: ``with_config`` plus the stage's done marker."""
    return lambda fn: with_config(fn, stage)


def _set_threads(cfg: ProfileConfig) -> None:
    if cfg.profile.cpu_threads:
        import torch

        torch.set_num_threads(cfg.profile.cpu_threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """align-bench: train and score alignment methods; render leaderboards from run records."""


def run() -> None:
    """The process entry point (the ``bench`` script, ``python -m bench``): the CLI, then
    ``bench.distributed.exit_process`` (a rank of a multi-rank stage leaves without C++ teardown)."""
    from bench.distributed import exit_process

    try:
        main()
    except SystemExit as e:
        exit_process(e.code)
        raise
    exit_process(0)


@main.group()
def config() -> None:
    """Inspect profiles."""


@config.command("show")
@with_config
def config_show(cfg: ProfileConfig) -> None:
    """Print the resolved profile (after overrides) and its hash."""
    from bench.config import dump_yaml

    click.echo(f"# {cfg.source_file}  config_hash={cfg.config_hash}")
    click.echo(dump_yaml(cfg), nl=False)


@config.command("list")
def config_list() -> None:
    """List the profiles in configs/."""
    for name in known_profiles():
        click.echo(name)


@main.command(name="fetch")
@click.option("--dry-run", is_flag=True, help="only print what the profile needs from the hub")
@click.option("--no-prepare", is_flag=True, help="download the repos only; do not fill the datasets cache")
@functools.partial(with_config, auto_offline=False)
def fetch_(cfg: ProfileConfig, dry_run: bool, no_prepare: bool) -> None:
    """Download the profile's models and datasets (pinned revisions) into HF_HOME; run it where there
    is internet (the login node). Afterwards the profile's stages run offline (HF_HUB_OFFLINE=1)."""
    from bench.hub_fetch import fetch, plan_summary

    if dry_run:
        for line in plan_summary(cfg):
            click.echo(line)
        return
    fetch(cfg, progress=click.echo, prepare=not no_prepare)


def _register_data_group() -> None:
    from bench.data.cli import data

    main.add_command(data)


_register_data_group()


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@stage_command("base")
def base(cfg: ProfileConfig, force: bool) -> None:
    """Prepare the profile's base policy (convert/verify) and write its record."""
    from bench.train.prepare_base import run_base

    run_base(cfg, force=force)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@stage_command("reward")
def reward(cfg: ProfileConfig, force: bool) -> None:
    """Train the reward model (Bradley-Terry on better_response_id, TRL RewardTrainer)."""
    from bench.train.reward_cost import run_score_stage

    run_score_stage(cfg, "reward", force=force)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@stage_command("cost")
def cost(cfg: ProfileConfig, force: bool) -> None:
    """Train the cost model (Safe RLHF pairwise + sign loss)."""
    from bench.train.reward_cost import run_score_stage

    run_score_stage(cfg, "cost", force=force)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@click.option("--variant", "variants", multiple=True, help="train only this variant (repeatable; default: all)")
@stage_command("dpo")
def dpo(cfg: ProfileConfig, force: bool, variants: tuple[str, ...]) -> None:
    """Train the DPO-family variants (TRL DPOTrainer): dpo, ipo, dpo-js, ..."""
    from bench.train.dpo import run_dpo

    run_dpo(cfg, force=force, only=variants)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@stage_command("sft")
def sft(cfg: ProfileConfig, force: bool) -> None:
    """Supervised fine-tuning on demonstrations (TRL SFTTrainer); skipped without an sft section."""
    from bench.train.sft import run_sft

    run_sft(cfg, force=force)


@main.command(name="eval")
@click.option("--variant", default=None, help="score only this variant (default: every variant, base first)")
@click.option("--force", is_flag=True, help="re-score even if an up-to-date eval record exists")
@stage_command("eval")
def eval_(cfg: ProfileConfig, variant: str | None, force: bool) -> None:
    """Score every variant of the profile with the battery (refusal, preference, helpfulness)."""
    from bench.eval.battery import run_eval

    run_eval(cfg, variant=variant, force=force)


@main.command()
@click.option("--variant", default=None, help="score only this variant (default: every policy and steered variant)")
@with_config
def validate(cfg: ProfileConfig, variant: str | None) -> None:
    """Refusal rates on the validation split (harmful, benign, borderline-safe, unsafe contrast), to
    choose settings without the test split; written to runs/<profile>/validation/, never to a record."""
    from bench.eval.validation_readout import run_validation

    run_validation(cfg, variant=variant)


def _parse_seeds(seeds_arg: str) -> list[int]:
    try:
        wanted = sorted({int(x) for x in seeds_arg.replace(",", " ").split()})
    except ValueError:
        raise ConfigError(f"--seeds: not a list of integers: {seeds_arg!r}") from None
    if not wanted:
        raise ConfigError("--seeds: no seed given")
    return wanted


@main.command()
@click.option("--seeds", "seeds_arg", default=None,
              help="also each of these training seeds' leaderboards (<profile>-s<s>; space or comma separated)")
@with_config
def stale(cfg: ProfileConfig, seeds_arg: str | None) -> None:
    """Committed records of leaderboards/<profile>/ (and of each seed's with --seeds) that the profile as it
    is now would not make (what a fresh `make leaderboard` would re-run); exit 1 when there are any."""
    import dataclasses

    from bench.published import load_reported
    from bench.report.seeds import seed_profile
    from bench.stale_records import stale_records

    seeds = _parse_seeds(seeds_arg) if seeds_arg is not None else [cfg.profile.seed]
    any_stale = False
    for s in seeds:
        name = seed_profile(cfg.profile.name, s, cfg.profile.seed)
        seed_cfg = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, name=name, seed=s))
        lines = stale_records(seed_cfg, load_reported(name))
        for line in lines:
            click.echo(f"stale: {name}: {line}")
        any_stale = any_stale or bool(lines)
        if not lines:
            click.echo(f"{name}: every committed record is what the profile makes now")
    if any_stale:
        raise SystemExit(1)


@main.command(name="judge-check")
@with_config
def judge_check(cfg: ProfileConfig) -> None:
    """The profile's model judge (eval.model_judge; a GPU profile) against the labelled held-out outputs,
    beside the rules: leaderboards/<profile>/model_judge.json."""
    import json

    from bench.eval.model_judge import held_out_report
    from bench.io import atomic_write_text
    from bench.published import leaderboard_paths
    from bench.report import MODEL_JUDGE_JSON

    if cfg.eval.model_judge is None:
        raise ConfigError(f"profile '{cfg.profile.name}' names no eval.model_judge")
    report = held_out_report(cfg.eval.model_judge)
    _, assets, _ = leaderboard_paths(cfg.profile.name)
    assets.mkdir(parents=True, exist_ok=True)
    out = assets / MODEL_JUDGE_JSON
    atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    a = report["all"]
    click.echo(f"judge-check: model {a['model']['agreement']['value']:.3f}, rules {a['rules']['agreement']['value']:.3f} "
               f"(refusal vs compliance, n {a['model']['n']}, {a['model']['unparsed']} unparsed) -> {out}")


@main.command()
# Always the case now; accepted (hidden) because committed leaderboards print it in their "Reproduce" lines.
@click.option("--from-records", is_flag=True, hidden=True)
@with_config
def leaderboard(cfg: ProfileConfig, from_records: bool) -> None:
    """Render leaderboards/<profile>.md from the reported records in leaderboards/<profile>/records/
    alone (no runs/ needed). `bench publish` copies fresh records there first."""
    from bench.leaderboard import write_leaderboard

    write_leaderboard(cfg.profile.name)


@main.command()
@with_config
def publish(cfg: ProfileConfig) -> None:
    """Copy the fresh records of runs/<profile> (pruned) and the steering audit's PNG into
    leaderboards/<profile>/records/, then render leaderboards/<profile>.md (make leaderboard)."""
    from bench.leaderboard import publish as publish_leaderboard

    publish_leaderboard(cfg.profile.name)


@main.command()
@click.option("--seeds", "seeds_arg", default="0 1 2", show_default=True, help="training seeds (space or comma separated)")
@with_config
def seeds(cfg: ProfileConfig, seeds_arg: str) -> None:
    """Render leaderboards/<profile>-seeds.md: every variant's headline metrics across training seeds
    (mean, spread between seeds, per-seed verdicts vs start) from each seed's reported records.
    `make seeds` runs the missing seeds first (seed s != the profile's own is profile <profile>-s<s>)."""
    from bench.io import atomic_write_text
    from bench.published import leaderboards_root, load_reported
    from bench.report.seeds import render, seed_profile

    wanted = _parse_seeds(seeds_arg)
    names = {s: seed_profile(cfg.profile.name, s, cfg.profile.seed) for s in wanted}
    per_seed = {s: load_reported(names[s]) for s in wanted}
    out = leaderboards_root() / f"{cfg.profile.name}-seeds.md"
    assets = {s: leaderboards_root() / names[s] for s in wanted}
    atomic_write_text(out, render(cfg.profile.name, wanted, names, per_seed, assets=assets))
    click.echo(f"seeds: {out}")


@main.command()
@click.option("--against", "rev", default="HEAD", show_default=True,
              help="git revision whose committed records (leaderboards/<profile>/records/) are side a")
@click.option("--runs", "runs_root", default=None, type=click.Path(file_okay=False),
              help="runs folder holding <profile>/ for side b (default: BENCH_RUNS or ./runs)")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write the markdown here")
@with_config
def compare(cfg: ProfileConfig, rev: str, runs_root: str | None, out: str | None) -> None:
    """Do the fresh records (runs/<profile>) reach the conclusions of those committed at a revision?
    Same-row metrics against each other's intervals, and the paired verdicts vs each start."""
    from pathlib import Path

    from bench.compare import compare_runs, summary
    from bench.published import collect_records, load_committed

    a = load_committed(cfg.profile.name, rev=rev, progress=lambda line: click.echo(line, err=True))
    b = collect_records(cfg.profile.name, Path(runs_root) if runs_root else None)
    metrics, verdicts = compare_runs(a, b)
    text = "\n".join(summary(metrics, verdicts, f"records committed at {rev}", f"runs of {cfg.profile.name}"))
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n")


@main.command()
@click.option("--variant", default=None, help="verify only this variant (its training and eval records)")
@click.option("--rescore", is_flag=True, help="re-score even when runs/ has up-to-date eval records")
@with_config
def verify(cfg: ProfileConfig, variant: str | None, rescore: bool) -> None:
    """Re-score and compare runs/<profile> with the records committed in git (HEAD) under
    leaderboards/<profile>/records/, within tolerances; exit 1 listing failures."""
    from bench.verify import run_verify

    checks = run_verify(cfg, variant=variant, rescore=rescore)
    if any(not c.ok for c in checks):
        sys.exit(1)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@click.option("--variant", "variants", multiple=True, help="train only this variant (repeatable; default: all)")
@stage_command("ppo")
def ppo(cfg: ProfileConfig, force: bool, variants: tuple[str, ...]) -> None:
    """Train the PPO-family variants (our loop): ppo-kl, ppo-nokl, ppo-js, ppo-lag."""
    from bench.train.ppo import run_ppo

    run_ppo(cfg, force=force, only=variants)


@main.command()
@click.option("--force", is_flag=True, help="re-run even if a record with the same config hash exists")
@stage_command("steer")
def steer(cfg: ProfileConfig, force: bool) -> None:
    """Refusal directions, steered variants (steer-ablate, steer-add) and the layerwise audit."""
    from bench.steer.recipe import run_steer

    run_steer(cfg, force=force)


@main.command()
@click.option("--repeats", "-n", default=3, show_default=True, type=click.IntRange(min=1),
              help="timed repeats of every measured unit (after one untimed warm-up)")
@click.option("--quick", is_flag=True, help="tiny sizes, 1 repeat, units in-process (tests; use with --profile smoke)")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="where perf[-<profile>].md/.json go (default: leaderboards/, or $BENCH_LEADERBOARDS)")
@click.option("--only", type=click.Choice(["gpu"]), default=None,
              help="run only this unit group: gpu = the GPU units, written to perf-gpu.md/.json (a GPU node)")
@click.option("--stage-records", default=None, metavar="NAME",
              help="read the stage table from the committed records of leaderboards/NAME/records/ "
                   "(e.g. default-s2) instead of runs/<profile>")
@with_config
def perf(cfg: ProfileConfig, repeats: int, quick: bool, out_dir: str | None, only: str | None,
         stage_records: str | None) -> None:
    """Performance benchmarks (make bench): stage times and memory, scoring vs lm-eval, generation,
    DPO vs TRL defaults, PPO, and GPU units where a GPU exists -> leaderboards/perf[-<profile>].md."""
    from pathlib import Path

    from bench.perf import run_perf

    run_perf(cfg, repeats=repeats, quick=quick, out_dir=Path(out_dir) if out_dir else None,
             progress=lambda line: click.echo(line, err=True), only=only, stage_records=stage_records)

