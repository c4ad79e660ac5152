"""The project's own embedded data (``tasks/data/``), authored by ``python -m bench.data.build_embedded``.

Five datasets, each with train / validation / test files (``tasks/data/<stem>_<split>.jsonl``),
disjoint by prompt (the loader checks it) and, for harmful prompts, by underlying request. See
``tasks/data/DATA_CARD.md``.
"""

from __future__ import annotations

from bench.config import REPO_ROOT
from bench.data.registry import Source, register

DATA_DIR = REPO_ROOT / "tasks" / "data"


class _Embedded(Source):
    stem = ""
    upstream_splits = ("train", "validation", "test")
    split_policy = "upstream"

    def default_local(self) -> str:
        return str(DATA_DIR / f"{self.stem}_{{split}}.jsonl")


@register("embedded-pairs", "embedded-preferences")
class EmbeddedPairs(_Embedded):
    schema = "pku"
    stem = "pairs"
    description = "embedded preference pairs in the PKU-SafeRLHF schema (Apache-2.0)"


@register("embedded-harmful")
class EmbeddedHarmful(_Embedded):
    schema = "labelled_prompt"
    stem = "harmful"
    description = "embedded harmful requests, 10 harm categories (Apache-2.0)"


@register("embedded-benign")
class EmbeddedBenign(_Embedded):
    schema = "labelled_prompt"
    stem = "benign"
    description = "embedded benign requests (Apache-2.0)"


@register("embedded-borderline")
class EmbeddedBorderline(_Embedded):
    schema = "labelled_prompt"
    stem = "borderline"
    description = ("embedded borderline-safe prompts (XSTest types; held-out splits on unseen triggers) and unsafe "
                   "contrasts (Apache-2.0)")


@register("embedded-helpfulness")
class EmbeddedHelpfulness(_Embedded):
    schema = "helpfulness"
    stem = "helpfulness"
    description = "embedded helpfulness instructions with reference answers (Apache-2.0)"
