"""AlpacaEval (Li et al. 2023): 805 instructions with a reference output.

Upstream schema ``instruction,output,generator,dataset`` (``alpaca_eval.json``, a JSON array). The hub
repo ``tatsu-lab/alpaca_eval`` is script-based, which ``datasets`` >= 4 no longer runs, so the hub path
reads the JSON file itself at the pinned revision. Two views:

- ``alpaca-eval``: :class:`HelpfulnessItem` (instruction + reference = the reference output);
- ``alpaca-eval-benign``: the same instructions as benign :class:`LabelledPrompt` (over-refusal).
"""

from __future__ import annotations

from bench.data.advbench import short_hash
from bench.data.registry import Source, register, to_rows
from bench.data.schema import require_str, validate_helpfulness, validate_labelled_prompt


class _AlpacaBase(Source):
    hub_id = "tatsu-lab/alpaca_eval"
    # NOT VERIFIED (no hub access): placeholder branch name; pin a commit sha for reported runs.
    revision = "main"
    upstream_splits = ("eval",)
    split_policy = "hash"
    hash_fractions = (0.2, 0.2, 0.6)
    hub_file = "alpaca_eval.json"

    def hub_rows(self, upstream_split: str) -> list[dict]:
        import datasets
        from huggingface_hub import hf_hub_download

        # A file download (not an hf:// data_files path) so an offline run reads it from HF_HOME.
        path = hf_hub_download(self.hub_id, self.hub_file, repo_type="dataset", revision=self.revision)
        return to_rows(datasets.load_dataset("json", data_files=path, split="train"))

    def hub_where(self, upstream_split: str) -> str:
        return f"hub:{self.hub_id}@{self.revision}/{self.hub_file}"


@register("alpaca-eval", "alpaca_eval", "tatsu-lab/alpaca_eval")
class AlpacaEval(_AlpacaBase):
    schema = "helpfulness"
    description = "AlpacaEval instructions with reference outputs (CC BY-NC 4.0)"

    def convert(self, raw: dict, where: str) -> dict:
        instruction = require_str(raw, "instruction", where)
        output = require_str(raw, "output", where)
        row = {"id": f"alpaca_eval-{short_hash(instruction)}", "instruction": instruction, "reference": output,
               "source": "alpaca_eval"}
        if isinstance(raw.get("dataset"), str):
            row["category"] = raw["dataset"]
        if isinstance(raw.get("generator"), str):
            row["generator"] = raw["generator"]
        return validate_helpfulness(row, where)


@register("alpaca-eval-benign", "alpaca_eval-benign")
class AlpacaEvalBenign(_AlpacaBase):
    schema = "labelled_prompt"
    description = "AlpacaEval instructions as benign prompts (over-refusal)"

    def convert(self, raw: dict, where: str) -> dict:
        instruction = require_str(raw, "instruction", where)
        cat = raw.get("dataset") if isinstance(raw.get("dataset"), str) and raw.get("dataset") else "alpaca_eval"
        row = {"id": f"alpaca_eval-{short_hash(instruction)}", "prompt": instruction, "label": "benign",
               "category": cat, "source": "alpaca_eval"}
        return validate_labelled_prompt(row, where)
