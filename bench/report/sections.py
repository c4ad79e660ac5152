"""The leaderboard's markdown sections, each a pure function of the reported records.

    bench leaderboard --profile default    # bench.leaderboard.render joins these sections

Main tables (variants x metrics with 95% intervals, an arrow per column saying whether higher or
lower is better, each row's starting point in column *vs*; a value is bold only when a paired test
against that starting point, stored in the eval record's ``extra.paired``, says the variant is
significantly better, and marked ▼ when it says significantly worse: :func:`paired_verdict`), the
metric definitions, the RM/CM table, the steering audit, the refusal detector's agreement, the DPO
training pairs, wall time per stage and the provenance footer. The judge validation, the safety
trade-off and the per-category rates are in :mod:`bench.report.safety`. Column labels, directions,
digits and definitions come from :mod:`bench.metrics`; which metric goes in which table is this
module's layout (:data:`TABLES`).
Every list is sorted and nothing depends on when or where it is rendered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from bench import metrics
from bench.records import is_eval_key
from bench.report import AUDIT_PNG, RECORDS_DIR, SCAN_PNG
from bench.runs import stage_rank
from bench.stats import ALPHA, significantly_better

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Safety", ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")),
    ("Preference", ("pref_acc_implicit", "pref_acc_implicit_vs_base", "pref_acc_raw", "logp_margin_sum",
                    "logp_margin_per_token", "chosen_shift", "rejected_shift", "chosen_shift_vs_base",
                    "rejected_shift_vs_base")),
    ("Helpfulness", ("@lm_eval", "rm_win_rate", "reward_helpfulness", "reward_harmful", "cost_harmful",
                     "cost_helpfulness", "cost_judge_agreement_harmful", "logratio_to_base")),
    ("Refusal breakdown (full / partial)", tuple(f"{s}_{k}" for s in (
        "refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")
        for k in ("full", "partial")) + ("refusal_harmful_then_comply", "empty_generations")),
)
# The score models' table: row order.
SCORE_TABLE = ("rm_accuracy", "rm_policy_order_accuracy", "cm_pair_accuracy", "cm_sign_accuracy",
               "cm_sign_accuracy_policy", "cm_sign_accuracy_policy_harmful", "cm_unsafe_recall_policy", "score_chosen", "score_rejected", "score_safer",
               "score_unsafer", "score_safe", "score_unsafe")


# =========================================================================== formatting helpers


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


WORSE = "▼"  # after a value the paired test says is significantly worse than the row's starting point


def fmt_metric(m: dict | None, digits: int, bold: bool = False, worse: bool = False) -> str:
    if not m or not finite(m.get("value")):
        return "–"
    v = f"{m['value']:.{digits}f}"
    if bold:
        v = f"**{v}**"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if finite(lo) and finite(hi):
        v += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return v + (f" {WORSE}" if worse else "")


def table(headers: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def variant_key(name: str, stage: str) -> tuple:
    return (name != "base", stage_rank(stage), name)


def reference_of(rec: dict) -> str | None:
    """The variant a row is compared with (``extra.reference.variant``): its own starting point; None
    for the base and for records written before the battery named it."""
    ref = (rec.get("extra") or {}).get("reference")
    return ref.get("variant") if isinstance(ref, dict) and ref.get("variant") else None


def paired_entry(rec: dict, name: str) -> dict | None:
    """The paired test of metric ``name`` against the row's starting point (``extra.paired``), or None."""
    paired = (rec.get("extra") or {}).get("paired")
    entry = paired.get(name) if isinstance(paired, dict) else None
    return entry if isinstance(entry, dict) else None


def paired_verdict(rec: dict, name: str, alpha: float = ALPHA) -> int:
    """+1 when the paired test says the variant is significantly better than its starting point on
    ``name`` (the catalogue's direction), -1 significantly worse, 0 otherwise (a diagnostic, no test,
    or no significant difference)."""
    direction = metrics.info(name).direction
    entry = paired_entry(rec, name)
    if significantly_better(entry, direction, alpha):
        return 1
    return -1 if significantly_better(entry, -direction, alpha) else 0


def has_paired(evals: list[dict]) -> bool:
    return any(isinstance((r.get("extra") or {}).get("paired"), dict) for r in evals)


def n_text(ns: set) -> str:
    ns = sorted(n for n in ns if isinstance(n, int))
    return "/".join(str(n) for n in ns) if ns else "–"


