"""Sample schemas of the data registry (TypedDicts) and one validation function per schema.

Every loader turns its upstream rows into one of four shapes:

- :class:`PKUPair`: a prompt with two responses, safety labels per response and two preferences
  (``better_response_id`` for helpfulness, ``safer_response_id`` for harmlessness), as in
  PKU-SafeRLHF. The embedded preference data uses this schema too.
- :class:`ChosenRejected`: a plain preference pair (Anthropic hh-rlhf), with the earlier turns of a
  multi-turn conversation in ``history``.
- :class:`LabelledPrompt`: a prompt labelled ``harmful``, ``benign``, ``borderline`` (a safe request that
  looks unsafe, XSTest's "safe" prompts) or ``unsafe-contrast`` (XSTest's unsafe contrasts).
- :class:`HelpfulnessItem`: an instruction with a reference answer (AlpacaEval).

A ``validate_*`` function checks one raw row and returns it normalised; any problem is a
:class:`DataError` whose message names the file (or hub id and split), the 1-based line or row and
the field, e.g. ``tasks/data/pairs_train.jsonl:17: field 'better_response_id': expected 0 or 1, got 2``.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

try:  # NotRequired is typing-native from 3.11
    from typing import NotRequired
except ImportError:  # pragma: no cover
    from typing_extensions import NotRequired


class DataError(ValueError):
    """Invalid data; the message names file, line and field. ``field`` and ``where`` are kept for
    the skip counter of ``on_invalid: skip``."""

    def __init__(self, where: str, field: str | None, message: str):
        self.where = where
        self.field = field
        self.reason = message
        text = f"{where}: field '{field}': {message}" if field else f"{where}: {message}"
        super().__init__(text)


LABELS = ("harmful", "benign", "borderline", "unsafe-contrast")
ROLES = ("user", "assistant")


class Message(TypedDict):
    role: Literal["user", "assistant"]
    content: str


class PKUPair(TypedDict):
    prompt: str
    response_0: str
    response_1: str
    is_response_0_safe: bool
    is_response_1_safe: bool
    better_response_id: int  # 0 or 1: the more helpful response (judged independently of harm)
    safer_response_id: int  # 0 or 1: the more harmless response
    # optional, kept when present (PKU-SafeRLHF v1 and the embedded data)
    id: NotRequired[str]
    category: NotRequired[str]  # embedded: harm category of the prompt, or benign / borderline
    kind: NotRequired[str]  # embedded: how the pair was formed, e.g. refusal_vs_compliance
    prompt_source: NotRequired[str]
    response_0_source: NotRequired[str]
    response_1_source: NotRequired[str]
    response_0_harm_category: NotRequired[dict[str, bool]]
    response_1_harm_category: NotRequired[dict[str, bool]]
    response_0_severity_level: NotRequired[int]
    response_1_severity_level: NotRequired[int]
    response_0_sha256: NotRequired[str]
    response_1_sha256: NotRequired[str]


class ChosenRejected(TypedDict):
    prompt: str  # the final user turn
    chosen: str
    rejected: str
    history: list[Message]  # turns before the final user turn ([] for single-turn)
    id: NotRequired[str]
    category: NotRequired[str]
    prompt_label: NotRequired[str]  # embedded data: harmful / benign / borderline / unsafe-contrast
    chosen_is_safe: NotRequired[bool]
    rejected_is_safe: NotRequired[bool]


class LabelledPrompt(TypedDict):
    id: str
    prompt: str
    label: Literal["harmful", "benign", "borderline", "unsafe-contrast"]
    category: str
    source: str
    harm_category: NotRequired[str]  # embedded unsafe contrasts: the harm category they belong to
    trigger: NotRequired[str]  # embedded borderline-safe prompts: the split key (bench.data.trigger_split)
    frame: NotRequired[str]  # embedded borderline-safe prompts: "<split>-<i>", its frame in borderline_text


class HelpfulnessItem(TypedDict):
    id: str
    instruction: str
    reference: str
    category: NotRequired[str]
    source: NotRequired[str]


# --------------------------------------------------------------------------- field checks


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def require_str(row: dict, field: str, where: str, nonempty: bool = True) -> str:
    if field not in row:
        raise DataError(where, field, "missing")
    v = row[field]
    if not isinstance(v, str):
        raise DataError(where, field, f"expected a string, got {_type(v)} {_short(v)}")
    if nonempty and not v.strip():
        raise DataError(where, field, "empty")
    return v


def require_bool(row: dict, field: str, where: str) -> bool:
    if field not in row:
        raise DataError(where, field, "missing")
    v = row[field]
    if not isinstance(v, bool):
        raise DataError(where, field, f"expected true or false, got {_type(v)} {_short(v)}")
    return v


def require_id01(row: dict, field: str, where: str) -> int:
    if field not in row:
        raise DataError(where, field, "missing")
    v = row[field]
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 1):
        raise DataError(where, field, f"expected 0 or 1, got {_short(v)}")
    return v


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


# --------------------------------------------------------------------------- validators


def validate_pku(row: dict, where: str) -> PKUPair:
    """A PKU-SafeRLHF pair: required fields typed and non-empty, two different responses, and
    safety labels consistent with ``safer_response_id`` (PKU ranks a safe response above an unsafe
    one, so pointing ``safer_response_id`` at the unsafe one of a safe/unsafe pair is a contradiction;
    safe-rlhf crashes on such rows)."""
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, got {_type(row)}")
    out = dict(row)
    require_str(row, "prompt", where)
    r0 = require_str(row, "response_0", where)
    r1 = require_str(row, "response_1", where)
    s0 = require_bool(row, "is_response_0_safe", where)
    s1 = require_bool(row, "is_response_1_safe", where)
    require_id01(row, "better_response_id", where)
    safer = require_id01(row, "safer_response_id", where)
    if _same(r0, r1):
        raise DataError(where, "response_1", "identical to response_0 (a pair needs two different responses)")
    safe = (s0, s1)
    if safe[safer] is False and safe[1 - safer] is True:
        raise DataError(where, "safer_response_id",
                        f"contradictory labels: points at response_{safer}, which is marked unsafe, "
                        f"while response_{1 - safer} is marked safe")
    for k in ("id", "category", "kind", "prompt_source"):
        if k in row and row[k] is not None and not isinstance(row[k], str):
            raise DataError(where, k, f"expected a string, got {_type(row[k])} {_short(row[k])}")
    return out  # type: ignore[return-value]


def validate_message_list(value: Any, field: str, where: str) -> list[Message]:
    if not isinstance(value, list):
        raise DataError(where, field, f"expected a list of messages, got {_type(value)}")
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise DataError(where, f"{field}[{i}]", "expected {role, content}")
        if m["role"] not in ROLES:
            raise DataError(where, f"{field}[{i}].role", f"expected one of {ROLES}, got {_short(m['role'])}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise DataError(where, f"{field}[{i}].content", "expected a non-empty string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def validate_chosen_rejected(row: dict, where: str) -> ChosenRejected:
    """A chosen/rejected pair: non-empty prompt and responses that differ; ``history`` a list of
    alternating ``{role, content}`` turns (defaults to [])."""
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, got {_type(row)}")
    out = dict(row)
    require_str(row, "prompt", where)
    chosen = require_str(row, "chosen", where)
    rejected = require_str(row, "rejected", where)
    if _same(chosen, rejected):
        raise DataError(where, "rejected", "identical to chosen")
    out["history"] = validate_message_list(row.get("history", []), "history", where)
    return out  # type: ignore[return-value]


def validate_labelled_prompt(row: dict, where: str) -> LabelledPrompt:
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, got {_type(row)}")
    for f in ("id", "prompt", "category", "source"):
        require_str(row, f, where)
    label = require_str(row, "label", where)
    if label not in LABELS:
        raise DataError(where, "label", f"expected one of {', '.join(LABELS)}, got {_short(label)}")
    return dict(row)  # type: ignore[return-value]


def validate_helpfulness(row: dict, where: str) -> HelpfulnessItem:
    if not isinstance(row, dict):
        raise DataError(where, None, f"expected an object, got {_type(row)}")
    for f in ("id", "instruction", "reference"):
        require_str(row, f, where)
    return dict(row)  # type: ignore[return-value]


VALIDATORS = {
    "pku": validate_pku,
    "chosen_rejected": validate_chosen_rejected,
    "labelled_prompt": validate_labelled_prompt,
    "helpfulness": validate_helpfulness,
}


def prompt_key(row: dict) -> str:
    """What 'the same prompt' means for split disjointness: whitespace-normalised prompt text
    (for multi-turn rows, the whole context before the answer)."""
    text = row.get("prompt", row.get("instruction", ""))
    hist = row.get("history") or []
    parts = [f"{m['role']}: {m['content']}" for m in hist] + [text]
    return " ".join("\n".join(parts).split())


def row_categories(row: dict) -> list[str]:
    """Categories used by ``bench data stats``: the row's own ``category`` if any; for real PKU
    rows, every harm category flagged on either response (a row may count in several), else
    'no-harm-category'."""
    cat = row.get("category")
    if isinstance(cat, str) and cat:
        return [cat]
    flagged: set[str] = set()
    for k in ("response_0_harm_category", "response_1_harm_category"):
        d = row.get(k)
        if isinstance(d, dict):
            flagged.update(name for name, on in d.items() if on)
    if flagged:
        return sorted(flagged)
    if "is_response_0_safe" in row:
        return ["no-harm-category"]
    return ["uncategorized"]
