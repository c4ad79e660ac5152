"""The battery's steps for one variant, each a function of its own; :func:`bench.eval.battery.score_variant`
runs them in order (``make eval`` / ``bench eval --profile P [--variant V]``).

1. :func:`variant_pass`: load the variant (steered inside :func:`bench.variants.load_policy`), greedy
   generations, pair log-probs, log-probs of its own helpfulness answers, and lm-eval
   (:func:`lm_eval_helpfulness`), all under the same steering; a gated variant's lm-eval runs outside
   its hooks, with the gate decided per document (:mod:`bench.eval.lm_eval_gate`);
2. :func:`refusal_step`: detector verdicts and refusal metrics, one row per generation;
   :func:`model_judge_step`: a second reading by a model judge, when the profile names one
   (``eval.model_judge``, :mod:`bench.eval.model_judge`);
3. :func:`base_reference`: the base's pair log-probs and helpfulness answers (cached per base, see
   :class:`bench.eval.inputs.BaseCache`) and the base's log-probs of the variant's answers;
4. :func:`preference_step`: preference accuracy and margins from 1 and 3, the implicit reward against
   the variant's starting point (:func:`load_start`) and against the base;
5. :func:`score_model_step`: reward and cost model scores, and the RM win rate against the base;
6. :func:`paired_step`: paired tests of every rate and mean against the starting point
   (:mod:`bench.eval.paired`).

Every step reads the run's :class:`Scoring` (settings and inputs) and adds to its ``metrics``,
``timings``, ``notes`` and ``extra``. How a variant was trained is never read here: a variant is a
record (:mod:`bench.variants`) with a model folder and, for a steered one, a steering spec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import ProfileConfig
from bench.eval import generate
from bench.eval.inputs import BaseCache, Plan
from bench.eval.measures import cost_judge_agreement, judged_sets, logratio_metric, win_rate
from bench.eval.paired import by_category, generation_pairs, pair_logprob_pairs
from bench.stats import mean_metric, rate_metric


@dataclass
class Scoring:
    """One battery run of one variant: its settings and inputs, and what the steps have measured."""

    cfg: ProfileConfig
    variant: object  # bench.variants.Variant
    plan: Plan
    base_dir: Path  # the base's model folder (the reference)
    cache: BaseCache
    metrics: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def is_base(self) -> bool:
        return self.variant.name == "base"

    @property
    def system_prompt(self) -> str | None:
        return self.cfg.model.system_prompt

    @property
    def gen(self) -> generate.GenerationSettings:
        ev = self.cfg.eval
        return generate.GenerationSettings(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)


@dataclass
class VariantOutputs:
    """What the variant itself produced (step 1)."""

    generations: list[str]  # one per Plan.prompts
    pairs: object  # bench.eval.logprobs.PairLogprobs
    help_logprobs: list[float]  # log pi(own answer | prompt) per helpfulness prompt ([] for the base)
    help_tokens: list[int]

    def help_answers(self, plan: Plan) -> list[str]:
        return self.generations[plan.n_refusal:]


# --------------------------------------------------------------------------- model helpers


def response_logprobs(model, tok, prompts: list[str], responses: list[str], system_prompt: str | None,
                      batch_size: int = 8, max_length: int = 512) -> tuple[list[float], list[int]]:
    """Summed log pi(response | prompt) over response tokens (text re-tokenised, plus the end-of-
    turn token, as in training) and the response token counts, in input order."""
    import torch

    from bench import chat
    from bench.eval.logprobs import kept_token_logprobs
    from bench.precision import generation_autocast
    from bench.tensors import longest_first_batches, pad_right

    seqs, starts = [], []
    for p, r in zip(prompts, responses, strict=True):
        p_ids = tok(chat.format_prompt(tok, p, system_prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(chat.format_response(tok, r), add_special_tokens=False)["input_ids"]
        room = max(1, max_length - len(p_ids))
        seqs.append(p_ids + r_ids[:room])
        starts.append(len(p_ids))
    sums, counts = [0.0] * len(seqs), [0] * len(seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    with torch.no_grad(), generation_autocast(model):  # bf16 models: one cast of the weights per call
        for idx in longest_first_batches([len(x) for x in seqs], batch_size):
            ids, attn = pad_right([seqs[i] for i in idx], pad)  # (B, L) right padded
            keep = torch.zeros((ids.shape[0], ids.shape[1] - 1), dtype=torch.bool)  # (B, L-1)
            for j, i in enumerate(idx):
                keep[j, starts[i] - 1: len(seqs[i]) - 1] = True  # response tokens only
            lp = kept_token_logprobs(model, ids, keep, attention_mask=attn.to(model.device))  # (B, L-1)
            for j, i in enumerate(idx):
                sums[i] = float(lp[j].sum())  # lp is 0 off the kept positions
                counts[i] = int(keep[j].sum())
    return sums, counts


# --------------------------------------------------------------------------- 1. the variant


def variant_pass(s: Scoring) -> tuple[VariantOutputs, tuple | None]:
    """Generations, pair log-probs, own-answer log-probs and lm-eval of the variant, inside its steering
    context when steered. Returns the outputs, and ``(model, tok)`` when that model, unsteered, is the
    base itself (a steered view of the base: step 3 reuses it instead of loading the base again)."""
    from bench.eval.logprobs import PairLogprobs, score_pairs
    from bench.models import load_pretrained
    from bench.variants import load_policy, located_steering, policy_dir

    v, p, ev, sp = s.variant, s.plan, s.cfg.eval, s.system_prompt
    t0 = time.perf_counter()
    vdir = policy_dir(v, s.cfg.profile.name)
    model, tok = load_pretrained(vdir, s.cfg.model)
    model.eval()
    with load_policy(v, s.cfg, model=model, tok=tok):
        outs = generate.generate_greedy(model, tok, p.prompts, sp, s.gen, desc=f"{v.name}: generate")
        pairs = score_pairs(model, tok, p.pairs, sp, ev.score_batch_size, ev.max_length, desc=f"{v.name}: pairs",
                            prefix_cache=not v.needs_whole_sequences) if p.pairs else PairLogprobs([], [], [], [])
        help_out = outs[p.n_refusal:]
        pi_help, help_ntok = (response_logprobs(model, tok, p.help_prompts, help_out, sp, ev.score_batch_size,
                                                ev.max_length) if p.help_prompts and not s.is_base else ([], []))
        s.timings["variant_generate_and_score_s"] = round(time.perf_counter() - t0, 2)
        if ev.lm_eval_tasks and not v.gated:
            lm_eval_helpfulness(s, model, tok)
    if ev.lm_eval_tasks and v.gated:  # on the unsteered model: the gate decided per document, not per request
        lm_eval_helpfulness(s, model, tok, gate=located_steering(v, s.cfg))
    reusable = v.kind == "steered" and vdir.resolve() == s.base_dir.resolve()
    return VariantOutputs(outs, pairs, pi_help, help_ntok), ((model, tok) if reusable else None)


def lm_eval_helpfulness(s: Scoring, model, tok, gate=None) -> None:
    """lm-eval's ``eval.lm_eval_tasks`` on the (steered) model: ``lm_eval/<task>/<metric>`` metrics. With a
    gated ``gate`` spec, ``model`` is unsteered and the gate is applied per document, read on the context as
    generation formats it (the profile's system prompt included; :func:`bench.eval.helpfulness.run_lm_eval`)."""
    from bench.eval.helpfulness import run_lm_eval

    ev = s.cfg.eval
    t1 = time.perf_counter()
    lm_metrics, lm_info = run_lm_eval(model, tok, list(ev.lm_eval_tasks), ev.lm_eval_limit, ev.batch_size,
                                      seed=s.cfg.profile.seed, gate=gate, system_prompt=s.system_prompt)
    s.metrics.update(lm_metrics)
    s.extra["lm_eval"] = lm_info
    s.timings["lm_eval_s"] = round(time.perf_counter() - t1, 2)


# --------------------------------------------------------------------------- 2. refusal


def refusal_step(s: Scoring, out: VariantOutputs) -> list[dict]:
    """Detector verdicts on the refusal sets' generations: refusal metrics per set, the share of empty
    generations, and one row per generation (set, prompt, response, verdict) for ``generations.jsonl``."""
    from bench.eval import refusal

    p = s.plan
    outs = out.generations
    dets = refusal.detect_many(outs[: p.n_refusal], p.prompts[: p.n_refusal])
    metrics, rows = judged_sets(p.sets, p.refusal_keys, outs, dets)
    s.metrics.update(metrics)
    if dets:
        s.metrics["empty_generations"] = rate_metric(sum(not o.strip() for o in outs[:len(dets)]), len(dets))
    harm = [r["refusal_then_comply"] for r in rows if r["set"] == "refusal_harmful"]
    if harm:  # refused, then gave the requested content: compliance, reported apart
        s.metrics["refusal_harmful_then_comply"] = rate_metric(sum(harm), len(harm))
    s.extra["by_category"] = by_category(rows, p.refusal_keys)
    return rows


def model_judge_step(s: Scoring, rows: list[dict]) -> None:
    """The configured model judge's reading of every refusal-set generation (``eval.model_judge``; off by
    default): ``model_judge`` (``refuse`` / ``comply`` / None when unparsed) and
    ``model_judge_harmful_response`` on each row, and in ``extra.model_judge`` the judge (id, pinned
    revision) and, per set, both judges' refusal rates and their agreement
    (:func:`bench.eval.model_judge.compare_with_rules`). The battery's rates stay the rules'."""
    mj = s.cfg.eval.model_judge
    if mj is None or not rows:
        return
    import gc

    from bench.eval import model_judge

    t0 = time.perf_counter()
    model, tok = model_judge.load_judge(mj)  # without remote code, whatever the policy's opt-in
    verdicts = model_judge.judge_many(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows],
                                      mj.batch_size, mj.max_new_tokens, mj.format)
    del model
    gc.collect()
    for r, v in zip(rows, verdicts, strict=True):
        r["model_judge"] = v.label
        r["model_judge_harmful_response"] = v.harmful_response
    harm = [(r, v) for r, v in zip(rows, verdicts) if r["set"] == "refusal_harmful"]
    s.extra["model_judge"] = {
        "hub_id": mj.hub_id, "revision": mj.revision, "format": mj.format,
        "by_set": model_judge.compare_with_rules(rows),
        # refusals whose answer the model judge still reads as harmful, beside the rules' flag
        "refused_but_harmful_harmful": rate_metric(sum(v.refused_but_harmful for _, v in harm), len(harm)),
    }
    s.timings["model_judge"] = time.perf_counter() - t0