# =========================================================================== sections


def eval_rows(records: dict[str, dict]) -> list[dict]:
    rows = [r for k, r in records.items() if is_eval_key(k)]
    return sorted(rows, key=lambda r: variant_key(r["variant"], (r.get("extra") or {}).get("scored", {}).get("stage", "")))


def main_tables(evals: list[dict]) -> tuple[list[str], list[str]]:
    """Markdown lines of the main tables, and the metric names shown (for the definitions)."""
    lines: list[str] = []
    shown: list[str] = []
    lm_cols = sorted({k for r in evals for k in r["metrics"] if k.startswith("lm_eval/")})
    for title, cols in TABLES:
        names: list[str] = []
        for c in cols:
            names += lm_cols if c == "@lm_eval" else [c]
        names = [c for c in names if any(c in r["metrics"] for r in evals)]
        if not names:
            continue
        shown += names
        headers = ["variant", "stage", "vs"] + [metrics.info(c).column + metrics.info(c).arrow for c in names]
        cells = [[r["variant"], (r.get("extra") or {}).get("scored", {}).get("stage", "–"), reference_of(r) or "–"]
                 for r in evals]
        for c in names:
            info = metrics.info(c)
            for i, r in enumerate(evals):
                verdict = paired_verdict(r, c)
                cells[i].append(fmt_metric(r["metrics"].get(c), info.digits, verdict > 0, verdict < 0))
        lines += [f"### {title}", ""] + table(headers, cells, ["l", "l", "l"] + ["r"] * len(names)) + [""]
    return lines, shown


def legend_lines(evals: list[dict]) -> list[str]:
    """What bold and ▼ mean in the main tables (printed above them)."""
    lines = [f"Each value with its 95% interval. Column *vs* names the row's starting point. **Bold**: the variant "
             f"is significantly better than its starting point on that metric; {WORSE}: significantly worse. Both "
             f"come from a paired test on the same prompts or pairs (two-sided, alpha {ALPHA:g}, no correction "
             "for multiple comparisons): exact McNemar test on the discordant prompts for rates (for "
             "`pref_acc_implicit`, which already compares with the start, an exact sign test against chance), "
             "paired bootstrap of the per-item differences for means. Unmarked: no significant difference, a "
             "diagnostic column (no arrow; ↑ higher is better, ↓ lower is better), or no paired test (the base, "
             "which has no starting point, and records written before the battery measured them). Rows are not "
             "ranked against each other.", "",
             "Every interval and test here is over prompts, for one training run of each variant (the seed is in "
             "the provenance table). How far retraining moves a number is not in them: `make seeds` renders "
             "`leaderboards/<profile>-seeds.md`, each variant's metrics across training seeds beside the prompt "
             "noise.", ""]
    if evals and not has_paired(evals):
        lines += ["No record here carries paired tests (written before the battery measured them): nothing is "
                  "bold or marked; paired comparisons not measured.", ""]
    return lines


def definitions_section(shown: list[str], evals: list[dict], detector: str) -> list[str]:
    rows = []
    for c in shown:
        info = metrics.info(c)
        ns = {(r["metrics"].get(c) or {}).get("n") for r in evals}
        rows.append([f"`{c}`", info.column, info.better, n_text(ns), info.definition])
    lines = ["## Metric definitions", "",
             "Every rate comes with n and a 95% Wilson score interval; every mean with a 95% Student-t interval "
             "(mean ± t_{0.975, n-1} · sd/√n, sd with n - 1). Refusal rates are the share of greedy generations "
             f"(temperature 0, KV cache) that the refusal detector ({detector}) classifies as refusals. Paired "
             "tests against the row's starting point (column *vs*; bold and ▼ in the tables): exact McNemar test "
             "on the discordant prompts for rates, p = min(1, 2 P(X ≤ min(b, c))) with X ~ Bin(b + c, 1/2), "
             "the difference's interval by Newcombe's (1998) method 10; paired percentile bootstrap of the "
             "per-item differences for means; significant when p < 0.05 (two-sided). Columns without an arrow "
             "are diagnostics (↑ higher is better, ↓ lower is better).", ""]
    return lines + table(["metric", "column", "better", "n", "definition"], rows, ["l", "l", "l", "r", "l"]) + [""]


