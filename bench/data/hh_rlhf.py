"""Anthropic hh-rlhf (Bai et al. 2022): chosen/rejected *transcripts*
(``\\n\\nHuman: ...\\n\\nAssistant: ...``), parsed into chat messages.

The two transcripts of a pair share every turn but the last assistant answer; the parsed row keeps
the shared earlier turns in ``history``, the final user turn as ``prompt`` and the two final answers
as ``chosen``/``rejected``. A pair whose transcripts differ before the final answer, that does not
alternate Human/Assistant, or whose final answer is empty is a bad row.

Hub: ``Anthropic/hh-rlhf`` (splits train/test; validation carved from train). MIT license.
"""

from __future__ import annotations

import re

from bench.data.registry import Source, register
from bench.data.schema import DataError, Message, validate_chosen_rejected

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str, where: str, field: str) -> list[Message]:
    """``\\n\\nHuman: a\\n\\nAssistant: b ...`` -> ``[{role: user, content: a}, {role: assistant, ...}]``."""
    if not isinstance(text, str):
        raise DataError(where, field, f"expected a transcript string, got {type(text).__name__}")
    if text.startswith("Human:"):
        text = "\n\n" + text
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError(where, field, "text before the first '\\n\\nHuman:' turn")
    turns: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": _ROLE[speaker], "content": content.strip()})  # type: ignore[typeddict-item]
    if len(turns) < 2:
        raise DataError(where, field, "expected at least one Human turn and one Assistant turn")
    for i, t in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if t["role"] != want:
            raise DataError(where, field, f"turn {i + 1} is {t['role']}, expected {want} (turns must alternate)")
    if turns[-1]["role"] != "assistant":
        raise DataError(where, field, "transcript does not end with an Assistant turn")
    for i, t in enumerate(turns[:-1]):
        if not t["content"]:
            raise DataError(where, field, f"turn {i + 1} ({t['role']}) is empty")
    if not turns[-1]["content"]:
        raise DataError(where, field, "empty final Assistant response")
    return turns


def convert_hh(raw: dict, where: str) -> dict:
    for f in ("chosen", "rejected"):
        if f not in raw:
            raise DataError(where, f, "missing")
    chosen = parse_transcript(raw["chosen"], where, "chosen")
    rejected = parse_transcript(raw["rejected"], where, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(where, "rejected", "conversation before the final answer differs from 'chosen'")
    row = {"prompt": chosen[-2]["content"], "chosen": chosen[-1]["content"],
           "rejected": rejected[-1]["content"], "history": chosen[:-2]}
    return validate_chosen_rejected(row, where)


@register("hh-rlhf", "Anthropic/hh-rlhf", "hh")
class HHRLHF(Source):
    schema = "chosen_rejected"
    description = "Anthropic hh-rlhf, all subsets (chosen/rejected transcripts; MIT)"
    hub_id = "Anthropic/hh-rlhf"
    data_dir: str | None = None
    # Corroborated by several public codebases as hh-rlhf's `main` (last modified 2023-05-26); not
    # verified against the hub from here (no network).
    revision = "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa"
    revision_verified = False
    upstream_splits = ("train", "test")
    split_policy = "carve_validation"

    def hub_rows(self, upstream_split: str) -> list[dict]:
        import datasets

        from bench.data.registry import to_rows

        ds = datasets.load_dataset(self.hub_id, data_dir=self.data_dir, split=upstream_split, revision=self.revision)
        return to_rows(ds)

    def hub_where(self, upstream_split: str) -> str:
        sub = f"/{self.data_dir}" if self.data_dir else ""
        return f"hub:{self.hub_id}{sub}@{self.revision}[{upstream_split}]"

    def convert(self, raw: dict, where: str) -> dict:
        return convert_hh(raw, where)


@register("hh-rlhf-harmless", "harmless-base")
class HHRLHFHarmless(HHRLHF):
    description = "Anthropic hh-rlhf harmless-base subset"
    data_dir = "harmless-base"


@register("hh-rlhf-helpful", "helpful-base")
class HHRLHFHelpful(HHRLHF):
    description = "Anthropic hh-rlhf helpful-base subset"
    data_dir = "helpful-base"
