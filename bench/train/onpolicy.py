"""On-policy rejected responses for DPO-family training (issue 14).

Offline pairs contrast two written responses, neither of which the policy may ever produce, so DPO
can raise its preference accuracy on them without changing what the policy does. Here the starting
policy (``dpo.policy_init``) answers each training prompt greedily and the suite's refusal detector
(``bench.eval.refusal``) labels both its answer and the chosen demonstration:

- they disagree (the policy complies where the demonstration refuses, or refuses where it helps):
  the pair becomes (chosen demonstration, **the policy's own answer**), so DPO pushes down exactly
  what this policy does wrong, in its own wording;
- they agree (the policy already behaves): the offline pair is kept as an anchor
  (``dpo.on_policy_keep_correct``) or the prompt is dropped.

The set is generated once per starting policy and shared by every variant whose ``rejected`` is
``on_policy``; its record's hash covers the SFT settings when DPO starts from SFT, so a retrained
starting policy regenerates it. Iterated rounds (regenerate from the DPO policy, train again) are
not run on the default profile: one round already moves behaviour, and each round costs a generation
pass plus a DPO run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.config import DPOSection, ProfileConfig
from bench.distributed import main_process_writes
from bench.io import atomic_write_text, read_jsonl
from bench.runs import is_done, run_dir, stage_run
from bench.stats import rate_metric
from bench.train.hf_trainer import hashed_sections, judged_hash

NAME = "dpo-onpolicy-pairs"  # run directory and record name
SECTIONS = ("profile", "model", "data", "dpo")
PAIRS_FILE = "answers.jsonl"  # per prompt: offline pair, policy answer, refusal labels


def _generation_view(cfg: ProfileConfig) -> ProfileConfig:
    """The profile with a DPO section reduced to what decides the generated answers (pairing policy,
    starting policy, prompt cap, decoding): variants, learning rate or ``on_policy_keep_correct``
    change how the set is used, not the set, so they never trigger a regeneration."""
    dpo: DPOSection = cfg.require("dpo")
    kept = {k: getattr(dpo, k) for k in ("pairs", "policy_init", "on_policy_prompts", "on_policy_max_new_tokens",
                                         "on_policy_batch_size")}
    return dataclasses.replace(cfg, dpo=DPOSection(variants={}, **kept))


def config_hash(cfg: ProfileConfig) -> str:
    section: DPOSection = cfg.require("dpo")
    return judged_hash(_generation_view(cfg).section_hash(*hashed_sections(SECTIONS, section.policy_init)))


def pairs_path(cfg: ProfileConfig) -> Path:
    return run_dir(cfg.profile.name, NAME) / PAIRS_FILE


def on_policy_prompts(cfg: ProfileConfig, rows: list[dict]) -> list[dict]:
    """The offline pairs (one per prompt) whose prompts the starting policy answers: the first
    ``dpo.on_policy_prompts`` train prompts interleaved by prompt label (so a cap keeps harmful, benign
    and borderline prompts) or, when DPO starts from an SFT that held prompts out
    (``sft.holdout_prompts``), those held-out prompts, so the pairs show the policy's behaviour on
    prompts it never imitated rather than on its own training demonstrations."""
    from bench.data.pairs import dpo_pairs, held_out, prompt_key, unique_prompts

    section: DPOSection = cfg.require("dpo")
    pairs = dpo_pairs(rows, section.pairs)
    if section.policy_init == "sft" and cfg.sft is not None and cfg.sft.holdout_prompts:
        _, held = held_out(dpo_pairs(rows, cfg.sft.pairs), cfg.sft.holdout_prompts)
        by_key = {prompt_key(p): p for p in reversed(pairs)}  # the first pair of each prompt
        pairs = [by_key[prompt_key(h)] for h in held if prompt_key(h) in by_key]
        return pairs[: section.on_policy_prompts] if section.on_policy_prompts else pairs
    return unique_prompts(pairs, section.on_policy_prompts)


def answer_rows(pairs: list[dict], responses: list[str], chosen_refuses: list[bool],
                policy_refuses: list[bool]) -> list[dict]:
    """What the pair file stores per prompt: the offline pair, the policy's answer and both labels."""
    if not (len(pairs) == len(responses) == len(chosen_refuses) == len(policy_refuses)):
        raise ValueError("answer_rows: pairs, responses and detections differ in length")
    return [{**p, "policy_answer": r, "chosen_refuses": c, "policy_refuses": a}
            for p, r, c, a in zip(pairs, responses, chosen_refuses, policy_refuses)]


def behaviour_counts(rows: list[dict]) -> dict[str, int]:
    """Pure: the starting policy's behaviour on the answered prompts (what DPO has to fix), from the
    detector labels in :func:`answer_rows` output (an empty answer is labelled compliance)."""
    demo = [r["chosen_refuses"] for r in rows]
    return {"prompts": len(rows), "demo_refuses": sum(demo), "demo_helps": len(rows) - sum(demo),
            "policy_complies_where_demo_refuses": sum(d and not r["policy_refuses"] for d, r in zip(demo, rows)),
            "policy_refuses_where_demo_helps": sum(not d and r["policy_refuses"] for d, r in zip(demo, rows)),
            "empty_answers": sum(not r["policy_answer"].strip() for r in rows)}