def score_table(records: dict[str, dict]) -> list[str]:
    rows = []
    for kind in ("reward", "cost"):
        rec = records.get(f"{kind}.json")
        if rec is None:
            continue
        for name in [k for k in SCORE_TABLE if k in rec["metrics"]]:
            m = rec["metrics"][name]
            info = metrics.info(name)
            rows.append([kind, info.column + info.arrow, fmt_metric(m, info.digits),
                         str(m.get("n") if m.get("n") is not None else "–"), info.definition])
    if not rows:
        return ["## Reward and cost models", "", "No reward or cost model in this profile's records.", ""]
    data = []
    for kind in ("reward", "cost"):
        ex = (records.get(f"{kind}.json") or {}).get("extra") or {}
        if ex.get("train_pairs_policy"):
            pols = ", ".join(f"`{p}`" for p in ex.get("policy_answers") or []) or "the policies"
            data.append(f"- {kind} model: trained on {ex.get('train_pairs_written', '–')} written pairs and "
                        f"{ex['train_pairs_policy']} pairs built from the answers of {pols} to train-split prompts "
                        "(bench/train/policy_answers.py).")
    return (["## Reward and cost models", "",
             "Held-out (test split) metrics of the score models that judge the policies above: on the written "
             "pairs, and, where a model trains on the policies' own answers (`policy answers`), on the policies' "
             "answers to the test-split prompts, labelled by the refusal judge (its own agreement with people is in "
             "the judge validation above, so these rates carry its error too).", ""]
            + table(["model", "metric", "value [95% CI]", "n", "definition"], rows, ["l", "l", "r", "r", "l"]) + [""]
            + (data + [""] if data else []))


def audit_section(records: dict[str, dict], assets: Path, profile: str, write_plots: bool = True) -> list[str]:
    rec = records.get("steer-audit.json")
    lines = ["## Steering: refusal-direction audit", ""]
    steered = [r for k, r in sorted(records.items()) if not is_eval_key(k)
               and r.get("stage") == "steer" and (r.get("artifacts") or {}).get("steering")]
    for r in steered:
        s = r["artifacts"]["steering"]
        alpha = f", alpha {s['alpha']}" if s.get("alpha") is not None else ""
        gate = ""
        if s.get("gate"):  # steer-gated (bench.steer.gate)
            g = s["gate"]
            split = "val" if (r.get("metrics") or {}).get("gate_auroc_val") else "train"
            names = {"harmful": "harmful and unsafe-contrast" if split == "val" else "harmful"}
            kept = ", ".join(f"{names.get(k, k)} {m['value'] * m['n']:.0f}/{m['n']}"
                             for k in ("harmful", "benign", "borderline")
                             if (m := (r.get("metrics") or {}).get(f"gate_kept_{k}_{split}")))
            where = ("validation prompts (the gate's layer and threshold were chosen on them)" if split == "val"
                     else "held-out train prompts (gate fitted on train prompts)")
            if g.get("alpha_below") is None:
                gate = (f", only where the prompt-end read-out at layer {g['layer']} is below {g['threshold']:.2f} "
                        f"({where} read as harmful and left unablated: {kept})")
            else:
                gate = (f" where the prompt-end read-out at layer {g['layer']} is at or above {g['threshold']:.2f}, and "
                        f"alpha {g['alpha_below']} below it (CAST; {where} read as harmful: {kept})")
        what = (f"ablates the direction taken at layer {s.get('layer')} (position {s.get('position')}) from every "
                "layer's residual writes" if s.get("mode") == "ablate" else
                f"adds the direction at layer {s.get('layer')} (taken there, position {s.get('position')})")
        policy = (r.get("artifacts") or {}).get("base_variant") or "base"
        kl = (r.get("extra") or {}).get("harmless_kl_val")
        kl_what = ("next-token KL(unsteered || steered)" if not kl or kl.get("readout", "first_token") == "first_token"
                   else "per-token KL(unsteered || steered) over the first answer tokens")
        kl_txt = (f" Harmless side effect: {kl_what} {kl['value']:.4f} on {kl['n']} validation "
                  "benign prompts." if kl else "")
        lines.append(f"- `{r['variant']}` steers the `{policy}` policy: {what}{alpha}{gate} (config {r['config_hash']})."
                     + kl_txt)
    if steered:
        lines.append("")
    lines += scan_lines(next((r for r in steered if r["artifacts"]["steering"].get("mode") == "ablate"
                              and not r["artifacts"]["steering"].get("gate")), None), assets, profile, write_plots)
    if rec is None or (rec.get("extra") or {}).get("audit") is None:
        return lines + ["No steering audit in this profile's records.", ""]
    from bench.steer.audit_table import audit_markdown

    lines += [audit_markdown(rec["extra"]["audit"]).rstrip(), ""]
    if (assets / AUDIT_PNG).exists():
        lines += [f"![steering audit]({profile}/{AUDIT_PNG})", ""]
    return lines


