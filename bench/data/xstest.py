"""XSTest (Röttger et al. 2024): 250 safe prompts that look unsafe and 200 unsafe contrasts.

Upstream schema ``id,prompt,type,label,focus,note`` (``xstest_prompts.csv`` or the hub copy
``Paul/XSTest``). ``label: safe`` becomes ``borderline``, ``unsafe`` becomes ``unsafe-contrast``;
``category`` is XSTest's ``type`` (``homonyms``, ``contrast_homonyms``, ...). Over-refusal is measured
on the ``borderline`` rows (:func:`bench.data.select_label`); the contrasts check that a model still
refuses the unsafe twin. One upstream split; ours are prompt-hash buckets.
"""

from __future__ import annotations

from bench.data.registry import Source, register
from bench.data.schema import DataError, require_str, validate_labelled_prompt

LABEL_MAP = {"safe": "borderline", "unsafe": "unsafe-contrast"}


@register("xstest", "Paul/XSTest", "xstest-v2", "natolambert/xstest-v2-copy")
class XSTest(Source):
    schema = "labelled_prompt"
    description = "XSTest v2 borderline-safe prompts and unsafe contrasts (CC BY 4.0)"
    hub_id = "Paul/XSTest"
    # NOT VERIFIED (no hub access): placeholder branch name and split name; pin a commit sha.
    revision = "main"
    upstream_splits = ("train",)
    split_policy = "hash"
    hash_fractions = (0.3, 0.2, 0.5)

    def convert(self, raw: dict, where: str) -> dict:
        prompt = require_str(raw, "prompt", where)
        typ = require_str(raw, "type", where)
        label = require_str(raw, "label", where)
        if label not in LABEL_MAP:
            raise DataError(where, "label", f"expected 'safe' or 'unsafe', got {label!r}")
        rid = raw.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid).strip() == "":
            raise DataError(where, "id", f"expected an id, got {rid!r}")
        row = {"id": f"xstest-{rid}", "prompt": prompt, "label": LABEL_MAP[label], "category": typ,
               "source": "xstest"}
        for k in ("focus", "note"):
            if isinstance(raw.get(k), str) and raw[k]:
                row[k] = raw[k]
        return validate_labelled_prompt(row, where)
