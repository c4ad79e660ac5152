"""Committed records that the profile, as it is now, would not make: what a fresh `make leaderboard` re-runs.

    bench stale --profile default                                            # leaderboards/default/records/
    bench stale --profile default --seeds "0 1 2"                            # each seed's (make stale)

A leaderboard renders from its committed records (``leaderboards/<profile>/records/``), never from the
profile. Edit ``configs/<profile>.yaml`` (a coefficient, an eval set's size, a new variant) without
regenerating, and the rendered numbers still come from the old settings while the profile beside them
says otherwise. This compares each committed record with the hash that the current profile and code give
it, through each stage's own hash function (one owner per stage), and lists what differs:

- training records (base, sft, policy answers, reward, cost, on-policy pairs, every DPO and PPO
  variant) and the steered variants: the record's ``config_hash`` against the stage's hash of the profile
  (steering's covers its policy's committed record);
- eval records: the battery's own hash (:func:`bench.eval.battery.eval_inputs`) of the profile, the test
  splits and the committed records it depends on (the scored variant, base, reward and cost models, the
  start's eval), against the record's; the line names the ``extra.inputs`` fields that differ;
- the steering audit: the checkpoints it audited against those the committed training records list (its hash
  names the checkpoints' local folders, so names are compared, not hashes);
- variants the profile names that have no committed record, and committed training records of variants
  it no longer names.

Not compared: what a record's numbers are (``bench verify`` re-runs the stages for that).
``tests/test_stale_records.py`` runs this on every committed leaderboard of the default profile, so
CI fails when the profile changes without them.
"""

from __future__ import annotations

from bench.config import ProfileConfig
from bench.records import is_eval_key, key_for


def expected_hashes(cfg: ProfileConfig) -> dict[str, str]:
    """``{variant: config hash}`` of the training records the profile makes, from each stage's own function."""
    from bench.train import dpo, onpolicy, policy_answers, ppo, prepare_base, reward_cost, sft

    out = {"base": prepare_base.config_hash(cfg)}
    if cfg.sft is not None:
        out["sft"] = sft.config_hash(cfg)
    if policy_answers.policies_of(cfg):
        out[policy_answers.NAME] = policy_answers.config_hash(cfg)
    for kind in ("reward", "cost"):
        if getattr(cfg, kind, None) is not None:
            out[kind] = reward_cost.stage_hash(cfg, kind)
    if cfg.dpo is not None:
        if any((v.rejected or cfg.dpo.rejected) == "on_policy" for v in cfg.dpo.variants.values()):
            out[onpolicy.NAME] = onpolicy.config_hash(cfg)
        out.update({name: dpo.config_hash(cfg, name) for name in cfg.dpo.variants})
    if cfg.ppo is not None:
        out.update({name: ppo.config_hash(cfg, name) for name in cfg.ppo.variants})
    return out


def _steer_hash(cfg: ProfileConfig, records: dict[str, dict]) -> str | None:
    """The steered variants' hash from the committed record of their policy (None without one)."""
    from bench.eval import refusal
    from bench.steer.recipe import variants_hash

    policy = records.get(key_for(cfg.require("steer").policy))
    if policy is None:
        return None
    return variants_hash(cfg, refusal.identity(),
                         {"variant": policy["variant"], "config_hash": policy["config_hash"]})


def _audit_lines(audit: dict, records: dict[str, dict]) -> list[str]:
    """The steering audit against the checkpoints the committed training records list (its hash names local
    folders, so the names are compared: a variant or a kept checkpoint added or dropped without re-running it)."""
    from bench.steer.audit import record_checkpoints

    table = (audit.get("extra") or {}).get("audit")
    if not isinstance(table, dict):
        return []
    have = sorted(c["name"] for c in table.get("checkpoints") or [])
    want = sorted(["base"] + [c["name"] for k, r in records.items() if not is_eval_key(k) for c in record_checkpoints(r)])
    if have == want:
        return []
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    return [f"{audit['variant']}: audits other checkpoints than the committed records list "
            f"(not audited: {', '.join(missing) or 'none'}; audited, not committed: {', '.join(extra) or 'none'})"]


def stale_records(cfg: ProfileConfig, records: dict[str, dict]) -> list[str]:
    """One line per committed record (``{key: record}`` as :func:`bench.published.load_reported` reads
    them) that the profile would not make now, and per variant it names without a record."""
    from bench.eval.battery import eval_hash, eval_inputs
    from bench.eval.inputs import load_inputs
    from bench.runs import EVAL_STAGE
    from bench.variants import classify, from_record, starting_point

    want = expected_hashes(cfg)
    steer = _steer_hash(cfg, records) if cfg.steer is not None else None
    out = []
    trained = {r["variant"]: r for k, r in records.items() if not is_eval_key(k)}
    for name, rec in sorted(trained.items()):
        kind = classify(rec)
        if kind == "audit":
            out += _audit_lines(rec, records)
            continue
        expected = steer if kind == "steered" else want.get(name)
        if kind != "steered" and name not in want:
            out.append(f"{name}: committed, but the profile has no such {rec['stage']} variant")
        elif expected is not None and rec["config_hash"] != expected:
            out.append(f"{name}: committed with config hash {rec['config_hash']}, the profile gives {expected}")
    out += [f"{name}: the profile names it, no record is committed" for name in sorted(set(want) - set(trained))]
    evals = sorted((k, r) for k, r in records.items() if is_eval_key(k))
    datasets = load_inputs(cfg)[1] if evals else None
    for _, rec in evals:
        scored = trained.get(rec["variant"])
        if scored is None:
            out.append(f"eval {rec['variant']}: no committed record of the variant it scored")
            continue
        variant = from_record(scored)
        start = starting_point(variant, cfg)
        now = eval_inputs(cfg, variant, trained.get("base"), trained.get("reward"), trained.get("cost"),
                          records.get(key_for(start, EVAL_STAGE)) if start else None, datasets=datasets)
        if eval_hash(now) != rec["config_hash"]:
            stored = (rec.get("extra") or {}).get("inputs") or {}
            fields = [f for f in sorted(set(now) | set(stored)) if now.get(f) != stored.get(f)]
            out.append(f"eval {rec['variant']}: committed with config hash {rec['config_hash']}, the profile and the "
                       f"committed records give {eval_hash(now)} (extra.inputs differ in: {', '.join(fields)})")
    return out
