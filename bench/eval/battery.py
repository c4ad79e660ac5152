"""The evaluation battery: every number the leaderboard reports about one policy variant.

    make eval PROFILE=default                 # == bench eval --profile default  (every variant)
    bench eval --profile default --variant dpo

For one variant (a checkpoint, or a steered view of a policy; see :mod:`bench.variants`), top to
bottom:

1. **Generations** (greedy, KV cache, ``eval.max_new_tokens``, ``eval.batch_size``) on the held-out
   (``test``) prompts of ``data.harmful``, ``data.benign``, ``data.borderline`` (rows labelled
   ``borderline``; ``unsafe-contrast`` rows, when present, are a separate set) and
   ``data.helpfulness``; caps ``eval.n_harmful`` / ``n_benign`` / ``n_borderline`` (0 = all).
2. **Refusal** by the versioned detector (:mod:`bench.eval.refusal`): ``refusal_harmful`` and
   ``over_refusal_benign`` / ``over_refusal_borderline`` count ``refuse`` + ``partial``; the
   ``_full`` and ``_partial`` metrics split that share; ``refusal_harmful_then_comply`` is the share
   of harmful prompts answered with a refusal followed by the requested content (counted as
   compliance). Generations and verdicts are saved as ``generations.jsonl`` beside the record (what a
   human audits; ``bench publish`` commits them under ``leaderboards/<p>/samples/``); per-category
   rates go to ``extra.by_category``. A profile that names ``eval.model_judge`` (a GPU profile) also has
   every refusal-set answer read by that model (:mod:`bench.eval.model_judge`): its reading on each row
   and both judges' rates and agreement per set in ``extra.model_judge``; the metrics stay the rules'.
3. **Preference** on held-out pairs (``data.preferences`` test split, ``dpo.pairs`` policy, cap
   ``eval.n_pairs``): response log-probs under the variant (saved as ``pair_logprobs.json``), under
   its starting point (:func:`bench.variants.starting_point`; read from the start's own eval run) and
   under the base (cached in ``runs/<p>/eval/base/cache``) -> :func:`bench.eval.preference.preference_metrics`:
   implicit accuracy and shifts against the start, and ``*_vs_base`` against the base.
4. **Helpfulness**: (a) lm-eval tasks ``eval.lm_eval_tasks`` (:mod:`bench.eval.helpfulness`);
   (b) ``rm_win_rate``: share of helpfulness prompts where the reward model scores the variant's
   greedy answer above the base's (ties count half; the base's answers are cached);
   (c) ``reward_*`` / ``cost_*``: mean RM reward and CM cost of the variant's answers on harmful and
   helpfulness prompts; (d) ``logratio_to_base``: mean over the variant's greedy helpfulness answers
   y of [log pi(y|x) - log base(y|x)] / |y|. Because y is the variant's *greedy* answer, not a
   sample from pi, this is not an unbiased estimate of KL(pi || base); it is a cheap, deterministic
   "how much more likely is my own answer under me than under the base" drift measure (0 for the
   base, >= 0 typically). (b)-(c) need ``runs/<p>/reward`` / ``runs/<p>/cost``; without them the
   metrics are left out with a note in the record.
5. **Paired tests** against the starting point (:mod:`bench.eval.paired`): ``extra.paired`` holds, per
   rate and mean, the difference, its interval and the p-value of a paired test on the same prompts
   (the leaderboard bolds only significant wins). A variant's start is scored first.

Where each step lives: the inputs, the prompts of a run and the base's caches in
:mod:`bench.eval.inputs`; the steps (variant pass with lm-eval, refusal, base reference, preference,
score models) in :mod:`bench.eval.steps`; the pure metric functions in :mod:`bench.eval.measures`;
this module decides whether a variant needs scoring (its config hash), runs the steps in order and
assembles the record.

The record is ``runs/<profile>/eval/<variant>/record.json`` (stage ``eval``, ``variant`` = the scored
variant). Its config hash covers the battery version, the detector version, the ``model``, ``data``
and ``eval`` sections, the pair policy, the lm-eval task files, and the records it depends on (the
variant's config hash and date, the base's, the RM's and CM's): scoring is skipped when a record with
the same hash exists, and a retrained variant (or a new RM) is re-scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from bench import metrics
from bench.config import ProfileConfig
from bench.eval import steps
from bench.eval.inputs import BaseCache, load_inputs, pairs_policy, plan, sha
from bench.io import atomic_write_text
from bench.records import RecordError
from bench.runs import EVAL_STAGE, find_record, is_done, stage_run, variant_lock
from bench.variants import discover, starting_point



def reference_why(variant, start: str) -> str:
    """Why a variant's reference is what it is (the record says it beside the name)."""
    if variant.kind == "steered":
        return "the same policy without steering"
    if variant.stage == "sft":
        return "SFT starts from the base model"
    return f"the policy it was initialised from ({variant.stage}.policy_init = {start}); DPO's reference (eq. 5)"