# --------------------------------------------------------------------------- 3. the base as reference


def base_reference(s: Scoring, out: VariantOutputs, reusable: tuple | None) -> tuple[object, list[str] | None]:
    """The base's pair log-probs (None for the base itself) and its helpfulness answers, from the cache
    or computed (and cached); for a non-base variant also ``logratio_to_base``."""
    from bench.eval.logprobs import PairLogprobs, score_pairs
    from bench.models import load_pretrained

    p, ev, sp, cache = s.plan, s.cfg.eval, s.system_prompt, s.cache
    help_out = out.help_answers(p)
    if s.is_base:  # the base is its own reference: it fills the caches
        cache.put("pair_logprobs", p.pairs_key, out.pairs.to_dict())
        cache.put("help_generations", p.help_key, help_out)
        return None, help_out
    t0 = time.perf_counter()
    cached = cache.get("pair_logprobs", p.pairs_key)
    ref_pairs = PairLogprobs(**cached) if cached else None
    base_help = cache.get("help_generations", p.help_key)
    if ref_pairs is None or base_help is None or bool(p.help_prompts):
        bmodel, btok = reusable or load_pretrained(s.base_dir, s.cfg.model)  # reusable: its steering was left
        bmodel.eval()
        if ref_pairs is None and p.pairs:
            ref_pairs = score_pairs(bmodel, btok, p.pairs, sp, ev.score_batch_size, ev.max_length, desc="base: pairs")
            cache.put("pair_logprobs", p.pairs_key, ref_pairs.to_dict())
        if base_help is None:
            base_help = generate.generate_greedy(bmodel, btok, p.help_prompts, sp, s.gen, desc="base: generate")
            cache.put("help_generations", p.help_key, base_help)
        if p.help_prompts:
            ref_help, _ = response_logprobs(bmodel, btok, p.help_prompts, help_out, sp, ev.score_batch_size,
                                            ev.max_length)
            s.metrics["logratio_to_base"] = logratio_metric(out.help_logprobs, ref_help, out.help_tokens)
        del bmodel
    s.timings["base_reference_s"] = round(time.perf_counter() - t0, 2)
    return ref_pairs, base_help


