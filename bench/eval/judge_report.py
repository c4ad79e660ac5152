"""The refusal judge's agreement with human labels on held-out model outputs: what the leaderboard
prints above every refusal rate (``leaderboards/<profile>/judge.json``, written by ``bench publish``).

    python -c "from bench.eval.judge_report import held_out_report; import json; print(json.dumps(held_out_report(), indent=1))"

The labelled outputs (``tasks/refusal_detector/outputs_{dev,dev2,test}.jsonl``, labelled against
``GUIDELINE.md``) are split by ``make_split.py``. The judge's rules were tuned on dev and dev2 (dev2 was
the test split of judges 2.0.0 and 2.1.0); this module is the one place that reads the test split, and
only to report. The report holds, for the test split and (marked in-sample) for the tuning set: n, agreement with its Wilson interval, Cohen's kappa, the confusion
matrix (rows: human label, columns: judge), the refusal-then-comply flag's counts, and agreement by
source (the suite's own generations vs outputs written in the style of larger chat models).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

from bench.eval.refusal import LABELS, MATRIX_LABELS, Detection, detect_many, identity
from bench.stats import rate_metric

TUNING = ("dev", "dev2")  # the rules were tuned on these (dev2: the test split of 2.0.0 and 2.1.0)
HELD_OUT = ("test", "test3", "test4", "test5", "test6")  # labelled after 2.1.0 by labellers who did not see the judge; never tuned on


def split_path(split: str) -> Path:
    return labelled_set_path().with_name(f"outputs_{split}.jsonl")


def _with_intervals(rep: dict) -> dict:
    """:func:`validation_report` with every agreement as a rate metric (value, Wilson interval, n)."""
    out = {k: v for k, v in rep.items() if k != "n_agree"}
    out["agreement"] = rate_metric(rep["n_agree"], rep["n"])
    out["by_source"] = {k: {"n": v["n"], "agreement": rate_metric(v["n_agree"], v["n"])}
                        for k, v in rep["by_source"].items()}
    out["by_set"] = {k: {"n": v["n"], "human_refusal": rate_metric(v["human_refusals"], v["n"]),
                         "judge_refusal": rate_metric(v["judge_refusals"], v["n"]),
                         "agreement": rate_metric(v["n_agree"], v["n"])}
                     for k, v in rep.get("by_set", {}).items()}
    return out


def held_out_report() -> dict | None:
    """``{"judge", "split": "test+test3+...+test6", "n", "agreement", "kappa", "confusion", "flag", "by_source", "by_set",
    "parts": {split: {"n", "agreement"}}, "dev": {...}}``; None when no held-out split is in this checkout."""
    held = [s for s in HELD_OUT if split_path(s).exists()]
    if not held:
        return None
    parts = {s: load_labelled(split_path(s)) for s in held}
    dets = {s: detect_many((r["completion"] for r in rows), (r.get("prompt") for r in rows)) for s, rows in parts.items()}
    pooled = validation_report([r for s in held for r in parts[s]], [d for s in held for d in dets[s]])
    out = dict(_with_intervals(pooled), split="+".join(held))
    out["parts"] = {s: {k: v for k, v in _with_intervals(validation_report(rows, dets[s])).items()
                        if k in ("n", "agreement", "kappa", "flag")} for s, rows in parts.items()}
    tuning = [s for s in TUNING if split_path(s).exists()]
    if tuning:
        rows = [r for s in tuning for r in load_labelled(split_path(s))]
        dev = {k: v for k, v in _with_intervals(validation_report(rows)).items() if k != "by_variant"}  # in-sample
        out["dev"] = dict(dev, split="+".join(tuning))
    second = {s: labeller_agreement(parts[s], load_second_labels(second_labels_path(s)))
              for s in held if second_labels_path(s).exists()}
    if second:
        out["labellers"] = second
    return out


# --------------------------------------------------------------------------- two labellers


def second_labels_path(split: str) -> Path:
    """``outputs_<split>_second.jsonl``: a second labeller's labels of the same rows (id, label,
    refusal_then_comply, note), made blind to the first labels, the judge and the rows' sources."""
    return labelled_set_path().with_name(f"outputs_{split}_second.jsonl")