BATTERY_VERSION = "2.1.0"  # 2.1.0: cost_judge_agreement_harmful. Bump when what a metric means or how it is computed changes
GENERATIONS_FILE = steps.GENERATIONS_FILE
SECTIONS = ("model", "data", "eval")
SUMMARY = ("refusal_harmful", "over_refusal_benign", "pref_acc_implicit", "rm_win_rate")  # the progress line


# =========================================================================== what a record depends on


def _record_fingerprint(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    return {"variant": rec["variant"], "config_hash": rec["config_hash"],
            "date": (rec.get("provenance") or {}).get("date")}


def _eval_fingerprint(rec: dict | None) -> dict | None:
    return None if rec is None else {"variant": rec["variant"], "config_hash": rec["config_hash"]}


def _maybe_record(profile: str, name: str, stage: str | None = None) -> dict | None:
    try:
        return find_record(profile, name, stage)
    except RecordError:
        return None


def eval_inputs(cfg: ProfileConfig, variant, base_rec: dict | None, rm_rec: dict | None, cm_rec: dict | None,
                start_eval: dict | None = None, datasets: dict | None = None) -> dict:
    """Everything the eval record's config hash covers (also stored in the record): the variant's
    starting point's *eval* record too (``start_eval``), since the paired tests and "vs start" columns read
    its outputs. ``bench.stale_records`` calls it on committed records to see whether a record is current."""
    from bench.eval import refusal
    from bench.eval.helpfulness import LM_EVAL_GATE, task_fingerprint

    return {
        "battery_version": BATTERY_VERSION,
        "detector": refusal.identity(),
        "sections_hash": cfg.section_hash(*SECTIONS),
        "pairs_policy": pairs_policy(cfg),
        "seed": cfg.profile.seed,
        # the test splits' contents (not their paths): new rows re-score every variant
        "datasets": {k: (v or {}).get("rows_sha256") for k, v in sorted((datasets or {}).items())},
        "variant": _record_fingerprint(variant.record),
        "base": _record_fingerprint(base_rec),
        "reward": _record_fingerprint(rm_rec),
        "cost": _record_fingerprint(cm_rec),
        # the start's eval by its inputs' hash, not its date: a re-scored start with the same inputs gives
        # the same greedy outputs, so the variants that start there need not be re-scored
        "start": _eval_fingerprint(start_eval),
        "lm_eval_tasks": task_fingerprint(list(cfg.eval.lm_eval_tasks)) if cfg.eval.lm_eval_tasks else {},
        # a gated variant's lm-eval decides its gate per document (issue 22): only its hash moves
        **({"lm_eval_gate": LM_EVAL_GATE} if cfg.eval.lm_eval_tasks and getattr(variant, "gated", False) else {}),
    }


def eval_hash(inputs: dict) -> str:
    return sha(inputs)[:16]


# =========================================================================== one variant


def score_variant(cfg: ProfileConfig, variant, force: bool = False, progress: Callable[[str], None] = print,
                  inputs: tuple[dict, dict] | None = None) -> dict | None:
    """Run the battery on one evaluable variant and write its eval record. Returns the record's
    metrics, or None when an up-to-date record exists (and ``force`` is off)."""
    profile = cfg.profile.name
    base_rec = _maybe_record(profile, "base")
    if base_rec is None:
        raise RecordError(f"profile '{profile}' has no base record (run `make base PROFILE={profile}`)")
    scorers = {"reward": _maybe_record(profile, "reward"), "cost": _maybe_record(profile, "cost")}
    start = starting_point(variant, cfg)
    inputs = inputs or load_inputs(cfg)
    start_eval = _maybe_record(profile, start, EVAL_STAGE) if start else None
    meta = eval_inputs(cfg, variant, base_rec, scorers["reward"], scorers["cost"], start_eval, datasets=inputs[1])
    chash = eval_hash(meta)
    if not force and is_done(cfg, variant.name, chash, stage=EVAL_STAGE):
        progress(f"eval {variant.name}: up to date")
        return None
    run_plan = plan(cfg, inputs, meta["base"])
    s = steps.Scoring(cfg, variant, run_plan, base_dir=Path(base_rec["artifacts"]["model_dir"]),
                      cache=BaseCache(profile))
    start_out = steps.load_start(s, start)  # before any work: a missing start fails at once
    with stage_run(cfg, variant=variant.name, stage=EVAL_STAGE, config_hash=chash) as run:
        run.datasets = run_plan.idents
        progress(f"eval {variant.name}: {len(run_plan.prompts)} generations, {len(run_plan.pairs)} pairs"
                 + (f", lm-eval {', '.join(cfg.eval.lm_eval_tasks)}" if cfg.eval.lm_eval_tasks else ""))
        out, reusable = steps.variant_pass(s)  # inside the variant's steering context when steered
        refusal_rows = steps.refusal_step(s, out)
        ref_pairs, base_help = steps.base_reference(s, out, reusable)
        del reusable
        steps.model_judge_step(s, refusal_rows)  # after the policies are released: the judge may be a 7B
        steps.preference_step(s, out, ref_pairs, start_out)
        help_rows = steps.helpfulness_rows(s, out, base_help)
        harm_rows = [r for r in refusal_rows if r["set"] == "refusal_harmful"]
        for kind, rec in scorers.items():
            steps.score_model_step(s, kind, rec, harm_rows, help_rows)
        steps.paired_step(s, out, refusal_rows + help_rows, start_out)
        s.extra["reference"] = {"variant": start, "why": reference_why(variant, start)} if start else None
        _fill_record(run, s, meta, refusal_rows + help_rows, out.pairs)
    _release_memory()
    summary = ", ".join(f"{k}={s.metrics[k]['value']:.3f}" for k in SUMMARY
                        if k in s.metrics and not math.isnan(s.metrics[k]["value"]))
    progress(f"eval {variant.name}: {summary or 'done'}")
    return s.metrics


def _fill_record(run, s: steps.Scoring, meta: dict, rows: list[dict], pairs) -> None:
    """The eval record: sorted metrics, ``generations.jsonl`` (what a human audits) and the per-pair
    log-probs (the reference of the variants that start here) beside it, and in ``extra`` the inputs
    the hash covers, what was scored, set sizes, notes and timings. ``artifacts.generations`` is
    relative to the record's folder (``bench publish`` commits the file under ``samples/``)."""
    v = s.variant
    uncatalogued = metrics.unknown(s.metrics)
    if uncatalogued:  # every reported number has a definition, a direction and a tolerance
        raise ValueError(f"battery metric(s) {', '.join(uncatalogued)} are not in the catalogue (bench/metrics.py)")
    gen_path = run.dir / GENERATIONS_FILE
    atomic_write_text(gen_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_text(run.dir / steps.PAIR_LOGPROBS_FILE,
                      json.dumps({"key": s.plan.pairs_key, "value": pairs.to_dict()}, sort_keys=True) + "\n")
    run.metrics = {k: s.metrics[k] for k in sorted(s.metrics)}
    run.artifacts = {"generations": GENERATIONS_FILE, "scored_variant": v.name}
    run.extra.update(s.extra)
    run.extra.update({
        "detector": meta["detector"], "battery_version": BATTERY_VERSION, "inputs": meta,
        "scored": {"variant": v.name, "stage": v.stage, "kind": v.kind, "config_hash": v.config_hash},
        "n": {k: len(rows) for k, rows in sorted(s.plan.sets.items())}, "notes": s.notes, "timings": s.timings,
    })
    for n in s.notes:
        run.log.info("note: %s", n)


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# =========================================================================== every variant


def run_eval(cfg: ProfileConfig, variant: str | None = None, force: bool = False,
             progress: Callable[[str], None] = print) -> dict[str, str]:
    """Score every evaluable variant of the profile (base first), or only ``variant``. Returns
    ``{variant: "scored" | "up to date"}``."""
    variants = discover(cfg.profile.name)
    if not any(v.name == "base" for v in variants):
        raise RecordError(f"profile '{cfg.profile.name}' has no base record (run `make base PROFILE={cfg.profile.name}`)")
    if variant is not None:
        match = [v for v in variants if v.name == variant]
        if not match:
            raise RecordError(f"no variant '{variant}' in runs/{cfg.profile.name} "
                              f"(known: {', '.join(v.name for v in variants)})")
        if not match[0].evaluable:
            raise RecordError(f"variant '{variant}' is a {match[0].kind} record, not a policy: the battery does "
                              f"not score it (score models are in the leaderboard's RM/CM table)")
        targets = _with_starts(match[0], variants, cfg)
    else:
        targets = [v for v in variants if v.evaluable]
    status: dict[str, str] = {}
    inputs = load_inputs(cfg) if targets else None
    for v in targets:
        # Per-variant lock: a concurrent `make eval` waits here, then finds this variant up to date.
        with variant_lock(cfg.profile.name, v.name, stage=EVAL_STAGE):
            # --force re-scores what was asked for; its starting points only when they are out of date
            out = score_variant(cfg, v, force=force and (variant is None or v is targets[-1]),
                                progress=progress, inputs=inputs)
        status[v.name] = "up to date" if out is None else "scored"
    return status


def _with_starts(v, variants: list, cfg: ProfileConfig) -> list:
    """``v`` preceded by its chain of starting points (base, sft, ...): each is scored first when its
    record is not up to date, since ``v``'s paired tests read their outputs."""
    by_name = {x.name: x for x in variants}
    chain = [v]
    while (start := starting_point(chain[0], cfg)) is not None:
        if start not in by_name or by_name[start] in chain:
            raise RecordError(f"variant '{chain[0].name}' starts from '{start}', which has no record in "
                              f"runs/{cfg.profile.name} (run `make {start}`)")
        chain.insert(0, by_name[start])
    return chain
