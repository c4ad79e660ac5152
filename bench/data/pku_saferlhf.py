"""PKU-SafeRLHF (Ji et al. 2024): prompts with two responses, per-response safety labels and
separate helpfulness (``better_response_id``) and harmlessness (``safer_response_id``) preferences.

Hub: ``PKU-Alignment/PKU-SafeRLHF`` (splits train/test; our validation is carved from train by prompt
hash). License CC BY-NC 4.0: loaded at run time, never redistributed by this project.

    bench data stats --profile llama2-7b-v100
"""

from __future__ import annotations

from bench.data.registry import Source, register
from bench.data.schema import validate_pku


@register("pku-saferlhf", "PKU-SafeRLHF", "PKU-Alignment/PKU-SafeRLHF", "pku")
class PKUSafeRLHF(Source):
    schema = "pku"
    description = "PKU-SafeRLHF preference pairs with safety labels (v1 schema; CC BY-NC 4.0)"
    hub_id = "PKU-Alignment/PKU-SafeRLHF"
    hub_config = "default"
    # NOT VERIFIED: no hub access here. "main" is a placeholder; replace it with the commit sha of the
    # revision a paper-scale profile reports (identity['revision_is_commit'] flags it meanwhile).
    # The older v0 schema (no severity fields) is the tag "v0": use the name "pku-saferlhf@v0".
    revision = "main"
    revision_verified = False
    upstream_splits = ("train", "test")
    split_policy = "carve_validation"

    def convert(self, raw: dict, where: str) -> dict:
        return validate_pku(raw, where)
