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

Each function takes an optional ``wheres`` (``LoadedDataset.wheres``: the source location of each row,
parallel to the rows). With it, every derived pair carries ``where`` (``<file>:<line>`` of its row)
and ``source_fields`` (which field of the row each response came from, e.g. ``{"chosen":
"response_1", "rejected": "response_0"}``), so a check made on the pair (a training stage's token
length) can name the row's file, line and field. Pair dicts are not hashed (the record's data
identity is ``rows_sha256`` of the rows) and the stages pass only the text fields on to TRL.
"""

from __future__ import annotations

import json
from typing import Iterable, Literal, Sequence

from bench.data.schema import ChosenRejected, DataError

Policy = Literal["safer_then_better", "better", "safer"]
POLICIES: tuple[str, ...] = ("safer_then_better", "better", "safer")


def _rows_with_wheres(rows: Iterable[dict], wheres: Sequence[str] | None) -> list[tuple[dict, str | None]]:
    rows = list(rows)
    if wheres is None:
        return [(r, None) for r in rows]
    if len(wheres) != len(rows):
        raise ValueError(f"wheres: {len(wheres)} locations for {len(rows)} rows (a bug in the caller)")
    return list(zip(rows, wheres))


def _locate(d: dict, where: str | None, source_fields: dict[str, str]) -> dict:
    if where is not None:
        d["where"] = where
        d["source_fields"] = source_fields
    return d


def _pair(row: dict, chosen_id: int, where: str | None = None) -> ChosenRejected:
    r = 1 - chosen_id
    out: ChosenRejected = {
        "prompt": row["prompt"],
        "chosen": row[f"response_{chosen_id}"],
        "rejected": row[f"response_{r}"],
        "history": list(row.get("history") or []),
        "chosen_is_safe": row[f"is_response_{chosen_id}_safe"],
        "rejected_is_safe": row[f"is_response_{r}_safe"],
    }
    for k in ("id", "category", "prompt_label"):
        if k in row:
            out[k] = row[k]  # type: ignore[literal-required]
    return _locate(out, where, {"chosen": f"response_{chosen_id}", "rejected": f"response_{r}"})  # type: ignore[return-value]


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


def better_pairs(rows: Iterable[dict], wheres: Sequence[str] | None = None) -> list[ChosenRejected]:
    """Chosen = ``better_response_id`` (the reward model's preference data)."""
    return [_pair(r, r["better_response_id"], w) for r, w in _rows_with_wheres(rows, wheres)]


def safer_pairs(rows: Iterable[dict], wheres: Sequence[str] | None = None) -> list[dict]:
    """``{prompt, history, safer, unsafer, safer_is_safe, unsafer_is_safe}`` by ``safer_response_id``
    (the cost model's data: ordering loss on safer/unsafer, sign loss on the two labels)."""
    out = []
    for r, w in _rows_with_wheres(rows, wheres):
        s = r["safer_response_id"]
        u = 1 - s
        d = {"prompt": r["prompt"], "history": list(r.get("history") or []),
             "safer": r[f"response_{s}"], "unsafer": r[f"response_{u}"],
             "safer_is_safe": r[f"is_response_{s}_safe"], "unsafer_is_safe": r[f"is_response_{u}_safe"]}
        for k in ("id", "category"):
            if k in r:
                d[k] = r[k]
        out.append(_locate(d, w, {"safer": f"response_{s}", "unsafer": f"response_{u}"}))
    return out


def overlong_error(pair: dict, field: str, n_tokens: int, setting: str, fallback_where: str,
                   fallback_field: str, index: int) -> DataError:
    """The error for a training example over ``setting`` (e.g. ``"dpo.max_length=256"``): at the
    pair's own row (``<file>:<line>`` and the response's source field) when it was derived with
    ``wheres``, else at ``fallback_where`` and the pair's id or position (on-policy pairs, callers
    without locations). ``field`` is the pair key of the response that made it too long."""
    tail = f"is {n_tokens} tokens, over {setting} (raise it or set data.on_invalid: skip)"
    if "where" in pair:
        return DataError(pair["where"], pair["source_fields"][field], f"prompt + this response {tail}")
    return DataError(fallback_where, fallback_field, f"pair {pair.get('id', index + 1)} {tail}")


def prompt_key(item: dict) -> tuple[str, str]:
    """What makes two rows or pairs the same prompt: the conversation history and the prompt."""
    return json.dumps(item.get("history") or []), item["prompt"]


def one_per_prompt(items: list[dict]) -> list[dict]:
    """The first row or pair of each distinct :func:`prompt_key`: a policy answers every prompt once."""
    seen, out = set(), []
    for it in items:
        key = prompt_key(it)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def unique_prompts(items: list[dict], cap: int) -> list[dict]:
    """One row or pair per distinct prompt, interleaved by ``prompt_label`` so a cap keeps every label;
    ``cap`` 0 keeps all."""
    out = interleave_by(one_per_prompt(items), "prompt_label")
    return out[:cap] if cap else out


def held_out(items: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """Pure: (the items whose prompt is not held out, one item per held-out prompt). The held-out
    prompts are the first ``n`` of :func:`unique_prompts`; ``sft.holdout_prompts`` keeps them out of
    SFT so that the on-policy DPO stage answers prompts its starting policy never imitated."""
    held = unique_prompts(items, n) if n else []
    keys = {prompt_key(it) for it in held}
    return [it for it in items if prompt_key(it) not in keys], held


def interleave_by(items: list[dict], key: str) -> list[dict]:
    """Round-robin over the groups of ``items[i][key]`` (in first-seen order), each group keeping its
    own order: a cap on the result then keeps every group represented (missing key: one group)."""
    groups: dict[object, list[dict]] = {}
    for it in items:
        groups.setdefault(it.get(key), []).append(it)
    out: list[dict] = []
    queues = [list(reversed(g)) for g in groups.values()]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop())
    return out


def dpo_pairs(rows: Iterable[dict], policy: Policy = "safer_then_better",
              wheres: Sequence[str] | None = None) -> list[ChosenRejected]:
    """Chosen/rejected pairs for DPO-family training (see the module docstring for the policies).
    Rows already in the chosen/rejected schema (hh-rlhf) pass through unchanged for ``better``
    and ``safer_then_better``; ``safer`` needs safety labels and fails on them."""
    if policy not in POLICIES:
        raise DataError("dpo_pairs", "policy", f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    out: list[ChosenRejected] = []
    for i, (r, w) in enumerate(_rows_with_wheres(rows, wheres)):
        if "chosen" in r:
            if policy == "safer":
                raise DataError(w or f"dpo_pairs row {i + 1}", "policy",
                                "policy 'safer' needs safety labels (PKU schema); this row is chosen/rejected only")
            # the row itself (a copy only when a location is added: the row stays as loaded)
            out.append(r if w is None else _locate(dict(r), w, {"chosen": "chosen", "rejected": "rejected"}))  # type: ignore[arg-type]
        else:
            out.append(_pair(r, choose(r, policy), w))
    return out
