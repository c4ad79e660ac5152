"""HarmBench text behaviours (Mazeika et al. 2024).

Upstream schema: the official CSV (``harmbench_behaviors_text_all.csv``; columns ``Behavior,
FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``; CRLF line endings and quoted
multi-line cells) as a local file, or the hub copy ``walledai/HarmBench`` (``prompt,category`` and, in
its contextual config, ``context``). Contextual behaviours become ``context + "\\n\\n---\\n\\n" +
behavior`` (HarmBench's own prompt format). Copyright behaviours (song lyrics, book passages) are
not refusal tests and are filtered out by design; the count goes into ``identity['filtered']``.
"""

from __future__ import annotations

from bench.data.advbench import short_hash
from bench.data.registry import Source, register
from bench.data.schema import DataError, require_str, validate_labelled_prompt

CONTEXT_SEPARATOR = "\n\n---\n\n"
KEPT_FUNCTIONAL = ("standard", "contextual")


@register("harmbench", "walledai/HarmBench", "harmbench-text")
class HarmBench(Source):
    schema = "labelled_prompt"
    description = "HarmBench text behaviours, standard + contextual (MIT)"
    hub_id = "walledai/HarmBench"
    hub_config = "standard"
    # NOT VERIFIED (no hub access): placeholder branch name; pin a commit sha for reported runs.
    revision = "main"
    upstream_splits = ("train",)
    split_policy = "hash"
    hash_fractions = (0.3, 0.2, 0.5)

    def convert(self, raw: dict, where: str) -> dict | None:
        if "Behavior" in raw or "prompt" not in raw:  # official CSV schema
            behavior = require_str(raw, "Behavior", where)
            functional = require_str(raw, "FunctionalCategory", where)
            if functional not in KEPT_FUNCTIONAL + ("copyright",):
                raise DataError(where, "FunctionalCategory",
                                f"expected one of standard, contextual, copyright, got {functional!r}")
            if functional == "copyright":
                return None
            category = require_str(raw, "SemanticCategory", where)
            context = raw.get("ContextString") or ""
            if not isinstance(context, str):
                raise DataError(where, "ContextString", f"expected a string, got {type(context).__name__}")
            if functional == "contextual" and not context.strip():
                raise DataError(where, "ContextString", "empty for a contextual behaviour")
            bid = raw.get("BehaviorID") or f"harmbench-{short_hash(behavior)}"
            if not isinstance(bid, str):
                raise DataError(where, "BehaviorID", f"expected a string, got {type(bid).__name__}")
            prompt = context.strip() + CONTEXT_SEPARATOR + behavior if context.strip() else behavior
            row = {"id": bid, "prompt": prompt, "label": "harmful", "category": category,
                   "source": "harmbench", "functional_category": functional}
        else:  # hub copy
            behavior = require_str(raw, "prompt", where)
            category = require_str(raw, "category", where)
            context = raw.get("context") or ""
            prompt = context.strip() + CONTEXT_SEPARATOR + behavior if context.strip() else behavior
            row = {"id": f"harmbench-{short_hash(prompt)}", "prompt": prompt, "label": "harmful",
                   "category": category, "source": "harmbench"}
        return validate_labelled_prompt(row, where)
