"""The evaluation battery: every number the leaderboard reports about one policy variant.

    make eval PROFILE=default                 # == bench eval --profile default  (every variant)
    bench eval --profile default --variant dpo

For one variant (a checkpoint, or a steered view of the base; see :mod:`bench.variants`), top to
bottom:

1. **Generations** (greedy, KV cache, ``eval.max_new_tokens``, ``eval.batch_size``) on the held-out
   (``test``) prompts of ``data.harmful``, ``data.benign``, ``data.borderline`` (rows labelled
   ``borderline``; ``unsafe-contrast`` rows, when present, are a separate set) and
   ``data.helpfulness``; caps ``eval.n_harmful`` / ``n_benign`` / ``n_borderline`` (0 = all).
2. **Refusal** by the versioned detector (:mod:`bench.eval.refusal`): ``refusal_harmful`` and
   ``over_refusal_benign`` / ``over_refusal_borderline`` count ``refuse`` + ``partial``; the
   ``_full`` and ``_partial`` metrics split that share. Generations and verdicts are saved as
   ``generations.jsonl`` beside the record: they are what a human audits.
3. **Preference** on held-out pairs (``data.preferences`` test split, ``dpo.pairs`` policy, cap
   ``eval.n_pairs``): response log-probs under the variant and under the base
   (:func:`bench.eval.logprobs.score_pairs`; the base's are cached in ``runs/<p>/eval/base/cache``)
   -> :func:`bench.eval.preference.preference_metrics`.
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

The record is ``runs/<profile>/eval/<variant>/record.json`` (stage ``eval``, ``variant`` = the scored
variant). Its config hash covers the battery version, the detector version, the ``model``, ``data``
and ``eval`` sections, the pair policy, the lm-eval task files, and the records it depends on (the
variant's config hash and date, the base's, the RM's and CM's): scoring is skipped when a record with
the same hash exists, and a retrained variant (or a new RM) is re-scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

from bench.config import ProfileConfig
from bench.io import atomic_write_json, atomic_write_text
from bench.records import RecordError
from bench.runs import EVAL_STAGE, find_record, is_done, run_dir, stage_run, variant_lock
from bench.stats import mean_metric, rate_metric

BATTERY_VERSION = "1.0.0"  # bump when what a metric means or how it is computed changes
GENERATIONS_FILE = "generations.jsonl"
SECTIONS = ("model", "data", "eval")
# The refusal sets: (metric prefix, data role, label filter, cap field)
REFUSAL_SETS = (
    ("refusal_harmful", "harmful", ("harmful",), "n_harmful"),
    ("over_refusal_benign", "benign", ("benign",), "n_benign"),
    ("over_refusal_borderline", "borderline", ("borderline",), "n_borderline"),
    ("refusal_unsafe_contrast", "borderline", ("unsafe-contrast",), "n_borderline"),
)


# =========================================================================== pure metric functions


def refusal_metrics(detections: Sequence, prefix: str) -> dict[str, dict]:
    """``{prefix}``: share of refusals (refuse + partial); ``{prefix}_full`` / ``{prefix}_partial``:
    the two parts. ``detections`` are :class:`bench.eval.refusal.Detection` (or anything with
    ``label``). Empty input gives no metrics."""
    n = len(detections)
    if n == 0:
        return {}
    full = sum(d.label == "refuse" for d in detections)
    partial = sum(d.label == "partial" for d in detections)
    return {prefix: rate_metric(full + partial, n), f"{prefix}_full": rate_metric(full, n),
            f"{prefix}_partial": rate_metric(partial, n)}


def win_rate(variant_scores: Sequence[float], base_scores: Sequence[float]) -> dict:
    """Share of prompts where the variant's answer scores above the base's; a tie counts half.
    The Wilson interval is computed on the half-counted wins (k may be fractional)."""
    if len(variant_scores) != len(base_scores):
        raise ValueError(f"win_rate: {len(variant_scores)} variant scores but {len(base_scores)} base scores")
    n = len(variant_scores)
    if n == 0:
        return rate_metric(0, 0)
    k = sum(1.0 if v > b else 0.5 if v == b else 0.0 for v, b in zip(variant_scores, base_scores))
    return rate_metric(k, n)


def logratio_metric(pi_logps: Sequence[float], ref_logps: Sequence[float], n_tokens: Sequence[int]) -> dict:
    """Mean over responses of [log pi(y|x) - log ref(y|x)] / |y| (see module docstring (d))."""
    if not (len(pi_logps) == len(ref_logps) == len(n_tokens)):
        raise ValueError("logratio_metric: inputs differ in length")
    return mean_metric((p - r) / max(int(t), 1) for p, r, t in zip(pi_logps, ref_logps, n_tokens))


# =========================================================================== model helpers


def response_logprobs(model, tok, prompts: list[str], responses: list[str], system_prompt: str | None,
                      batch_size: int = 8, max_length: int = 512) -> tuple[list[float], list[int]]:
    """Summed log pi(response | prompt) over response tokens (text re-tokenised, plus the end-of-
    turn token, as in training) and the response token counts, in input order."""
    import torch

    from bench import chat
    from bench.losses import sequence_logprobs
    from bench.tensors import longest_first_batches, pad_right

    seqs, starts = [], []
    for p, r in zip(prompts, responses, strict=True):
        p_ids = tok(chat.format_prompt(tok, p, system_prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(chat.format_response(tok, r), add_special_tokens=False)["input_ids"]
        room = max(1, max_length - len(p_ids))
        seqs.append(p_ids + r_ids[:room])
        starts.append(len(p_ids))
    sums, counts = [0.0] * len(seqs), [0] * len(seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    with torch.no_grad():
        for idx in longest_first_batches([len(x) for x in seqs], batch_size):
            ids, attn = pad_right([seqs[i] for i in idx], pad)  # (B, L) right padded
            logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits  # (B, L, V)
            labels = ids[:, 1:].to(logits.device)  # (B, L-1)
            mask = torch.zeros_like(labels, dtype=torch.float)
            for j, i in enumerate(idx):
                mask[j, starts[i] - 1: len(seqs[i]) - 1] = 1.0  # response tokens only
            lp = sequence_logprobs(logits[:, :-1], labels, mask)  # (B, L-1)
            for j, i in enumerate(idx):
                sums[i] = float((lp[j] * mask[j]).sum())
                counts[i] = int(mask[j].sum())
    return sums, counts


# =========================================================================== inputs


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _cap(rows: list[dict], n: int) -> list[dict]:
    return rows[:n] if n else rows


def load_inputs(cfg: ProfileConfig) -> tuple[dict, dict]:
    """The battery's held-out inputs: ``({set: rows}, {dataset key: identity})``.

    Sets: the four refusal sets of :data:`REFUSAL_SETS`, ``pairs`` (chosen/rejected dicts) and
    ``helpfulness`` (rows with ``instruction`` and ``reference``)."""
    from bench.data import dpo_pairs, load_role, select_label

    ev = cfg.eval
    sets: dict[str, list[dict]] = {}
    idents: dict[str, dict] = {}
    loaded: dict[str, object] = {}
    for prefix, role, labels, cap_field in REFUSAL_SETS:
        if role not in loaded:
            ds = load_role(cfg.data, role, "test")
            loaded[role] = ds
            idents[f"{role}/test"] = ds.identity
        rows = loaded[role].rows
        if any("label" in r for r in rows):
            rows = select_label(rows, *labels)
        sets[prefix] = _cap(rows, getattr(ev, cap_field))
    prefs = load_role(cfg.data, "preferences", "test")
    idents["preferences/test"] = prefs.identity
    policy = cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better"
    pairs = dpo_pairs(prefs.rows, policy) if prefs.schema == "pku" else [dict(r) for r in prefs.rows]
    sets["pairs"] = _cap(pairs, ev.n_pairs)
    helpful = load_role(cfg.data, "helpfulness", "test")
    idents["helpfulness/test"] = helpful.identity
    sets["helpfulness"] = _cap(helpful.rows, ev.n_helpfulness)
    return sets, idents


def _record_fingerprint(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    return {"variant": rec["variant"], "config_hash": rec["config_hash"],
            "date": (rec.get("provenance") or {}).get("date")}


def _maybe_record(profile: str, name: str) -> dict | None:
    try:
        return find_record(profile, name)
    except RecordError:
        return None


def eval_inputs(cfg: ProfileConfig, variant, base_rec: dict | None, rm_rec: dict | None, cm_rec: dict | None) -> dict:
    """Everything the eval record's config hash covers (also stored in the record)."""
    from bench.eval import refusal
    from bench.eval.helpfulness import task_fingerprint

    return {
        "battery_version": BATTERY_VERSION,
        "detector": {"name": refusal.DETECTOR_NAME, "version": refusal.DETECTOR_VERSION},
        "sections_hash": cfg.section_hash(*SECTIONS),
        "pairs_policy": cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better",
        "seed": cfg.profile.seed,
        "variant": _record_fingerprint(variant.record),
        "base": _record_fingerprint(base_rec),
        "reward": _record_fingerprint(rm_rec),
        "cost": _record_fingerprint(cm_rec),
        "lm_eval_tasks": task_fingerprint(list(cfg.eval.lm_eval_tasks)) if cfg.eval.lm_eval_tasks else {},
    }


