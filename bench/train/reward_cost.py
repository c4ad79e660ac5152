"""Reward- and cost-model training: one loop (TRL's RewardTrainer), two objectives.

    make reward   # == bench reward --profile default
    make cost     # == bench cost --profile default

- Reward model: Bradley-Terry on ``better_response_id`` pairs (TRL's RewardTrainer loss,
  ``bench.losses.bradley_terry_loss``).
- Cost model (Safe RLHF, Dai et al. 2023): pairwise on ``safer_response_id`` plus the sign term that
  pushes unsafe responses above zero cost and safe ones below (``bench.losses.cost_model_loss``);
  ``CostTrainer`` only swaps ``compute_loss`` and the collator, the rest of the loop is TRL's.

Sequences are tokenised here with ``bench.chat`` (not by TRL's chat-template path), so the score
models are trained on exactly the text that PPO and the battery later score. Over-long pairs are
an error naming the row, or with ``data.on_invalid: skip`` a counted skip. Checkpoints every
``save_steps`` go to ``runs/<profile>/<stage>/checkpoints``; a re-run resumes from the last one.
After training, the held-out test split is scored and the record gets accuracy, sign accuracy and
score means, each with n and a 95% interval.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import ProfileConfig, ScoreModelSection
from bench.data import load
from bench.data.pairs import better_pairs, overlong_error, safer_pairs
from bench.distributed import remove_tree_on_main
from bench.losses import cost_model_loss, cost_sign
from bench.models import configure_trainable, policy_init_dir, trainable_count
from bench.runs import is_done, stage_run
from bench.score_model import build_score_model, encode, load_score_model, score_texts
from bench.stats import mean_metric, rate_metric, scalar_metric
from bench.train.hf_trainer import fp16_stats, guard_callbacks, save_final, train_resumable, trainer_kwargs

SECTIONS = {"reward": ("profile", "model", "data", "reward"), "cost": ("profile", "model", "data", "cost")}


# ----------------------------------------------------------------------------- data


def tokenize_pairs(kind: str, rows: list[dict], tok, system_prompt: str | None, max_length: int,
                   on_invalid: str, where: str, wheres: list[str] | None = None,
                   pairs: list[dict] | None = None) -> tuple[list[dict], int]:
    """Token ids for TRL's preference collator: chosen = preferred (reward) / safer (cost).
    Returns (examples, n_skipped_overlong). An over-long pair is an error naming the row's file,
    line and response field (with ``wheres``, the rows' locations from ``LoadedDataset.wheres``;
    without, ``where`` and the pair) or, with ``on_invalid: skip``, a counted skip. ``pairs``: pairs
    already in the kind's format (the policies' answers, ``bench.train.policy_answers``) instead of
    ``rows``; a cost pair's ``pair_weight`` (default 1) weighs its pairwise term."""
    # (pair, key of the preferred response, key of the other): the keys name the fields in errors too
    a_key, b_key = ("chosen", "rejected") if kind == "reward" else ("safer", "unsafer")
    if pairs is None:
        pairs = better_pairs(rows, wheres) if kind == "reward" else safer_pairs(rows, wheres)
    out, skipped = [], 0
    for i, p in enumerate(pairs):
        hist = p.get("history")
        a_ids = encode(tok, p["prompt"], p[a_key], system_prompt, hist)
        b_ids = encode(tok, p["prompt"], p[b_key], system_prompt, hist)
        if max(len(a_ids), len(b_ids)) > max_length:
            if on_invalid == "error":
                raise overlong_error(p, a_key if len(a_ids) >= len(b_ids) else b_key, max(len(a_ids), len(b_ids)),
                                     f"{kind}.max_length={max_length}", where, "response_0/response_1", i)
            skipped += 1
            continue
        ex = {"chosen_ids": a_ids, "rejected_ids": b_ids}
        if kind == "cost":
            ex["safer_sign"] = float(cost_sign(torch.tensor(p["safer_is_safe"])))
            ex["unsafer_sign"] = float(cost_sign(torch.tensor(p["unsafer_is_safe"])))
            ex["pair_weight"] = float(p.get("pair_weight", 1.0))
        out.append(ex)
    return out, skipped


# ----------------------------------------------------------------------------- trainers