def _check_second(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise _bad(where, "<row>", f"expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("id"), str) or not row["id"].strip():
        raise _bad(where, "'id'", f"expected a non-empty string, got {row.get('id')!r}")
    if row.get("label") not in LABELS:
        raise _bad(where, "'label'", f"unknown label {row.get('label')!r}, expected one of {LABELS}")
    if not isinstance(row.get("refusal_then_comply"), bool):
        raise _bad(where, "'refusal_then_comply'", f"expected true or false, got {row.get('refusal_then_comply')!r}")
    return row


def load_second_labels(path: str | Path) -> dict[str, dict]:
    """``{id: row}`` of a second labeller's file; a bad row raises ValueError naming file, line and field."""
    return {r["id"]: r for r in _read_rows(path, _check_second)}


def labeller_agreement(rows: Sequence[Mapping], second: Mapping[str, Mapping]) -> dict:
    """Agreement of two labellers on the same rows: the ceiling a judge can be held to (a judge cannot
    agree with one labeller more reliably than the labellers agree with each other).

    ``{"n", "agreement", "kappa", "binary_agreement", "flag_agreement", "confusion"}``: three-label
    agreement with its Wilson interval and Cohen's kappa, agreement on refusal (refuse or partial) vs
    compliance as the battery counts it, and on the refusal-then-comply flag; ``confusion`` has rows =
    the first labels, columns = the second. Every row must have a second label."""
    missing = [r["id"] for r in rows if r["id"] not in second]
    if missing:
        raise ValueError(f"labeller_agreement: {len(missing)} row(s) have no second label, e.g. {missing[0]!r}")
    other = [second[r["id"]] for r in rows]
    a = agreement(rows, [SimpleNamespace(label=o["label"]) for o in other])  # the second labeller in the judge's place
    n = a["overall"]["n"]
    binary = sum((r["label"] != "comply") == (o["label"] != "comply") for r, o in zip(rows, other))
    flag = sum(bool(r.get("refusal_then_comply")) == o["refusal_then_comply"] for r, o in zip(rows, other))
    return {"n": n, "agreement": rate_metric(a["overall"]["agree"], n), "kappa": a["kappa"],
            "binary_agreement": rate_metric(binary, n), "flag_agreement": rate_metric(flag, n),
            "confusion": a["confusion_matrix"]}


# --------------------------------------------------------------------------- labelled sets
_OLD_FIELDS = ("id", "prompt", "completion", "label", "style")  # labelled.jsonl (hand-written)
_NEW_FIELDS = ("id", "prompt", "completion", "set", "source", "label")  # outputs_*.jsonl (model outputs)
_SETS = ("harmful", "benign", "borderline", "unsafe_contrast")
_SOURCES = ("suite", "written")


def labelled_set_path() -> Path:
    """``<repo>/tasks/refusal_detector/labelled.jsonl`` (the hand-written labelled set)."""
    return Path(__file__).resolve().parents[2] / "tasks" / "refusal_detector" / "labelled.jsonl"


def dev_set_path() -> Path:
    """``<repo>/tasks/refusal_detector/outputs_dev.jsonl`` (labelled model outputs, DEV split).

    The TEST split beside it (``outputs_test.jsonl``) is held out: no code here reads it."""
    return labelled_set_path().with_name("outputs_dev.jsonl")


def tuning_set_paths() -> list[Path]:
    """The labelled model outputs the rules are tuned on: ``outputs_dev.jsonl`` and ``outputs_dev2.jsonl``
    (the TEST split of judges 2.0.0 and 2.1.0, read while tuning 2.2.0, so no longer held out)."""
    return [dev_set_path(), labelled_set_path().with_name("outputs_dev2.jsonl")]


def _bad(where: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{where}: field {field}: {problem}")


def _check_row(row: object, where: str) -> dict:
    """Validate one parsed row of either format; raise ValueError naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise _bad(where, "<row>", f"expected a JSON object, got {type(row).__name__}")
    new = "style" not in row or "source" in row
    for field in _NEW_FIELDS if new else _OLD_FIELDS:
        if field not in row:
            raise _bad(where, f"'{field}'", "missing")
        if not isinstance(row[field], str):
            raise _bad(where, f"'{field}'", f"expected a string, got {type(row[field]).__name__}")
    if not row["id"].strip():
        raise _bad(where, "'id'", "empty")
    if row["label"] not in LABELS:
        raise _bad(where, "'label'", f"unknown label {row['label']!r}, expected one of {LABELS}")
    if not new:
        return row
    if row["set"] not in _SETS:
        raise _bad(where, "'set'", f"unknown set {row['set']!r}, expected one of {_SETS}")
    if row["source"].split(":")[0] not in _SOURCES or ":" not in row["source"]:
        raise _bad(where, "'source'", f"{row['source']!r} is not 'suite:<profile>:<variant>' or 'written:<style>'")
    flag = row.get("refusal_then_comply")
    if not isinstance(flag, bool):
        raise _bad(where, "'refusal_then_comply'", f"expected true or false, got {flag!r}")
    if flag and row["label"] != "comply":
        raise _bad(where, "'refusal_then_comply'", f"true on a {row['label']!r} row (only comply rows carry the flag)")
    if row.get("note") is not None and not isinstance(row["note"], str):
        raise _bad(where, "'note'", f"expected a string, got {type(row['note']).__name__}")
    return row


def load_labelled(path: str | Path) -> list[dict]:
    """Read and validate a labelled JSONL, hand-written (``labelled.jsonl``: id, prompt, completion,
    label, style) or model outputs (``outputs_*.jsonl``: id, prompt, completion, set, source, label,
    refusal_then_comply, note). A bad row raises ValueError naming file, line and field."""
    return _read_rows(path, _check_row)


def _read_rows(path: str | Path, check) -> list[dict]:
    """The rows of a JSONL file, each validated by ``check(row, where)``, ids unique; a bad row raises
    ValueError naming file, line and field."""
    path = Path(path)
    rows: list[dict] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(where, "<row>", f"invalid JSON ({exc.msg})") from exc
            row = check(row, where)
            if row["id"] in seen:
                raise _bad(where, "'id'", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = lineno
            rows.append(row)
    return rows


def cohen_kappa(matrix: Sequence[Sequence[int]]) -> float:
    """Cohen's kappa of a square count matrix; 1.0 when chance agreement is already total."""
    n = sum(map(sum, matrix))
    if not n:
        return 0.0
    p_o = sum(matrix[i][i] for i in range(len(matrix))) / n
    p_e = sum(sum(matrix[i]) * sum(r[i] for r in matrix) for i in range(len(matrix))) / (n * n)
    return 1.0 if math.isclose(p_e, 1.0) else (p_o - p_e) / (1.0 - p_e)


def agreement(rows: Sequence[Mapping], detections: Sequence[Detection]) -> dict:
    """Agreement of detections with the human labels.

    Returns ``{label: {"n", "agree", "rate"} for label in LABELS, "overall": {...},
    "confusion": {true: {pred: count}}, "confusion_matrix": {"labels", "matrix"}, "kappa"}``;
    the matrix has rows = human label, columns = judge label, both in MATRIX_LABELS order, and
    ``kappa`` is Cohen's kappa over the three labels. A class with n == 0 has rate 0.0.
    """
    if len(rows) != len(detections):
        raise ValueError(f"agreement: {len(rows)} rows but {len(detections)} detections")
    confusion = {t: {p: 0 for p in LABELS} for t in LABELS}
    for row, det in zip(rows, detections):
        confusion[row["label"]][det.label] += 1
    out: dict = {}
    for t in LABELS:
        n = sum(confusion[t].values())
        agree = confusion[t][t]
        out[t] = {"n": n, "agree": agree, "rate": agree / n if n else 0.0}
    n_all = sum(out[t]["n"] for t in LABELS)
    agree_all = sum(out[t]["agree"] for t in LABELS)
    out["overall"] = {"n": n_all, "agree": agree_all, "rate": agree_all / n_all if n_all else 0.0}
    out["confusion"] = confusion
    matrix = [[confusion[t][p] for p in MATRIX_LABELS] for t in MATRIX_LABELS]
    out["confusion_matrix"] = {"labels": list(MATRIX_LABELS), "matrix": matrix}
    out["kappa"] = cohen_kappa(matrix)
    return out


def _sum_over_variants(by_variant: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict:
    """``by_set`` from ``by_variant``: per set, n, human and judge refusals and the rows where the two agree
    on refusing (n minus the refusals the judge missed and added)."""
    out: dict[str, dict[str, int]] = {}
    for sets in by_variant.values():
        for name, c in sets.items():
            acc = out.setdefault(name, {"n": 0, "human_refusals": 0, "judge_refusals": 0, "n_agree": 0})
            acc["n"] += c["n"]
            acc["human_refusals"] += c["human_refusals"]
            acc["judge_refusals"] += c["judge_refusals"]
            acc["n_agree"] += c["n"] - c["missed"] - c["added"]
    return dict(sorted(out.items()))


def validation_report(rows: Sequence[Mapping], dets: Sequence[Detection] | None = None) -> dict:
    """Run the judge on labelled rows (with their prompts) and compare with the human labels
    (``dets``: the judge's verdicts on ``rows`` when already computed).

    Returns ``{"judge": {"name", "version"}, "n", "agreement", "kappa", "confusion": {"labels",
    "matrix"}, "flag": {"n_true", "tp", "fp", "fn"}, "by_source": {prefix: {"n", "agreement"}}}``
    where ``prefix`` is the row's ``source`` up to the first ':' ("suite", "written"; "none" for
    rows without a source, as in labelled.jsonl) and ``flag`` scores ``refusal_then_comply``.
    ``by_set`` (the suite's own generations only, per battery set): ``{set: {"n", "human_refusals",
    "judge_refusals", "n_agree"}}``, refusal meaning refuse or partial as in the battery's rates, so a
    reader sees which way the judge moves each refusal column and by how much. ``by_variant`` (the
    same rows, per variant that wrote them, the last part of ``source``): ``{variant: {set: {"n",
    "human_refusals", "judge_refusals", "missed", "added"}}}`` (``missed``: refusals the judge reads as
    compliance; ``added``: the reverse), so the leaderboard can show whether the judge errs the same way
    on every method's outputs: a difference between two methods' judge errors is a bias in the
    comparison of their rates, which no interval over prompts contains.
    """
    if dets is None:
        dets = detect_many((r["completion"] for r in rows), (r.get("prompt") for r in rows))
    a = agreement(rows, dets)
    flag = {"n_true": 0, "tp": 0, "fp": 0, "fn": 0}
    by: dict[str, list[int]] = {}
    by_variant: dict[str, dict[str, dict[str, int]]] = {}  # suite rows per variant and set
    for row, det in zip(rows, dets):
        human = bool(row.get("refusal_then_comply", False))
        flag["n_true"] += human
        flag["tp"] += human and det.refusal_then_comply
        flag["fp"] += (not human) and det.refusal_then_comply
        flag["fn"] += human and not det.refusal_then_comply
        n_agree = by.setdefault(str(row.get("source") or "none").split(":")[0], [0, 0])
        n_agree[0] += 1
        n_agree[1] += row["label"] == det.label
        if str(row.get("source") or "").startswith("suite:") and row.get("set"):
            human_ref, judge_ref = row["label"] != "comply", det.label != "comply"
            v = by_variant.setdefault(str(row["source"]).split(":")[-1], {}).setdefault(
                row["set"], {"n": 0, "human_refusals": 0, "judge_refusals": 0, "missed": 0, "added": 0})
            v["n"] += 1
            v["human_refusals"] += human_ref
            v["judge_refusals"] += judge_ref
            v["missed"] += human_ref and not judge_ref
            v["added"] += judge_ref and not human_ref
    return {
        "judge": identity(),
        "n": a["overall"]["n"],
        "n_agree": a["overall"]["agree"],
        "agreement": a["overall"]["rate"],
        "kappa": a["kappa"],
        "confusion": a["confusion_matrix"],
        "flag": {k: int(v) for k, v in flag.items()},
        "by_source": {k: {"n": n, "n_agree": agree, "agreement": agree / n} for k, (n, agree) in sorted(by.items())},
        "by_set": _sum_over_variants(by_variant),
        "by_variant": {v: {k: {f: int(x) for f, x in c.items()} for k, c in sorted(sets.items())}
                       for v, sets in sorted(by_variant.items())},
    }
