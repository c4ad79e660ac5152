"""The PPO recipe's prompts: which prompts it trains on, in which order, and what each one asks for.

- :func:`training_prompts`: the unique prompts of the preference data's train split (harmful and
  benign mixed, as the PKU-style pairs have both) and the dataset identity the record names.
- :func:`fit_prompts`: those whose chat-formatted length leaves room for the response (a prompt is
  never cut: a cut prompt is another prompt).
- :func:`prompt_labels` / :func:`labels_of`: each prompt's ``prompt_label`` (the rule-based reward's
  target: :data:`SHOULD_REFUSE` labels call for a refusal); :func:`balance_by_label` cycles every
  label to the size of the largest (variant setting ``balance_prompts``).
- :func:`prompt_indices` / :func:`rollout_batch`: the step's prompts, a stream of per-epoch
  permutations seeded by the epoch, so each prompt is used once per epoch and step k draws the same
  prompts whether or not the run was interrupted before it (what makes resume exact).
- :func:`prompt_set_identity`: the record's identity of a prompt list given directly (a hash).

Why a module of its own: the data side of the recipe (which rows, which labels, which order) is
what a reader checks against the data registry, and it is independent of the optimisation. Used by
``bench/train/ppo.py`` (``make ppo PROFILE=...``) and ``bench.perf.units``; tested in
``tests/test_ppo.py`` (``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import hashlib
import json

import torch

from bench.config import PPOSection, ProfileConfig

SHOULD_REFUSE = ("harmful", "unsafe-contrast")  # prompt labels whose right behaviour is a refusal


def training_prompts(cfg: ProfileConfig) -> tuple[list[str], dict]:
    """Unique prompts of the train split of the preference data (harmful and benign prompts mixed,
    as the PKU-style pairs have both), and the dataset identity for the record."""
    from bench import data  # the registry; imported here so the recipe imports without it

    ds = data.load_role(cfg.data, "preferences", "train")
    prompts = list(dict.fromkeys(row["prompt"] for row in ds.rows))
    return prompts, ds.identity


def fit_prompts(prompts: list[str], tok, system_prompt: str | None, section: PPOSection) -> tuple[list[str], int]:
    """Prompts whose formatted length leaves room for ``max_new_tokens`` within ``max_length`` (never
    truncated: a cut prompt is another prompt); returns them and how many were skipped."""
    from bench import chat

    room = section.max_length - section.max_new_tokens
    kept = [p for p in prompts if len(tok(chat.format_prompt(tok, p, system_prompt), add_special_tokens=False)["input_ids"]) <= room]
    if not kept:
        from bench.config import ConfigError

        raise ConfigError(f"ppo: no prompt fits max_length={section.max_length} with max_new_tokens={section.max_new_tokens}")
    return kept, len(prompts) - len(kept)


# =============================================================================== prompt labels


def prompt_labels(cfg: ProfileConfig) -> dict[str, str]:
    """``prompt -> prompt_label`` of the preference train split (the rule-based reward's targets); a
    row without a label is left out, and a prompt given two labels is an error naming both rows."""
    from bench import data
    from bench.data.schema import DataError

    ds = data.load_role(cfg.data, "preferences", "train")
    first: dict[str, tuple[str, str]] = {}  # prompt -> (label, where it was first given)
    for row, where in zip(ds.rows, ds.wheres):
        label = row.get("prompt_label")
        if label is None:
            continue
        known, at = first.setdefault(row["prompt"], (label, where))
        if known != label:
            raise DataError(where, "prompt_label", f"{label!r} contradicts {known!r} given to the same prompt at {at}")
    return {p: label for p, (label, _) in first.items()}


def labels_of(cfg: ProfileConfig, name: str, prompts: list[str]) -> dict[str, str]:
    """``prompt -> prompt_label`` for every training prompt (the rule-based reward's targets and the
    label-balanced stream); a prompt without a label is a DataError naming the field."""
    from bench.data.schema import DataError

    labels = prompt_labels(cfg)
    missing = [p for p in prompts if p not in labels]
    if missing:
        raise DataError(f"{cfg.data.preferences}:train", "prompt_label",
                        f"ppo.variants.{name} (rule_reward / balance_prompts) needs a label for every training "
                        f"prompt; {len(missing)} of {len(prompts)} have none (first: {missing[0][:60]!r})")
    return {p: labels[p] for p in prompts}


def balance_by_label(prompts: list[str], labels: dict[str, str]) -> list[str]:
    """Every label's prompts cycled to the size of the largest label, interleaved label by label (in
    order of first appearance): a uniform draw from the result picks each label equally often."""
    groups: dict[str, list[str]] = {}
    for p in prompts:
        groups.setdefault(labels[p], []).append(p)
    size = max((len(g) for g in groups.values()), default=0)
    return [g[i % len(g)] for i in range(size) for g in groups.values()]


# =============================================================================== the stream


def prompt_indices(n: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the step's prompts (all ranks'): a stream of per-epoch permutations (seeded by the
    epoch), so each prompt is used once per epoch and the choice depends on the step alone. Which
    rows a rank takes is ``bench.train.ppo.own_rows``'s."""
    start = step * per_step
    out, perms = [], {}
    for k in range(start, start + per_step):
        epoch = k // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch)).tolist()
        out.append(perms[epoch][k % n])
    return out


def rollout_batch(prompts: list[str], rollout_prompts: int, group_size: int, step: int, seed: int) -> list[str]:
    """The step's global rollout prompts: ``rollout_prompts / group_size`` distinct prompts of the
    stream, each repeated ``group_size`` times in a row (one group)."""
    return [prompts[i] for i in prompt_indices(len(prompts), rollout_prompts // group_size, step, seed)
            for _ in range(group_size)]


def prompt_set_identity(prompts: list[str]) -> dict:
    blob = json.dumps(prompts, ensure_ascii=False).encode()
    return {"name": "prompts", "n": len(prompts), "sha256": hashlib.sha256(blob).hexdigest()}
