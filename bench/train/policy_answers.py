"""The policies' own answers, labelled, for the score models to train on and be checked against (issue 22).

A cost model trained only on the embedded written pairs learnt their surface: it scored 1 of 1,072
held-out compliances of the default's policies with harmful requests as unsafe (docs/experiments.md
#score-models-on-policy-text). PPO and the battery score *policy* text, so the score models must
see it:

- **Answers.** Each policy in the union of ``reward.policy_answers`` and ``cost.policy_answers``
  (``base``, ``sft``) answers every prompt once greedily and ``policy_answers.samples`` times by
  sampling at ``policy_answers.temperature`` (the way PPO draws rollouts: ``rollout.keyed_sampler``,
  keyed by (seed, policy, prompt, draw), so an answer does not depend on its batch). Prompts: the
  preference data's **train** split (interleaved by prompt label, cap ``policy_answers.prompts``) for
  training, and its **test** split (cap ``heldout_prompts``; ``heldout_split: validation`` while
  choosing score-model settings) for the held-out check; the splits are disjoint by underlying request.
- **Labels** (:func:`label_answer`): the refusal judge (``bench.eval.refusal``) reads each answer;
  an answer is **unsafe** when its prompt should be refused (``harmful``, ``unsafe-contrast``) and
  the judge says ``comply`` (a refusal followed by the requested content included); every other
  answer is safe. Empty answers carry no behaviour and are dropped.
- **Pairs.** :func:`cost_pairs`: every answer to a prompt that should be refused is paired with one of
  the opposite label for the same prompt (another policy answer first, else the written response of
  the preference pair), so the CM's pairwise term orders them and its sign term labels both; answers
  to safe prompts are paired with the written better response at pairwise weight 0 (both safe, no
  order: sign term only). :func:`reward_pairs`: every refusal of a prompt that should be answered
  (``benign``, ``borderline``) is the worse response against a complying policy answer to the same
  prompt, else the written better response when the judge reads it as help (the RM is a helpfulness
  model: over-refusal is less helpful). Harmful prompts add no RM pairs: which of a refusal and a
  compliance is "more helpful" there is the written data's convention, left as it is.

The set is generated once per (policies, prompts, decoding, judge version, SFT settings when ``sft``
is among the policies) and shared by the reward and cost stages; the held-out half is what the score
models' records report as ``cm_sign_accuracy_policy`` and ``rm_policy_order_accuracy``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.config import PolicyAnswersSection, ProfileConfig
from bench.data.pairs import unique_prompts
from bench.distributed import main_process_writes
from bench.io import atomic_write_text, read_jsonl
from bench.runs import is_done, run_dir, stage_run
from bench.stats import rate_metric
from bench.train.prompt_stream import SHOULD_REFUSE  # prompt labels whose right behaviour is a refusal

NAME = "policy-answers"  # run directory and record name
ANSWERS_FILE = "answers.jsonl"  # one row per (split, prompt, policy, draw)
SHOULD_ANSWER = ("benign", "borderline")
KEY_STEP = -7_000  # sampling keys: row_key(seed, KEY_STEP - policy index, prompt * draws + draw), never a PPO step


def policies_of(cfg: ProfileConfig) -> list[str]:
    """The policies whose answers some score model trains on (sorted; empty: the stage does not run)."""
    names = set()
    for kind in ("reward", "cost"):
        sec = getattr(cfg, kind, None)
        if sec is not None:
            names.update(sec.policy_answers)
    return sorted(names)


def config_hash(cfg: ProfileConfig) -> str:
    """What decides the answers: the sections below (SFT's when it answers), the policies and the judge."""
    from bench.io import json_sha256
    from bench.train.hf_trainer import judged_hash

    pols = policies_of(cfg)
    sections = ("profile", "model", "data", "policy_answers") + (("sft",) if "sft" in pols else ())
    return judged_hash(json_sha256([cfg.section_hash(*sections), pols], length=16))


def answers_path(cfg: ProfileConfig) -> Path:
    return run_dir(cfg.profile.name, NAME) / ANSWERS_FILE


# ----------------------------------------------------------------------------- pure parts


def label_answer(prompt_label: str, judge_label: str) -> bool:
    """True when the answer is unsafe: its prompt should be refused and the judge reads compliance."""
    return prompt_label in SHOULD_REFUSE and judge_label == "comply"


def _written(row: dict) -> list[tuple[str, bool]]:
    """The preference row's two written responses with their safety labels."""
    return [(row[f"response_{k}"], bool(row[f"is_response_{k}_safe"])) for k in (0, 1)]


def _by_prompt(answers: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for a in answers:
        out.setdefault((json.dumps(a.get("history") or []), a["prompt"]), []).append(a)
    return out


def cost_pairs(answers: list[dict]) -> list[dict]:
    """Cost-model pairs (the format of ``bench.data.pairs.safer_pairs`` plus ``pair_weight``) from
    labelled answers of one split (module docstring, "Pairs"). Every answer appears once as the pair's
    new text; partners cycle through the candidates of the opposite label, policy answers first."""
    out = []
    for group in _by_prompt(answers).values():
        row = group[0]["row"]
        written = _written(row)
        if row.get("prompt_label") in SHOULD_REFUSE:
            pools = {u: [(a["response"], a["unsafe"]) for a in group if a["unsafe"] == u]
                     + [(t, not ok) for t, ok in written if (not ok) == u] for u in (False, True)}
            seen = {False: 0, True: 0}  # answers of each label so far: the j-th takes partner j (cycling)
            for a in group:
                partners, j = pools[not a["unsafe"]], seen[a["unsafe"]]
                seen[a["unsafe"]] += 1
                if partners:
                    other, other_unsafe = partners[j % len(partners)]
                    weight = 1.0
                else:  # no answer of the other label for this prompt: the sign term only
                    other, other_unsafe, weight = written[0][0], not written[0][1], 0.0
                me = (a["response"], a["unsafe"])
                safer, unsafer = (me, (other, other_unsafe)) if not a["unsafe"] else ((other, other_unsafe), me)
                out.append(_cost_pair(row, safer, unsafer, weight))
        else:
            better = row[f"response_{row['better_response_id']}"]
            better_safe = bool(row[f"is_response_{row['better_response_id']}_safe"])
            for a in group:
                out.append(_cost_pair(row, (a["response"], a["unsafe"]), (better, not better_safe), 0.0))
    return out


def _cost_pair(row: dict, safer: tuple[str, bool], unsafer: tuple[str, bool], weight: float) -> dict:
    return {"prompt": row["prompt"], "history": list(row.get("history") or []), "id": row.get("id"),
            "safer": safer[0], "unsafer": unsafer[0], "safer_is_safe": not safer[1],
            "unsafer_is_safe": not unsafer[1], "pair_weight": weight}


def reward_pairs(answers: list[dict]) -> list[dict]:
    """Reward-model pairs (``{prompt, history, chosen, rejected}``, the format of
    ``bench.data.pairs.better_pairs``) from labelled answers of one split: on prompts that should be
    answered, each refusing answer loses to a complying answer to the same prompt (cycling), else to
    the written better response when the judge reads that as help; no pair otherwise."""
    out = []
    for group in _by_prompt(answers).values():
        row = group[0]["row"]
        if row.get("prompt_label") not in SHOULD_ANSWER:
            continue
        helps = [a["response"] for a in group if not a["refuses"]]
        if not helps and not row.get("better_refuses", True):
            helps = [row[f"response_{row['better_response_id']}"]]
        for i, a in enumerate(a for a in group if a["refuses"]):
            if helps:
                out.append({"prompt": row["prompt"], "history": list(row.get("history") or []), "id": row.get("id"),
                            "chosen": helps[i % len(helps)], "rejected": a["response"]})
    return out


def heldout_metrics(kind: str, answers: list[dict], scores: list[float]) -> dict[str, dict]:
    """The score model's agreement with the labels on held-out policy answers (``scores[i]`` is its
    score of ``answers[i]``).

    CM: ``cm_sign_accuracy_policy`` (cost > 0 exactly when unsafe, every answer),
    ``cm_sign_accuracy_policy_harmful`` (the same on answers to prompts that should be refused, where
    both labels occur) and ``cm_unsafe_recall_policy`` (unsafe answers with cost > 0).
    RM: ``rm_policy_order_accuracy``: over every (complying, refusing) pair of answers to the same
    prompt that should be answered, the share where the compliance scores higher (ties count half)."""
    m: dict[str, dict] = {}
    if kind == "cost":
        hits = [(c > 0) == a["unsafe"] for a, c in zip(answers, scores)]
        m["cm_sign_accuracy_policy"] = rate_metric(sum(hits), len(hits))
        harm = [h for h, a in zip(hits, answers) if a["prompt_label"] in SHOULD_REFUSE]
        m["cm_sign_accuracy_policy_harmful"] = rate_metric(sum(harm), len(harm))
        unsafe = [c > 0 for a, c in zip(answers, scores) if a["unsafe"]]
        m["cm_unsafe_recall_policy"] = rate_metric(sum(unsafe), len(unsafe))
    else:
        wins, n = 0.0, 0
        groups: dict[tuple, list[tuple[dict, float]]] = {}
        for a, s in zip(answers, scores):
            if a["prompt_label"] in SHOULD_ANSWER:
                groups.setdefault((json.dumps(a.get("history") or []), a["prompt"]), []).append((a, s))
        for group in groups.values():
            for ha, hs in group:
                for ra, rs in group:
                    if not ha["refuses"] and ra["refuses"]:
                        wins += 1.0 if hs > rs else 0.5 if hs == rs else 0.0
                        n += 1
        m["rm_policy_order_accuracy"] = rate_metric(wins, n)
    return {k: v for k, v in m.items() if v["n"]}  # nothing to count: left out, not NaN


# ----------------------------------------------------------------------------- the stage


def read_answers(cfg: ProfileConfig, split: str) -> list[dict]:
    """The labelled answers of ``split`` ("train" or "heldout"), each with its preference ``row``."""
    rows = read_jsonl(answers_path(cfg), f"policy answers missing; run `make reward PROFILE={cfg.profile.name}`")
    return [r for r in rows if r["split"] == split]


def _answer(model, tok, rows: list[dict], cfg: ProfileConfig, section: PolicyAnswersSection, policy_index: int,
            desc: str) -> list[list[str]]:
    """Per row: the greedy answer, then ``section.samples`` sampled answers."""
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.train.rollout import eos_token_ids, row_key, sample_responses

    sp = cfg.model.system_prompt
    prompts = [r["prompt"] for r in rows]
    out = [[a] for a in generate_greedy(model, tok, prompts, sp, GenerationSettings(section.max_new_tokens,
                                        section.batch_size), desc=desc, history=[r.get("history") or [] for r in rows])]
    if section.samples and any(r.get("history") for r in rows):
        raise ValueError("policy_answers.samples > 0 needs single-turn prompts (the rollout sampler has no history)")
    eos = eos_token_ids(model, tok)
    for d in range(section.samples):
        keys = [row_key(cfg.profile.seed, KEY_STEP - policy_index, i * section.samples + d) for i in range(len(rows))]
        s = sample_responses(model, tok, prompts, sp, section.max_new_tokens, section.temperature, section.batch_size,
                             eos, keys)
        for o, t in zip(out, s.texts):
            o.append(t)
    return out


def ensure_policy_answers(cfg: ProfileConfig, force: bool = False) -> Path | None:
    """Generate (or reuse) the profile's labelled policy answers; None when no score model uses them."""
    pols = policies_of(cfg)
    if not pols:
        return None
    section: PolicyAnswersSection = cfg.policy_answers or PolicyAnswersSection()
    chash = config_hash(cfg)
    if not force and is_done(cfg, NAME, chash) and answers_path(cfg).exists():
        return answers_path(cfg)
    from bench.data import load
    from bench.eval.refusal import detect_many
    from bench.eval.refusal import identity as refusal_identity
    from bench.models import load_pretrained, policy_init_dir

    # the run's config.yaml: the sections that decide the answers (not the score models' own)
    view = dataclasses.replace(cfg, reward=None, cost=None, dpo=None, ppo=None, steer=None, policy_answers=section)
    splits = {"train": load(cfg.data.preferences, "train", cfg.data),
              "heldout": load(cfg.data.preferences, section.heldout_split, cfg.data)}
    prompts = {"train": unique_prompts(splits["train"].rows, section.prompts),
               "heldout": unique_prompts(splits["heldout"].rows, section.heldout_prompts)}
    for rows in prompts.values():  # the written better response's verdict: can it stand for help (reward_pairs)
        better = detect_many([r[f"response_{r['better_response_id']}"] for r in rows], [r["prompt"] for r in rows])
        rows[:] = [{**r, "better_refuses": v.is_refusal} for r, v in zip(rows, better)]
    with stage_run(view, variant=NAME, stage="policy-answers", config_hash=chash) as run:
        run.datasets = {k: d.identity for k, d in splits.items()}
        rows_out: list[dict] = []
        for pi, pol in enumerate(pols):
            model, tok = load_pretrained(policy_init_dir(cfg, pol), cfg.model)
            for split, rows in prompts.items():
                answers = _answer(model, tok, rows, cfg, section, pi, desc=f"{pol} answers ({split})")
                flat = [(r, k, a) for r, ans in zip(rows, answers) for k, a in enumerate(ans)]
                verdicts = detect_many([a for _, _, a in flat], [r["prompt"] for r, _, _ in flat])
                for (r, k, a), v in zip(flat, verdicts):
                    if not a.strip():
                        continue  # no behaviour to learn or check
                    rows_out.append({"split": split, "policy": pol, "draw": "greedy" if k == 0 else f"sample-{k}",
                                     "prompt": r["prompt"], "history": r.get("history") or [],
                                     "prompt_label": r.get("prompt_label"), "response": a, "judge": v.label,
                                     "refusal_then_comply": v.refusal_then_comply, "refuses": v.is_refusal,
                                     "unsafe": label_answer(r.get("prompt_label"), v.label), "row": r})
            model = None
        with main_process_writes() as main:  # every rank generated the same answers; rank 0 writes
            if main:
                atomic_write_text(run.dir / ANSWERS_FILE, "".join(json.dumps(a, ensure_ascii=False, sort_keys=True)
                                                                  + "\n" for a in rows_out))
        counts = {}
        for split in prompts:
            mine = [a for a in rows_out if a["split"] == split]
            harm = [a for a in mine if a["prompt_label"] in SHOULD_REFUSE]
            counts[split] = {"prompts": len(prompts[split]), "answers": len(mine), "unsafe": sum(a["unsafe"] for a in mine),
                             "answers_to_harmful": len(harm),
                             "refusals_of_safe": sum(a["refuses"] for a in mine if a["prompt_label"] in SHOULD_ANSWER)}
            run.metrics[f"unsafe_share_{split}"] = rate_metric(sum(a["unsafe"] for a in harm), len(harm))
        run.artifacts = {"answers": ANSWERS_FILE, "policies": pols}
        run.extra = {"counts": counts, "detector": refusal_identity(),
                     "policies": pols}
        print(f"policy answers ({', '.join(pols)}): " + "; ".join(
            f"{s}: {c['answers']} answers, {c['unsafe']} unsafe of {c['answers_to_harmful']} to harmful prompts"
            for s, c in counts.items()))
    return answers_path(cfg)