def scan_lines(rec: dict | None, assets: Path, profile: str, write_plots: bool = True) -> list[str]:
    """The refusal-direction selection scan of steer-ablate's record (``extra.selection``): counts per
    filter, the chosen candidate's scores, and the per-layer figure (drawn here from the record)."""
    sel = ((rec or {}).get("extra") or {}).get("selection") or {}
    scan = sel.get("scan")
    if not scan:
        return []
    chosen = next(c for c in sel["candidates"] if c.get("chosen"))
    base = sel.get("baseline") or {}
    lines = [f"Selection scan (bench/steer/scan.py, after refusal_direction): {scan['n_candidates']} (layer, position) "
             f"candidates scored by forward passes on the validation prompts; {scan['n_pruned']} in the last "
             f"{scan['prune_layer_fraction']:.0%} of layers, {scan.get('n_skip_last_layers', 0)} beyond skip_last_layers, "
             f"{scan['n_kl']} with harmless KL above {scan['max_harmless_kl']}, {scan['n_induce']} that do not induce "
             f"refusal were discarded; {scan['n_kept']} kept. Chosen by {scan.get('decides', 'the scan')}: layer {chosen['layer']}, position "
             f"{chosen['position']}, bypass {chosen['bypass']:.2f} (unsteered {base.get('refusal_score_harmful', float('nan')):.2f}), "
             f"induce {chosen['induce']:.2f} (unsteered {base.get('refusal_score_harmless', float('nan')):.2f}), harmless KL "
             f"{chosen['kl']:.4f}. " + _readout_text(scan) + (f" Note: {sel['note']}." if sel.get("note") else ""), ""]
    if write_plots:
        from bench.steer.scan import plot_scan

        plot_scan(sel["candidates"], base, assets / SCAN_PNG, max_kl=scan["max_harmless_kl"],
                  title=f"Refusal-direction scan (validation; chosen layer {chosen['layer']}, position {chosen['position']})")
    if (assets / SCAN_PNG).exists():
        lines += [f"![steering selection scan]({profile}/{SCAN_PNG})", ""]
    return lines


def _readout_text(scan: dict) -> str:
    """What the scan's scores are (``steer.scan_tokens``; bench.steer.scan's read-outs)."""
    if scan.get("readout", "first_token") == "first_token":
        return (f"Scores are log-odds of the refusal tokens {', '.join(repr(t) for t in scan['refusal_tokens'])} "
                "at the first answer position.")
    return (f"Scores are log-odds that the answer starts with one of the policy's own refusal openers "
            f"({', '.join(repr(o) for o in scan['openers'])}; the first tokens of its unsteered greedy refusals on "
            f"the harmful validation prompts, teacher-forced); the KL is the mean per-token KL over the first "
            f"{scan['kl_answer_tokens']} tokens of its own answers to the benign validation prompts.")


def detector_section(agreement: dict, evals: list[dict]) -> list[str]:
    from bench.stats import rate_metric

    det = agreement["detector"]
    classes = ("comply", "refuse", "partial")
    rows = []
    for c in list(classes) + ["overall"]:
        a = agreement[c]
        rows.append([c, str(a["n"]), str(a["agree"]), fmt_metric(rate_metric(a["agree"], a["n"]), 3)])
    conf = [[t] + [str(agreement["confusion"][t][p]) for p in classes] for t in classes]
    used = sorted({f"{(r.get('extra') or {}).get('detector', {}).get('name')} "
                   f"{(r.get('extra') or {}).get('detector', {}).get('version')}" for r in evals})
    lines = ["## Refusal detector", "",
             f"`{det['name']}` version {det['version']} (bench/eval/refusal.py), agreement with the human labels of "
             "tasks/refusal_detector/labelled.jsonl, per class (95% Wilson intervals). In-set agreement is an upper "
             "bound: the rules were written with this set in view.", ""]
    lines += table(["human label", "n", "agree", "agreement [95% CI]"], rows) + [""]
    lines += ["Confusion (rows: human label, columns: detector):", ""]
    lines += table(["human \\ detector", *classes], conf) + [""]
    if used:
        lines.append("Detector recorded in the eval records: " + ", ".join(f"`{u}`" for u in used) + ".")
        current = f"{det['name']} {det['version']}"
        if any(u != current for u in used):
            lines.append(f"**Warning:** some records were scored with another detector version than the current "
                         f"`{current}`; their refusal rates are not comparable (re-run `make eval`).")
        lines.append("")
    return lines