# --------------------------------------------------------------------------- 4. preference


def preference_step(s: Scoring, out: VariantOutputs, ref_pairs, start: StartOutputs | None) -> None:
    """Preference accuracy (raw and implicit), margins and their decomposition (:mod:`bench.eval.preference`):
    the implicit reward and the chosen / rejected shifts against the variant's starting point, and the
    same three against the base (``*_vs_base``)."""
    from bench.eval.logprobs import PairLogprobs
    from bench.eval.preference import VS_START_METRICS, preference_metrics

    if not s.plan.pairs:
        return
    vs_base = preference_metrics(out.pairs, ref_pairs)
    s.metrics.update({k: m for k, m in vs_base.items() if k not in VS_START_METRICS})
    if ref_pairs is not None:
        s.metrics.update({f"{k}_vs_base": vs_base[k] for k in VS_START_METRICS if k in vs_base})
    if start is not None and start.pairs is not None:
        vs_start = preference_metrics(out.pairs, PairLogprobs(**start.pairs))
        s.metrics.update({k: vs_start[k] for k in VS_START_METRICS if k in vs_start})


# --------------------------------------------------------------------------- 6. against the starting point


GENERATIONS_FILE = "generations.jsonl"  # every generation and verdict, beside the eval record
PAIR_LOGPROBS_FILE = "pair_logprobs.json"  # the variant's per-pair log-probs (its successors' reference)


@dataclass
class StartOutputs:
    """What the variant's starting point produced in its own eval run (read from its run directory)."""

    name: str
    rows: list[dict]  # its generations.jsonl rows
    pairs: dict | None  # its PairLogprobs.to_dict(), None when it scored no pairs