def _cost_trainer_classes():
    """CostTrainer = TRL RewardTrainer with the Safe RLHF loss; built lazily (TRL import is slow)."""
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class CostCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            out["safer_sign"] = torch.tensor([e["safer_sign"] for e in examples], dtype=torch.float)
            out["unsafer_sign"] = torch.tensor([e["unsafer_sign"] for e in examples], dtype=torch.float)
            out["pair_weight"] = torch.tensor([e["pair_weight"] for e in examples], dtype=torch.float)
            return out

    class CostTrainer(RewardTrainer):
        sign_weight: float = 1.0

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "safer_sign", "unsafer_sign", "pair_weight"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            safer, unsafer = torch.chunk(outputs.logits.squeeze(-1), chunks=2)  # (B,), (B,)
            loss, parts = cost_model_loss(safer, unsafer, inputs["safer_sign"], inputs["unsafer_sign"],
                                          sign_weight=self.sign_weight, pair_weight=inputs["pair_weight"])
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                self._metrics[mode]["pairwise_loss"].append(parts["pairwise"].item())
                self._metrics[mode]["sign_loss"].append(parts["sign"].item())
                ordered = inputs["pair_weight"] > 0  # pairs with a safety order
                if ordered.any():
                    self._metrics[mode]["accuracy"].append((unsafer > safer)[ordered].float().mean().item())
            return (loss, outputs) if return_outputs else loss

    return CostTrainer, CostCollator


def extra_callbacks() -> list:
    """Trainer callbacks added to every score-model run (tests inject an interruption here)."""
    return []


def trainer_args(section: ScoreModelSection, out: Path, seed: int, kind: str = ""):
    from trl import RewardConfig

    # max_length=None: over-long pairs were already handled (error or counted skip) in tokenize_pairs.
    return RewardConfig(**trainer_kwargs(section, out, seed, kind), max_length=None, remove_unused_columns=False,
                        center_rewards_coefficient=None)


# ----------------------------------------------------------------------------- evaluation


def evaluate_score_model(kind: str, model, tok, rows: list[dict], system_prompt: str | None,
                         batch_size: int = 16, max_length: int = 512) -> dict[str, dict]:
    """Held-out metrics. RM: pairwise accuracy on better pairs, mean scores of chosen/rejected and
    of safe/unsafe responses. CM: pairwise accuracy (safer has lower cost), sign accuracy over
    every response (cost > 0 iff labelled unsafe), mean cost of safe/unsafe responses."""
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    responses = [r[f"response_{k}"] for r in rows for k in (0, 1)]
    hist = [list(r.get("history") or []) for r in rows for _ in (0, 1)]
    safe = [bool(r[f"is_response_{k}_safe"]) for r in rows for k in (0, 1)]
    s = score_texts(model, tok, prompts, responses, system_prompt, batch_size, max_length, hist, desc=f"eval {kind}")
    pair = [(s[2 * i], s[2 * i + 1]) for i in range(len(rows))]
    n = len(rows)
    m: dict[str, dict] = {}
    if kind == "reward":
        hits = sum((a > b) == (r["better_response_id"] == 0) for (a, b), r in zip(pair, rows))
        m["rm_accuracy"] = rate_metric(hits, n)
        m["score_chosen"] = mean_metric(p[r["better_response_id"]] for p, r in zip(pair, rows))
        m["score_rejected"] = mean_metric(p[1 - r["better_response_id"]] for p, r in zip(pair, rows))
    else:
        hits = sum((a < b) == (r["safer_response_id"] == 0) for (a, b), r in zip(pair, rows))
        m["cm_pair_accuracy"] = rate_metric(hits, n)
        m["cm_sign_accuracy"] = rate_metric(sum((c > 0) == (not ok) for c, ok in zip(s, safe)), len(s))
        m["score_safer"] = mean_metric(p[r["safer_response_id"]] for p, r in zip(pair, rows))
        m["score_unsafer"] = mean_metric(p[1 - r["safer_response_id"]] for p, r in zip(pair, rows))
    m["score_safe"] = mean_metric(c for c, ok in zip(s, safe) if ok)
    m["score_unsafe"] = mean_metric(c for c, ok in zip(s, safe) if not ok)
    return m


# ----------------------------------------------------------------------------- the stage


def stage_hash(cfg: ProfileConfig, kind: str) -> str:
    """The record's config hash: the stage's sections, plus the policy answers' own hash (policies,
    prompts, decoding, judge version, SFT settings) when the section trains on them."""
    from bench.io import json_sha256
    from bench.train import policy_answers

    own = cfg.section_hash(*SECTIONS[kind])
    if not cfg.require(kind).policy_answers:
        return own
    return json_sha256([own, cfg.require(kind).policy_answers, policy_answers.config_hash(cfg)], length=16)


def policy_pairs(cfg: ProfileConfig, kind: str, split: str) -> list[dict]:
    """The kind's pairs from the labelled answers of the section's policies (``split`` train)."""
    from bench.train import policy_answers

    mine = [a for a in policy_answers.read_answers(cfg, split) if a["policy"] in cfg.require(kind).policy_answers]
    return policy_answers.reward_pairs(mine) if kind == "reward" else policy_answers.cost_pairs(mine)


