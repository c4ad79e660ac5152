"""Dataset registry, sample schemas and derived pair views (see ``bench/data/registry.py``).

    from bench.data import load, load_role, dpo_pairs
    ds = load_role(cfg.data, "preferences", "train")
    pairs = dpo_pairs(ds.rows, "safer_then_better")

Importing this package registers every source (no I/O, no hub access at import time).
"""

# sources register themselves on import
from bench.data import advbench, alpaca_eval, embedded, harmbench, hh_rlhf, pku_saferlhf, xstest  # noqa: E402,F401
from bench.data.pairs import POLICIES, better_pairs, choose, dpo_pairs, safer_pairs
from bench.data.registry import (
    ROLES,
    SPLITS,
    LoadedDataset,
    Source,
    get_source,
    known_names,
    load,
    load_role,
    register,
    select_label,
)
from bench.data.schema import (
    ChosenRejected,
    DataError,
    HelpfulnessItem,
    LabelledPrompt,
    PKUPair,
    prompt_key,
    row_categories,
    validate_chosen_rejected,
    validate_helpfulness,
    validate_labelled_prompt,
    validate_pku,
)

__all__ = [
    "POLICIES", "ROLES", "SPLITS", "ChosenRejected", "DataError", "HelpfulnessItem", "LabelledPrompt",
    "LoadedDataset", "PKUPair", "Source", "better_pairs", "choose", "dpo_pairs", "get_source", "known_names",
    "load", "load_role", "prompt_key", "register", "row_categories", "safer_pairs", "select_label",
    "validate_chosen_rejected", "validate_helpfulness", "validate_labelled_prompt", "validate_pku",
]