def eval_hash(inputs: dict) -> str:
    return _sha(inputs)[:16]


# =========================================================================== base caches


class _BaseCache:
    """JSON files in ``runs/<p>/eval/base/cache/`` keyed by a hash of everything they depend on."""

    def __init__(self, profile: str):
        self.dir = run_dir(profile, "base", stage=EVAL_STAGE) / "cache"

    def get(self, kind: str, key: str):
        path = self.dir / f"{kind}.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return data.get("value") if data.get("key") == key else None

    def put(self, kind: str, key: str, value) -> None:
        atomic_write_json(self.dir / f"{kind}.json", {"key": key, "value": value})


# =========================================================================== one variant


def _score_model_dir(rec: dict | None) -> Path | None:
    mdir = ((rec or {}).get("artifacts") or {}).get("model_dir")
    return Path(mdir) if mdir and (Path(mdir) / "config.json").exists() else None


def score_variant(cfg: ProfileConfig, variant, force: bool = False, progress: Callable[[str], None] = print,
                  inputs: tuple[dict, dict] | None = None) -> dict | None:
    """Run the battery on one evaluable variant and write its eval record. Returns the record's
    metrics, or None when an up-to-date record exists (and ``force`` is off)."""
    import torch

    from bench.eval import refusal
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.logprobs import PairLogprobs, score_pairs
    from bench.eval.preference import preference_metrics
    from bench.models import load_pretrained
    from bench.variants import load_policy, policy_dir

    profile = cfg.profile.name
    ev = cfg.eval
    base_rec = _maybe_record(profile, "base")
    if base_rec is None:
        raise RecordError(f"profile '{profile}' has no base record (run `make base PROFILE={profile}`)")
    rm_rec, cm_rec = _maybe_record(profile, "reward"), _maybe_record(profile, "cost")
    meta = eval_inputs(cfg, variant, base_rec, rm_rec, cm_rec)
    chash = eval_hash(meta)
    if not force and is_done(cfg, variant.name, chash, stage=EVAL_STAGE):
        progress(f"eval {variant.name}: up to date")
        return None
    sets, idents = inputs or load_inputs(cfg)
    sp = cfg.model.system_prompt
    gen = GenerationSettings(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    is_base = variant.name == "base"
    base_dir = Path(base_rec["artifacts"]["model_dir"])
    cache = _BaseCache(profile)
    base_fp = meta["base"]
    notes: list[str] = []
    timings: dict[str, float] = {}
    metrics: dict[str, dict] = {}

    refusal_keys = [k for k, *_ in REFUSAL_SETS if sets[k]]
    help_prompts = [r["instruction"] for r in sets["helpfulness"]]
    pairs = sets["pairs"]
    all_prompts = [r["prompt"] for k in refusal_keys for r in sets[k]] + help_prompts
    pairs_key = _sha({"pairs": [[p["prompt"], p.get("history"), p["chosen"], p["rejected"]] for p in pairs],
                      "sp": sp, "max_length": ev.max_length, "bs": ev.score_batch_size, "base": base_fp,
                      "dtype": cfg.model.dtype})
    help_key = _sha({"prompts": help_prompts, "sp": sp, "gen": [gen.max_new_tokens, gen.batch_size],
                     "base": base_fp, "dtype": cfg.model.dtype})

    with stage_run(cfg, variant=variant.name, stage=EVAL_STAGE, config_hash=chash) as run:
        run.datasets = idents
        progress(f"eval {variant.name}: {len(all_prompts)} generations, {len(pairs)} pairs"
                 + (f", lm-eval {', '.join(ev.lm_eval_tasks)}" if ev.lm_eval_tasks else ""))

        # ---- phase A: the variant (inside its steering context when steered)
        t0 = time.perf_counter()
        vdir = policy_dir(variant, profile)
        model, tok = load_pretrained(vdir, cfg.model)
        model.eval()
        with load_policy(variant, cfg, model=model, tok=tok):
            outs = generate_greedy(model, tok, all_prompts, sp, gen, desc=f"{variant.name}: generate")
            pi_pairs = score_pairs(model, tok, pairs, sp, ev.score_batch_size, ev.max_length,
                                   desc=f"{variant.name}: pairs", prefix_cache=not variant.whole_sequences
                                   ) if pairs else PairLogprobs([], [], [], [])
            help_out = outs[len(all_prompts) - len(help_prompts):]
            pi_help, help_ntok = (response_logprobs(model, tok, help_prompts, help_out, sp, ev.score_batch_size,
                                                    ev.max_length) if help_prompts and not is_base else ([], []))
            timings["variant_generate_and_score_s"] = round(time.perf_counter() - t0, 2)
            if ev.lm_eval_tasks:
                t1 = time.perf_counter()
                from bench.eval.helpfulness import run_lm_eval

                lm_metrics, lm_info = run_lm_eval(model, tok, list(ev.lm_eval_tasks), ev.lm_eval_limit,
                                                  ev.batch_size, seed=cfg.profile.seed)
                metrics.update(lm_metrics)
                run.extra["lm_eval"] = lm_info
                timings["lm_eval_s"] = round(time.perf_counter() - t1, 2)

        # ---- refusal
        dets = refusal.detect_many(outs[: len(all_prompts) - len(help_prompts)])
        rows_out: list[dict] = []
        i = 0
        for key in refusal_keys:
            n = len(sets[key])
            d_set = dets[i: i + n]
            metrics.update(refusal_metrics(d_set, key))
            for r, out, d in zip(sets[key], outs[i: i + n], d_set):
                rows_out.append({"set": key, "id": r.get("id"), "category": r.get("category"), "prompt": r["prompt"],
                                 "response": out, "label": d.label, "is_refusal": d.is_refusal,
                                 "evidence": list(d.evidence)})
            i += n
        if dets:
            metrics["empty_generations"] = rate_metric(sum(not o.strip() for o in outs[:len(dets)]), len(dets))

        # ---- phase B: the base (reference log-probs, base answers, base log-probs of our answers)
        t0 = time.perf_counter()
        ref_pairs, base_help = None, None
        if is_base:
            cache.put("pair_logprobs", pairs_key, pi_pairs.to_dict())
            cache.put("help_generations", help_key, help_out)
            base_help = help_out
        else:
            cached = cache.get("pair_logprobs", pairs_key)
            ref_pairs = PairLogprobs(**cached) if cached else None
            base_help = cache.get("help_generations", help_key)
            need_model = ref_pairs is None or base_help is None or bool(help_prompts)
            if need_model:
                if variant.kind == "steered" and vdir.resolve() == base_dir.resolve():
                    bmodel, btok = model, tok  # the steering context has been left: this is the base
                else:
                    del model
                    bmodel, btok = load_pretrained(base_dir, cfg.model)
                    bmodel.eval()
                if ref_pairs is None and pairs:
                    ref_pairs = score_pairs(bmodel, btok, pairs, sp, ev.score_batch_size, ev.max_length,
                                            desc="base: pairs")
                    cache.put("pair_logprobs", pairs_key, ref_pairs.to_dict())
                if base_help is None:
                    base_help = generate_greedy(bmodel, btok, help_prompts, sp, gen, desc="base: generate")
                    cache.put("help_generations", help_key, base_help)
                if help_prompts:
                    ref_help, _ = response_logprobs(bmodel, btok, help_prompts, help_out, sp, ev.score_batch_size,
                                                    ev.max_length)
                    metrics["logratio_to_base"] = logratio_metric(pi_help, ref_help, help_ntok)
                del bmodel
            timings["base_reference_s"] = round(time.perf_counter() - t0, 2)
        model = None
        if pairs:
            metrics.update(preference_metrics(pi_pairs, ref_pairs))

        # ---- phase C: reward and cost models
        harm_rows = [r for r in rows_out if r["set"] == "refusal_harmful"]
        help_rows = [{"set": "helpfulness", "id": r.get("id"), "category": r.get("category"),
                      "prompt": r["instruction"], "response": o, "base_response": b}
                     for r, o, b in zip(sets["helpfulness"], help_out, base_help or [None] * len(help_out))]
        for kind, rec in (("reward", rm_rec), ("cost", cm_rec)):
            mdir = _score_model_dir(rec)
            if mdir is None:
                notes.append(f"no {kind} model (runs/{profile}/{kind}): {kind}_* metrics"
                             + (" and rm_win_rate" if kind == "reward" else "") + " not computed")
                continue
            t0 = time.perf_counter()
            from bench.score_model import load_score_model, score_texts

            smodel, stok = load_score_model(mdir, cfg.model)
            section = getattr(cfg, kind, None)
            max_len = section.max_length if section is not None else ev.max_length

            def score(rows: list[dict], field: str = "response") -> list[float]:
                return score_texts(smodel, stok, [r["prompt"] for r in rows], [r[field] for r in rows], sp,
                                   ev.score_batch_size, max_len, desc=f"{kind}: score")

            for set_name, rows in (("harmful", harm_rows), ("helpfulness", help_rows)):
                if rows:
                    s = score(rows)
                    metrics[f"{kind}_{set_name}"] = mean_metric(s)
                    for r, v in zip(rows, s):
                        r[kind] = v
            if kind == "reward" and help_rows and not is_base:
                b = score(help_rows, "base_response")
                for r, v in zip(help_rows, b):
                    r["base_reward"] = v
                metrics["rm_win_rate"] = win_rate([r["reward"] for r in help_rows], b)
            del smodel
            timings[f"{kind}_scoring_s"] = round(time.perf_counter() - t0, 2)

        gen_path = run.dir / GENERATIONS_FILE
        atomic_write_text(gen_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                            for r in rows_out + help_rows))
        run.metrics = {k: metrics[k] for k in sorted(metrics)}
        run.artifacts = {"generations": str(gen_path), "scored_variant": variant.name}
        run.extra.update({
            "detector": meta["detector"], "battery_version": BATTERY_VERSION, "inputs": meta,
            "scored": {"variant": variant.name, "stage": variant.stage, "kind": variant.kind,
                       "config_hash": variant.config_hash},
            "n": {k: len(v) for k, v in sorted(sets.items())}, "notes": notes, "timings": timings,
        })
        for n in notes:
            run.log.info("note: %s", n)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    summary = ", ".join(f"{k}={metrics[k]['value']:.3f}" for k in ("refusal_harmful", "over_refusal_benign",
                                                                 "pref_acc_implicit", "rm_win_rate")
                        if k in metrics and not math.isnan(metrics[k]["value"]))
    progress(f"eval {variant.name}: {summary or 'done'}")
    return metrics


# =========================================================================== every variant


def run_eval(cfg: ProfileConfig, variant: str | None = None, force: bool = False,
             progress: Callable[[str], None] = print) -> dict[str, str]:
    """Score every evaluable variant of the profile (base first), or only ``variant``. Returns
    ``{variant: "scored" | "up to date" | "skipped: <why>"}``."""
    from bench.variants import discover, steering_module

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
        targets = match
    else:
        targets = [v for v in variants if v.evaluable]
    status: dict[str, str] = {}
    inputs = None
    for v in targets:
        if v.kind == "steered" and steering_module() is None:
            status[v.name] = "skipped: bench.steer hooks not available"
            progress(f"eval {v.name}: skipped (steered variant, but bench.steer's load_steering_spec/apply_spec "
                     f"are not available yet)")
            continue
        if inputs is None:
            inputs = load_inputs(cfg)
        # Per-variant lock: a concurrent `make eval` waits here, then finds this variant up to date.
        with variant_lock(cfg.profile.name, v.name, stage=EVAL_STAGE):
            out = score_variant(cfg, v, force=force, progress=progress, inputs=inputs)
        status[v.name] = "up to date" if out is None else "scored"
    return status
