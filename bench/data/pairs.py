"""Derived views of PKU-schema pairs: what each training objective sees.

Pure functions, no I/O. A PKU pair carries two independent preferences: ``better_response_id``
(helpfulness, judged regardless of harm, as PKU-SafeRLHF's annotators did) and ``safer_response_id``
(harmlessness), plus an absolute safe/unsafe label per response.

- :func:`better_pairs`: chosen = the more helpful response (the reward model's data).
- :func:`safer_pairs`: safer/unsafer with both safety labels (the cost model's ordering + sign loss,
  Dai et al. 2023, "Safe RLHF", eq. 6).
- :func:`dpo_pairs`: chosen/rejected for DPO-family methods under a *policy* that says how the two
  labels combine:

  ``better``             chosen = better response (helpfulness only; can prefer harmful compliance).
  ``safer``              chosen = safer response (harmlessness only).
  ``safer_then_better``  if exactly one response is safe, it is chosen (safety first); if both are
                         safe or both unsafe, the better one is chosen (helpfulness breaks the tie).
                         This is the default: it never prefers an unsafe response over a safe one, and
                         it still ranks a helpful answer above a needless refusal on a benign prompt.
"""

from __future__ import annotations

from typing import Iterable, Literal

from bench.data.schema import ChosenRejected, DataError

Policy = Literal["safer_then_better", "better", "safer"]
POLICIES: tuple[str, ...] = ("safer_then_better", "better", "safer")


def _pair(row: dict, chosen_id: int) -> ChosenRejected:
    r = 1 - chosen_id
    out: ChosenRejected = {
        "prompt": row["prompt"],
        "chosen": row[f"response_{chosen_id}"],
        "rejected": row[f"response_{r}"],
        "history": list(row.get("history") or []),
        "chosen_is_safe": row[f"is_response_{chosen_id}_safe"],
        "rejected_is_safe": row[f"is_response_{r}_safe"],
    }
    for k in ("id", "category"):
        if k in row:
            out[k] = row[k]  # type: ignore[literal-required]
    return out


def choose(row: dict, policy: Policy = "safer_then_better") -> int:
    """Index (0 or 1) of the chosen response of one PKU pair under ``policy``."""
    if policy == "better":
        return row["better_response_id"]
    if policy == "safer":
        return row["safer_response_id"]
    if policy == "safer_then_better":
        s0, s1 = row["is_response_0_safe"], row["is_response_1_safe"]
        if s0 != s1:
            return 0 if s0 else 1
        return row["better_response_id"]
    raise DataError("dpo_pairs", "policy", f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")


def better_pairs(rows: Iterable[dict]) -> list[ChosenRejected]:
    """Chosen = ``better_response_id`` (the reward model's preference data)."""
    return [_pair(r, r["better_response_id"]) for r in rows]


def safer_pairs(rows: Iterable[dict]) -> list[dict]:
    """``{prompt, history, safer, unsafer, safer_is_safe, unsafer_is_safe}`` by ``safer_response_id``
    (the cost model's data: ordering loss on safer/unsafer, sign loss on the two labels)."""
    out = []
    for r in rows:
        s = r["safer_response_id"]
        u = 1 - s
        d = {"prompt": r["prompt"], "history": list(r.get("history") or []),
             "safer": r[f"response_{s}"], "unsafer": r[f"response_{u}"],
             "safer_is_safe": r[f"is_response_{s}_safe"], "unsafer_is_safe": r[f"is_response_{u}_safe"]}
        for k in ("id", "category"):
            if k in r:
                d[k] = r[k]
        out.append(d)
    return out


def dpo_pairs(rows: Iterable[dict], policy: Policy = "safer_then_better") -> list[ChosenRejected]:
    """Chosen/rejected pairs for DPO-family training (see the module docstring for the policies).
    Rows already in the chosen/rejected schema (hh-rlhf) pass through unchanged for ``better``
    and ``safer_then_better``; ``safer`` needs safety labels and fails on them."""
    if policy not in POLICIES:
        raise DataError("dpo_pairs", "policy", f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    out: list[ChosenRejected] = []
    for i, r in enumerate(rows):
        if "chosen" in r:
            if policy == "safer":
                raise DataError(f"dpo_pairs row {i + 1}", "policy",
                                "policy 'safer' needs safety labels (PKU schema); this row is chosen/rejected only")
            out.append(r)  # type: ignore[arg-type]
        else:
            out.append(_pair(r, choose(r, policy)))
    return out