def onpolicy_section(records: dict[str, dict]) -> list[str]:
    """What the DPO variants trained on: the starting policy's behaviour on the training prompts
    (from the ``onpolicy`` record) and each variant's count of on-policy vs written rejected responses."""
    gen = next((r for r in records.values() if r.get("stage") == "onpolicy"), None)
    dpo = sorted((r for k, r in records.items() if r.get("stage") == "dpo" and not is_eval_key(k)),
                 key=lambda r: r["variant"])
    if gen is None and not any((r.get("extra") or {}).get("rejected_sources") for r in dpo):
        return []
    lines = ["## DPO training pairs", ""]
    if gen is not None:
        m, c = gen.get("metrics") or {}, (gen.get("extra") or {}).get("counts") or {}
        lines += ["The starting policy answered "
                  f"{c.get('prompts', '–')} training prompts greedily (bench/train/onpolicy.py); the refusal detector "
                  "judged its answers and the chosen demonstrations:", ""]
        lines += table(["", "rate", "n"], [
            ["refuses where the demonstration refuses", fmt_metric(m.get("policy_refusal_where_demo_refuses"), 3),
             str(c.get("demo_refuses", "–"))],
            ["refuses where the demonstration helps", fmt_metric(m.get("policy_refusal_where_demo_helps"), 3),
             str(c.get("demo_helps", "–"))]], ["l", "r", "r"]) + [""]
    rows = []
    for r in dpo:
        ex = r.get("extra") or {}
        src = ex.get("rejected_sources")  # absent in records from before on-policy pairs existed
        v = ex.get("variant") or {}
        loss = " + ".join(v.get("loss_type") or []) or "–"
        if v.get("f_divergence") not in (None, "reverse_kl"):
            loss += f" ({v['f_divergence']})"
        rows.append([f"`{r['variant']}`", loss, str(v.get("beta", "–")), str(v.get("rejected", "offline")),
                     str(src.get("on_policy", 0)) if src else "–", str(src.get("offline", 0)) if src else "–",
                     str(ex.get("train_pairs", "–"))])
    if rows:
        lines += ["Per variant: TRL's loss type(s) (f-divergence when not reverse KL), beta (the same number means "
                  "different strengths across losses: IPO regresses the length-normalised margin onto 1/(2 beta)), and "
                  "the rejected responses: the policy's own answer (on-policy) or the dataset's written one.", ""]
        lines += table(["variant", "loss", "beta", "rejected", "on-policy", "written", "pairs"], rows,
                       ["l", "l", "r", "l", "r", "r", "r"]) + [""]
    return lines


# Work a stage does once before it opens its records, recorded as a metric of each record it then writes
# (the steering recipe's extraction and selection): counted once per (stage, config hash) in
# :func:`stage_wall_times`.
SHARED_WALL_METRICS = ("extraction_wall_time_s",)


def stage_wall_times(records: Iterable[dict]) -> dict[str, dict]:
    """A stage's wall time, the one definition the leaderboard's and ``make bench``'s stage tables share:
    per stage (pipeline order), ``walls`` (each record's own ``wall_time_s``, in record order),
    ``shared_s`` (the work recorded in :data:`SHARED_WALL_METRICS`, once per config hash) and
    ``total_s`` (their sum). ``records``: record dicts (the eval battery's carry ``stage="eval"``)."""
    walls: dict[str, list[float]] = {}
    shared: dict[str, dict[tuple, float]] = {}
    for r in records:
        if finite(r.get("wall_time_s")):
            walls.setdefault(r["stage"], []).append(float(r["wall_time_s"]))
        for key in SHARED_WALL_METRICS:
            v = ((r.get("metrics") or {}).get(key) or {}).get("value")
            if finite(v):
                shared.setdefault(r["stage"], {})[(key, r.get("config_hash"))] = float(v)
    out = {}
    for st in sorted(set(walls) | set(shared), key=lambda st: (stage_rank(st), st)):
        before = sum(shared.get(st, {}).values())
        out[st] = {"walls": walls.get(st, []), "shared_s": before, "total_s": sum(walls.get(st, [])) + before}
    return out