def run_score_stage(cfg: ProfileConfig, kind: str, force: bool = False) -> None:
    from trl import RewardTrainer

    from bench.train import policy_answers

    section: ScoreModelSection = cfg.require(kind)
    sections = SECTIONS[kind]
    chash = stage_hash(cfg, kind)
    if not force and is_done(cfg, kind, chash):
        print(f"{kind}: up to date")
        return
    policy_dir = policy_init_dir(cfg, "base")
    splits = {s: load(cfg.data.preferences, s, cfg.data) for s in ("train", "test")}
    # The written pairs first: an over-long row fails here, before minutes of answer generation.
    from transformers import AutoTokenizer

    examples, skipped = tokenize_pairs(kind, splits["train"].rows, AutoTokenizer.from_pretrained(policy_dir),
                                       cfg.model.system_prompt, section.max_length, cfg.data.on_invalid,
                                       f"{cfg.data.preferences}:train", wheres=splits["train"].wheres)
    if section.policy_answers:
        policy_answers.ensure_policy_answers(cfg)

    with stage_run(cfg, variant=kind, stage=kind, sections=sections, config_hash=chash) as run:
        run.datasets = {s: d.identity for s, d in splits.items()}
        model, tok = build_score_model(policy_dir, section, cfg.model, cfg.profile.seed)
        model = configure_trainable(model, section, task_type="SEQ_CLS", head_names=("score",))
        n_train, n_total = trainable_count(model)
        run.log.info("trainable parameters: %d of %d", n_train, n_total)

        if section.max_examples:  # caps the written pairs; the policies' answers come on top
            examples = examples[: section.max_examples]
        n_written = len(examples)
        if section.policy_answers:
            run.datasets["policy_answers"] = {"path": str(policy_answers.answers_path(cfg)),
                                              "config_hash": policy_answers.config_hash(cfg)}
            extra, more_skipped = tokenize_pairs(kind, [], tok, cfg.model.system_prompt, section.max_length,
                                                 cfg.data.on_invalid, str(policy_answers.answers_path(cfg)),
                                                 pairs=policy_pairs(cfg, kind, "train"))
            examples, skipped = examples + extra, skipped + more_skipped
        from datasets import Dataset

        train_ds = Dataset.from_list(examples)
        ckpt_dir = run.dir / "checkpoints"
        args = trainer_args(section, ckpt_dir, cfg.profile.seed, kind)
        if kind == "reward":
            trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                                    callbacks=extra_callbacks() + guard_callbacks(section))
        else:
            CostTrainer, CostCollator = _cost_trainer_classes()
            CostTrainer.sign_weight = section.sign_weight
            trainer = CostTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                                  data_collator=CostCollator(pad_token_id=tok.pad_token_id),
                                  callbacks=extra_callbacks() + guard_callbacks(section))
        result, resume = train_resumable(trainer, ckpt_dir, kind, run.config_hash)
        out = save_final(trainer, tok, run.dir / "model")
        # Evaluate what was saved: the plain checkpoint a user (and PPO) will load.
        final, tok = load_score_model(out, cfg.model)
        run.metrics = evaluate_score_model(kind, final, tok, splits["test"].rows, cfg.model.system_prompt,
                                           batch_size=2 * section.batch_size, max_length=section.max_length)
        if section.policy_answers:  # held out: the test-split prompts' answers of every answering policy
            held = policy_answers.read_answers(cfg, "heldout")
            scores = score_texts(final, tok, [a["prompt"] for a in held], [a["response"] for a in held],
                                 cfg.model.system_prompt, 2 * section.batch_size, section.max_length,
                                 [a.get("history") or [] for a in held], desc=f"eval {kind} (policy answers)")
            run.metrics.update(policy_answers.heldout_metrics(kind, held, scores))
        run.metrics["train_loss"] = scalar_metric(result.training_loss)
        run.metrics["trainable_params"] = scalar_metric(n_train)
        run.artifacts = {"model_dir": str(out), "policy_init": str(policy_dir)}
        run.extra = {**fp16_stats(trainer), "resumed_from": resume, "skipped_overlong": skipped, "train_pairs": len(examples),
                     "train_pairs_written": n_written, "train_pairs_policy": len(examples) - n_written,
                     "policy_answers": list(section.policy_answers),
                     "log_history": trainer.state.log_history}
        summary = ", ".join(f"{k}={v['value']:.3f}" for k, v in run.metrics.items()
                            if k.endswith("accuracy"))
        print(f"{kind}: {summary} (test n={len(splits['test'].rows)})")
    # Checkpoints exist only to resume; once the record is written they are dead weight.
    remove_tree_on_main(ckpt_dir)  # rank 0, after every rank is done with it