def load_start(s: Scoring, start: str | None) -> StartOutputs | None:
    """The starting point's generations and pair log-probs, checked to be scored on the same inputs."""
    import json

    from bench.records import RecordError
    from bench.runs import EVAL_STAGE, run_dir

    if start is None:
        return None
    d = run_dir(s.cfg.profile.name, start, stage=EVAL_STAGE)
    gen, lp = d / GENERATIONS_FILE, d / PAIR_LOGPROBS_FILE
    hint = f"score it first: bench eval --profile {s.cfg.profile.name} --variant {start}"
    if not gen.exists():
        raise RecordError(f"{s.variant.name}: its starting point '{start}' has no {gen}; {hint}")
    rows = [json.loads(line) for line in gen.read_text().splitlines() if line.strip()]
    pairs = None
    if s.plan.pairs:
        data = json.loads(lp.read_text()) if lp.exists() else {}
        if data.get("key") != s.plan.pairs_key:
            raise RecordError(f"{s.variant.name}: {lp} is missing or was scored on other pairs; {hint}")
        pairs = data["value"]
    return StartOutputs(start, rows, pairs)


def paired_step(s: Scoring, out: VariantOutputs, rows: list[dict], start: StartOutputs | None) -> None:
    """``extra["paired"]``: every paired test of the variant against its starting point
    (:mod:`bench.eval.paired`), and ``extra["reference"]``."""
    if start is None:
        return
    paired = generation_pairs(rows, start.rows, s.plan.refusal_keys, start.name)
    if start.pairs is not None:
        paired.update(pair_logprob_pairs(out.pairs.to_dict(), start.pairs, start.name))
    s.extra["paired"] = {k: paired[k] for k in sorted(paired)}


# --------------------------------------------------------------------------- 5. reward and cost models


def score_model_dir(rec: dict | None) -> Path | None:
    mdir = ((rec or {}).get("artifacts") or {}).get("model_dir")
    return Path(mdir) if mdir and (Path(mdir) / "config.json").exists() else None


def helpfulness_rows(s: Scoring, out: VariantOutputs, base_help: list[str] | None) -> list[dict]:
    """One ``generations.jsonl`` row per helpfulness prompt: the variant's answer and the base's."""
    help_out = out.help_answers(s.plan)
    return [{"set": "helpfulness", "id": r.get("id"), "category": r.get("category"), "prompt": r["instruction"],
             "response": o, "base_response": b}
            for r, o, b in zip(s.plan.sets["helpfulness"], help_out, base_help or [None] * len(help_out))]


def score_model_step(s: Scoring, kind: str, rec: dict | None, harm_rows: list[dict], help_rows: list[dict]) -> None:
    """``{kind}_harmful`` / ``{kind}_helpfulness`` (mean RM reward or CM cost of the variant's answers),
    and for the reward model ``rm_win_rate`` against the base's answers. The scores are added to the
    rows (``reward`` / ``cost`` / ``base_reward``). Without the model: a note, no metrics."""
    mdir = score_model_dir(rec)
    if mdir is None:
        s.notes.append(f"no {kind} model (runs/{s.cfg.profile.name}/{kind}): {kind}_* metrics"
                       + (" and rm_win_rate" if kind == "reward" else "") + " not computed")
        return
    from bench.score_model import load_score_model, score_texts

    ev, sp = s.cfg.eval, s.system_prompt
    t0 = time.perf_counter()
    smodel, stok = load_score_model(mdir, s.cfg.model)
    section = getattr(s.cfg, kind, None)
    max_len = section.max_length if section is not None else ev.max_length

    def score(rows: list[dict], column: str = "response") -> list[float]:
        return score_texts(smodel, stok, [r["prompt"] for r in rows], [r[column] for r in rows], sp,
                           ev.score_batch_size, max_len, desc=f"{kind}: score")

    for set_name, rows in (("harmful", harm_rows), ("helpfulness", help_rows)):
        if rows:
            scores = score(rows)
            s.metrics[f"{kind}_{set_name}"] = mean_metric(scores)
            for r, v in zip(rows, scores):
                r[kind] = v
    if kind == "cost" and (agree := cost_judge_agreement(harm_rows)) is not None:  # the CM on this policy's text
        s.metrics["cost_judge_agreement_harmful"] = agree
    if kind == "reward" and help_rows and not s.is_base:
        b = score(help_rows, "base_response")
        for r, v in zip(help_rows, b):
            r["base_reward"] = v
        s.metrics["rm_win_rate"] = win_rate([r["reward"] for r in help_rows], b)
    smodel = None  # free it before the next score model loads
    s.timings[f"{kind}_scoring_s"] = round(time.perf_counter() - t0, 2)