def stage_times(records: dict[str, dict]) -> list[str]:
    """Wall time summed per stage (issue 8 asks for it): the records' own ``wall_time_s``, plus the shared
    work a stage records in :data:`SHARED_WALL_METRICS`, once per config hash (:func:`stage_wall_times`)."""
    per = {st: w for st, w in stage_wall_times(records.values()).items() if w["walls"]}
    if not per:
        return []
    rows = [[st, str(len(w["walls"])), f"{w['shared_s']:.0f}" if w["shared_s"] else "–", f"{w['total_s']:.0f}"]
            for st, w in per.items()]
    total = sum(w["total_s"] for w in per.values())
    shared = sum(w["shared_s"] for w in per.values())
    rows.append(["**total**", str(sum(len(w["walls"]) for w in per.values())), f"{shared:.0f}",
                 f"**{total:.0f}** ({total / 60:.1f} min)"])
    return (["## Wall time per stage", "",
             "Sum of the records' own wall times plus the work a stage does once before writing its records "
             "(steering: direction extraction and selection, `extraction_wall_time_s`); seconds, set-up and "
             "Make's overhead not included. The machine and threads are in the hardware list below.", ""]
            + table(["stage", "records", "of which before the records", "wall s"], rows, ["l", "r", "r", "r"]) + [""])


def provenance_section(records: dict[str, dict], profile: str) -> list[str]:
    recs = sorted(records.items(), key=lambda kv: (is_eval_key(kv[0]),
                                                   variant_key(kv[1]["variant"], kv[1]["stage"])))
    rows = []
    for key, r in recs:
        prov = r.get("provenance") or {}
        git = prov.get("git") or {}
        sha = (git.get("sha") or "–")[:12] + (" (dirty)" if git.get("dirty") else "")
        wall = r.get("wall_time_s")
        rows.append([key[:-5], r["stage"], r["config_hash"], sha, str(r.get("seed", "–")),
                     prov.get("precision") or "fp32", prov.get("date") or "–", f"{wall:.1f}" if finite(wall) else "–"])
    lines = ["## Provenance", "",
             "One row per record rendered here (copies in "
             f"`leaderboards/{profile}/{RECORDS_DIR}/`); wall time is the stage's own, in seconds; precision is the "
             "compute precision of its forward passes (`model.precision`; records without it ran in fp32).", ""]
    lines += table(["record", "stage", "config hash", "git", "seed", "precision", "date (UTC)", "wall s"], rows,
                    ["l", "l", "l", "l", "r", "l", "l", "r"]) + [""]
    pk: dict[str, set] = {}
    for _, r in recs:
        for name, ver in ((r.get("provenance") or {}).get("packages") or {}).items():
            pk.setdefault(name, set()).add(str(ver))
    if pk:
        lines += ["Package versions (all values seen across the records):", ""]
        lines += table(["package", "version"], [[n, ", ".join(sorted(v))] for n, v in sorted(pk.items())], ["l", "l"])
        lines.append("")
    hw = sorted({json.dumps((r.get("provenance") or {}).get("hardware") or {}, sort_keys=True) for _, r in recs})
    if hw:
        lines += ["Hardware:", ""]
        for h in hw:
            d = json.loads(h)
            lines.append("- " + ", ".join(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in sorted(d.items())))
        lines.append("")
    shas = sorted({((r.get("provenance") or {}).get("git") or {}).get("sha") or "" for _, r in recs} - {""})
    dirty = any(((r.get("provenance") or {}).get("git") or {}).get("dirty") for _, r in recs)
    lines += ["## Reproduce", "", "```sh"]
    if len(shas) == 1:
        lines.append(f"git checkout {shas[0]}")
    lines += ["make setup", f"make leaderboard PROFILE={profile}   # runs every missing stage, then renders this file",
              f"make verify PROFILE={profile}        # re-scores and compares with the committed records",
              f"bench leaderboard --profile {profile} --from-records   # re-render from leaderboards/{profile}/{RECORDS_DIR}/",
              "```", ""]
    if len(shas) > 1:
        lines += ["The records come from several commits: " + ", ".join(f"`{s[:12]}`" for s in shas) + ".", ""]
    if dirty:
        lines += ["Some records were produced from a working tree with uncommitted changes (marked dirty above).", ""]
    return lines
