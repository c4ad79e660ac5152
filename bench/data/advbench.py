"""AdvBench harmful behaviours (Zou et al. 2023): 520 harmful requests with a target prefix.

Upstream schemas: the llm-attacks CSV ``harmful_behaviors.csv`` (``goal,target``) as a local file, or
the hub copy ``walledai/AdvBench`` (``prompt,target``). Rows become harmful :class:`LabelledPrompt`s
with category ``uncategorized`` (AdvBench has none). One upstream split; ours are prompt-hash buckets.
"""

from __future__ import annotations

import hashlib

from bench.data.registry import Source, register
from bench.data.schema import DataError, require_str, validate_labelled_prompt


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@register("advbench", "walledai/AdvBench", "harmful_behaviors")
class AdvBench(Source):
    schema = "labelled_prompt"
    description = "AdvBench harmful behaviours (goal,target; MIT)"
    hub_id = "walledai/AdvBench"
    # NOT VERIFIED (no hub access): placeholder branch name; pin a commit sha for reported runs.
    revision = "main"
    upstream_splits = ("train",)
    split_policy = "hash"
    hash_fractions = (0.3, 0.2, 0.5)

    def convert(self, raw: dict, where: str) -> dict:
        field = "goal" if "goal" in raw or "prompt" not in raw else "prompt"
        prompt = require_str(raw, field, where)
        if "target" in raw and raw["target"] is not None and not isinstance(raw["target"], str):
            raise DataError(where, "target", f"expected a string, got {type(raw['target']).__name__}")
        row = {"id": f"advbench-{short_hash(prompt)}", "prompt": prompt, "label": "harmful",
               "category": "uncategorized", "source": "advbench"}
        if raw.get("target"):
            row["target"] = raw["target"]
        return validate_labelled_prompt(row, where)