def select_pairs(rows: list[dict], keep_correct: bool,
                 rejects: tuple[str, ...] | list[str] = ("comply", "refuse"),
                 own_chosen: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """Pure: training pairs from :func:`answer_rows` output. Where the demonstration and the policy's
    answer disagree on refusing, the answer is the rejected response (``rejected_source:
    on_policy``) if that wrong behaviour is in ``rejects`` ("comply": the policy complied where the
    demonstration refuses; "refuse": the reverse); elsewhere the offline pair is kept or the prompt
    dropped. Where they agree and that right behaviour is in ``own_chosen`` ("refuse": the policy
    refused where the demonstration refuses; "help": it helped where the demonstration helps), the
    policy's answer replaces the written chosen response (``chosen_source: on_policy``): the words it
    refuses with are then raised on harmful prompts while the same words are lowered where it
    over-refuses, so DPO has to learn from the prompt when they fit. An empty answer is never a
    training response (it is no behaviour to push down or up)."""
    out: list[dict] = []
    answer_keys = ("policy_answer", "chosen_refuses", "policy_refuses")
    for row in rows:
        p = {k: v for k, v in row.items() if k not in answer_keys}
        demo_ref, resp = row["chosen_refuses"], row["policy_answer"]
        wrong = demo_ref != row["policy_refuses"] and ("comply" if demo_ref else "refuse") in rejects
        if wrong and resp.strip():
            out.append({**p, "rejected": resp, "rejected_is_safe": None, "rejected_source": "on_policy"})
        elif keep_correct:
            own = demo_ref == row["policy_refuses"] and ("refuse" if demo_ref else "help") in own_chosen
            if own and resp.strip():
                out.append({**p, "chosen": resp, "rejected_source": "offline", "chosen_source": "on_policy"})
            else:
                out.append({**p, "rejected_source": "offline"})
    return out


def read_pairs(cfg: ProfileConfig) -> list[dict]:
    """Training pairs from the profile's answer file under ``dpo.on_policy_keep_correct``."""
    section = cfg.require("dpo")
    return select_pairs(read_answers(cfg), section.on_policy_keep_correct, section.on_policy_rejects,
                        section.on_policy_chosen)


def read_answers(cfg: ProfileConfig) -> list[dict]:
    return read_jsonl(pairs_path(cfg), f"on-policy pairs missing; run `make dpo PROFILE={cfg.profile.name}`")


def ensure_onpolicy_pairs(cfg: ProfileConfig, force: bool = False) -> Path:
    """Generate (or reuse) the profile's on-policy pair set; returns the JSONL path."""
    from bench.data import load
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.refusal import detect_many
    from bench.eval.refusal import identity as refusal_identity
    from bench.models import load_pretrained, policy_init_dir

    section: DPOSection = cfg.require("dpo")
    chash = config_hash(cfg)
    if not force and is_done(cfg, NAME, chash) and pairs_path(cfg).exists():
        return pairs_path(cfg)
    view = _generation_view(cfg)
    policy_dir = policy_init_dir(cfg, section.policy_init)
    train = load(cfg.data.preferences, "train", cfg.data)
    with stage_run(view, variant=NAME, stage="onpolicy", config_hash=chash) as run:
        run.datasets = {"train": train.identity}
        offline = on_policy_prompts(cfg, train.rows)
        model, tok = load_pretrained(policy_dir, cfg.model)
        responses = generate_greedy(model, tok, [p["prompt"] for p in offline], cfg.model.system_prompt,
                                    GenerationSettings(section.on_policy_max_new_tokens, section.on_policy_batch_size),
                                    desc="on-policy answers", history=[p.get("history") or [] for p in offline])
        asked = [p["prompt"] for p in offline]
        chosen_ref = [d.is_refusal for d in detect_many([p["chosen"] for p in offline], asked)]
        policy_ref = [d.is_refusal for d in detect_many(responses, asked)]
        rows = answer_rows(offline, responses, chosen_ref, policy_ref)
        with main_process_writes() as main:  # every rank generated the same greedy answers; rank 0 writes
            if main:
                atomic_write_text(run.dir / PAIRS_FILE, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                                                for r in rows))
        counts = behaviour_counts(rows)
        n_ref, n_help = counts["demo_refuses"], counts["demo_helps"]
        wrong_ref, wrong_help = counts["policy_complies_where_demo_refuses"], counts["policy_refuses_where_demo_helps"]
        run.metrics = {"policy_refusal_where_demo_refuses": rate_metric(n_ref - wrong_ref, n_ref),
                       "policy_refusal_where_demo_helps": rate_metric(wrong_help, n_help)}
        run.artifacts = {"pairs": str(run.dir / PAIRS_FILE), "policy": str(policy_dir)}
        run.extra = {"counts": counts, "detector": refusal_identity(),
                     "max_new_tokens": section.on_policy_max_new_tokens}
        print(f"on-policy answers: {len(rows)} prompts; the policy complied on {wrong_ref}/{n_ref} prompts whose "
              f"demonstration refuses and refused {wrong_help}/{n_help} whose demonstration helps")
    return pairs_path(cfg)
