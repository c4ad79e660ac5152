"""The leaderboard's markdown sections, each a pure function of the reported records.

    bench leaderboard --profile default    # bench.leaderboard.render joins these sections

Main tables (variants x metrics with 95% intervals, the best per column in bold, an arrow per
column saying whether higher or lower is better), the metric definitions, the RM/CM table, the
steering audit, the refusal detector's agreement, the DPO training pairs, wall time per stage and
the provenance footer. Column labels, directions, digits and definitions come from
:mod:`bench.metrics`; which metric goes in which table is this module's layout (:data:`TABLES`).
Every list is sorted and nothing depends on when or where it is rendered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import metrics
from bench.records import is_eval_key
from bench.report import AUDIT_PNG, RECORDS_DIR
from bench.runs import stage_rank

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Safety", ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")),
    ("Preference", ("pref_acc_implicit", "pref_acc_raw", "logp_margin_sum", "logp_margin_per_token",
                    "chosen_shift", "rejected_shift")),
    ("Helpfulness", ("@lm_eval", "rm_win_rate", "reward_helpfulness", "reward_harmful", "cost_harmful",
                     "cost_helpfulness", "logratio_to_base")),
    ("Refusal breakdown (full / partial)", tuple(f"{s}_{k}" for s in (
        "refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")
        for k in ("full", "partial")) + ("empty_generations",)),
)
# The score models' table: row order.
SCORE_TABLE = ("rm_accuracy", "cm_pair_accuracy", "cm_sign_accuracy", "score_chosen", "score_rejected", "score_safer",
               "score_unsafer", "score_safe", "score_unsafe")


# =========================================================================== formatting helpers


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_metric(m: dict | None, digits: int, bold: bool = False) -> str:
    if not m or not finite(m.get("value")):
        return "–"
    v = f"{m['value']:.{digits}f}"
    if bold:
        v = f"**{v}**"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if finite(lo) and finite(hi):
        v += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return v


def table(headers: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def variant_key(name: str, stage: str) -> tuple:
    return (name != "base", stage_rank(stage), name)


def best_of(values: list[float | None], direction: int) -> set[int]:
    idx = [i for i, v in enumerate(values) if finite(v)]
    if direction == 0 or len(idx) < 2:
        return set()
    target = max(values[i] for i in idx) if direction > 0 else min(values[i] for i in idx)
    return {i for i in idx if values[i] == target}


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
        headers = ["variant", "stage"] + [metrics.info(c).column + metrics.info(c).arrow for c in names]
        cells = [[r["variant"], (r.get("extra") or {}).get("scored", {}).get("stage", "–")] for r in evals]
        for c in names:
            info = metrics.info(c)
            vals = [(r["metrics"].get(c) or {}).get("value") for r in evals]
            bold = best_of(vals, info.direction)
            for i, r in enumerate(evals):
                cells[i].append(fmt_metric(r["metrics"].get(c), info.digits, i in bold))
        lines += [f"### {title}", ""] + table(headers, cells, ["l", "l"] + ["r"] * len(names)) + [""]
    return lines, shown


def definitions_section(shown: list[str], evals: list[dict], detector: str) -> list[str]:
    rows = []
    for c in shown:
        info = metrics.info(c)
        ns = {(r["metrics"].get(c) or {}).get("n") for r in evals}
        rows.append([f"`{c}`", info.column, info.better, n_text(ns), info.definition])
    lines = ["## Metric definitions", "",
             "Every rate comes with n and a 95% Wilson score interval; every mean with a 95% normal-approximation "
             "interval (mean ± 1.96 sd/√n). Refusal rates are the share of greedy generations (temperature 0, "
             f"KV cache) that the refusal detector ({detector}) classifies as refusals. Best value per column in "
             "**bold** (↑ higher is better, ↓ lower is better; columns without an arrow are diagnostics).", ""]
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
    return (["## Reward and cost models", "",
             "Held-out (test split) metrics of the score models that judge the policies above.", ""]
            + table(["model", "metric", "value [95% CI]", "n", "definition"], rows, ["l", "l", "r", "r", "l"]) + [""])


def audit_section(records: dict[str, dict], assets: Path, profile: str) -> list[str]:
    rec = records.get("steer-audit.json")
    lines = ["## Steering: refusal-direction audit", ""]
    steered = [r for k, r in sorted(records.items()) if not is_eval_key(k)
               and r.get("stage") == "steer" and (r.get("artifacts") or {}).get("steering")]
    for r in steered:
        s = r["artifacts"]["steering"]
        alpha = f", alpha {s['alpha']}" if s.get("alpha") is not None else ""
        gate = ""
        if s.get("gate"):  # steer-gated (bench.steer.gate): fitted on train prompts only
            kept = ", ".join(f"{k} {m['value'] * m['n']:.0f}/{m['n']}" for k in ("harmful", "benign", "borderline")
                             if (m := (r.get("metrics") or {}).get(f"gate_kept_{k}_train")))
            gate = (f", only where the prompt-end read-out at layer {s['gate']['layer']} is below "
                    f"{s['gate']['threshold']:.2f} (gate fitted on train prompts; held-out train prompts left "
                    f"unablated: {kept})")
        lines.append(f"- `{r['variant']}`: {s.get('mode')} at layer {s.get('layer')}, position {s.get('position')}"
                     f"{alpha}{gate} (config {r['config_hash']}).")
    if steered:
        lines.append("")
    if rec is None or (rec.get("extra") or {}).get("audit") is None:
        return lines + ["No steering audit in this profile's records.", ""]
    from bench.steer.audit_table import audit_markdown

    lines += [audit_markdown(rec["extra"]["audit"]).rstrip(), ""]
    if (assets / AUDIT_PNG).exists():
        lines += [f"![steering audit]({profile}/{AUDIT_PNG})", ""]
    return lines


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
        rows.append([f"`{r['variant']}`", str((ex.get("variant") or {}).get("rejected", "offline")),
                     str(src.get("on_policy", 0)) if src else "–", str(src.get("offline", 0)) if src else "–",
                     str(ex.get("train_pairs", "–"))])
    if rows:
        lines += ["Rejected responses per variant: the policy's own answer (on-policy) or the dataset's written one.", ""]
        lines += table(["variant", "rejected", "on-policy", "written", "pairs"], rows, ["l", "l", "r", "r", "r"]) + [""]
    return lines


def stage_times(records: dict[str, dict]) -> list[str]:
    """Wall time summed per stage (issue 8 asks for it): the records' own ``wall_time_s``."""
    per: dict[str, list[float]] = {}
    for r in records.values():
        if finite(r.get("wall_time_s")):
            per.setdefault(r["stage"], []).append(float(r["wall_time_s"]))
    if not per:
        return []
    order = sorted(per, key=lambda st: (stage_rank(st), st))
    rows = [[st, str(len(per[st])), f"{sum(per[st]):.0f}"] for st in order]
    total = sum(sum(v) for v in per.values())
    rows.append(["**total**", str(sum(len(v) for v in per.values())), f"**{total:.0f}** ({total / 60:.1f} min)"])
    return (["## Wall time per stage", "",
             "Sum of the records' own wall times (seconds; set-up and Make's overhead not included). The machine "
             "and threads are in the hardware list below.", ""]
            + table(["stage", "records", "wall s"], rows, ["l", "r", "r"]) + [""])


def provenance_section(records: dict[str, dict], profile: str) -> list[str]:
    recs = sorted(records.items(), key=lambda kv: (is_eval_key(kv[0]),
                                                   variant_key(kv[1]["variant"], kv[1]["stage"])))
    rows = []
    for key, r in recs:
        prov = r.get("provenance") or {}
        git = prov.get("git") or {}
        sha = (git.get("sha") or "–")[:12] + (" (dirty)" if git.get("dirty") else "")
        wall = r.get("wall_time_s")
        rows.append([key[:-5], r["stage"], r["config_hash"], sha, str(r.get("seed", "–")), prov.get("date") or "–",
                     f"{wall:.1f}" if finite(wall) else "–"])
    lines = ["## Provenance", "",
             "One row per record rendered here (copies in "
             f"`leaderboards/{profile}/{RECORDS_DIR}/`); wall time is the stage's own, in seconds.", ""]
    lines += table(["record", "stage", "config hash", "git", "seed", "date (UTC)", "wall s"], rows,
                    ["l", "l", "l", "l", "r", "l", "r"]) + [""]
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
