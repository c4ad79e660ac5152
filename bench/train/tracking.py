"""Tuning dynamics: intermediate checkpoints and a small validation pass along a DPO or PPO run.

The original study found DPO's preference accuracy hovering near 50% and turned to watching refusal
rates and log-prob margins *during* training, and to auditing how the refusal direction moves across
checkpoints. This module makes that part of every DPO / PPO run whose section sets
``keep_checkpoints: K`` (``0``: off, nothing here runs and the recipes cost what they did):

    make dpo ARGS="dpo.keep_checkpoints=4"     # kept checkpoints at 0%, 33%, 66%, 100% of the steps

Which steps (:func:`checkpoint_steps`)
    ``K`` points spread evenly over ``[0, total]``, both ends included, floored to whole steps and
    deduplicated: ``K=4, total=100`` -> 0, 33, 66, 100; ``K=3`` -> 0, 50, 100; ``K=2`` -> 0, 100;
    ``K=1`` -> the final step only. Step 0 is the initial policy (before the first update).

What is kept (:class:`Tracker`)
    Each kept step gets a plain checkpoint (safetensors + tokenizer, LoRA merged *out of place*, so
    training continues untouched) that ``AutoModelForCausalLM.from_pretrained`` loads, in
    ``runs/<profile>/<variant>/kept/step-<N>/``, outside the recipe's resume ``checkpoints/`` folder
    (which the recipe deletes after success). The final step is not copied: its ``model_dir`` is the
    run's own ``model/`` folder, which the recipe writes right after training, so the audit
    (``bench.steer.audit.discover_checkpoints``) does not score the final model twice. Step 0 is not
    copied either when the recipe names the initial policy's folder (``init_dir``): its ``model_dir``
    is that folder, and its validation pass is cached under ``runs/<profile>/cache/tracking-init/``
    (keyed by the folder's files and the pass's settings), so variants that start from the same
    policy (every DPO variant starts from SFT) run it once.

Validation pass (``_validate``, run by the tracker), on the ``validation`` split, small by design
    - ``refusal_harmful`` / ``over_refusal_benign`` / ``over_refusal_borderline``: share of greedy
      generations (at most ``TRACK_MAX_NEW_TOKENS`` new tokens, and no more than ``eval.max_new_tokens``)
      on the first ``TRACK_N_PROMPTS`` harmful / benign / borderline-safe prompts (fewer when
      ``eval.n_harmful`` / ``n_benign`` / ``n_borderline`` cap lower; no borderline set in the profile:
      none) that the versioned refusal detector classifies as refusals (refuse + partial);
    - ``pref_acc_raw``, ``pref_acc_implicit``, ``logp_margin_sum``, ``logp_margin_per_token``,
      ``chosen_shift``, ``rejected_shift`` (see :mod:`bench.eval.preference`) on the first
      ``TRACK_N_PAIRS`` validation pairs (``dpo.pairs`` policy; cap ``eval.n_pairs``). The reference
      of the implicit reward is the run's initial policy (``policy_init``): its pair log-probs are
      computed once, at step 0, and cached in ``kept/tracking.json`` (a resumed run reads them).
    The pass runs under ``torch.no_grad`` in eval mode inside a forked RNG state, so the training
    trajectory is the same with and without tracking; the model's train/eval mode is restored.

Record
    ``artifacts["checkpoints"]``: ``[{step, fraction, model_dir}]`` (what the steering audit reads);
    ``extra["tracking"]``: ``{"series": [{step, fraction, model_dir, metrics}], "detector": ...,
    "validation": sizes}``; ``datasets["tracking/<role>"]``: identities of the validation sets.
    The leaderboard draws and tabulates the series from the records (:mod:`bench.report.series`);
    nothing here renders.

Resume
    ``kept/tracking.json`` is rewritten (atomically) after each kept step together with the config
    hash; a resumed run keeps the entries up to the step it resumes from, a run that starts at step 0
    (fresh, forced, or another config) starts the folder afresh.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import ProfileConfig
from bench.io import atomic_write_bytes, atomic_write_json, json_sha256
from bench.runs import cache_dir
from bench.stats import rate_metric

if TYPE_CHECKING:  # annotations only: importing this module stays free of torch
    import torch

# Validation sizes: small on purpose (tracking runs K times per variant). The eval section's caps
# (eval.n_harmful / n_benign / n_pairs, eval.max_new_tokens) lower them further, never raise them.
TRACK_N_PROMPTS = 16  # harmful prompts, and benign prompts, per kept checkpoint
TRACK_N_PAIRS = 32  # validation preference pairs per kept checkpoint
TRACK_MAX_NEW_TOKENS = 32  # greedy tokens per generation (a refusal shows in its first sentence)
KEPT_DIR = "kept"
INIT_CACHE = "tracking-init"  # runs/<profile>/cache/<this>/: the initial policy's pass, shared by runs
STATE_FILE = "tracking.json"


# =========================================================================== which steps


def checkpoint_steps(total_steps: int, keep: int) -> list[int]:
    """Steps at which a checkpoint is kept: ``keep`` points evenly spread over [0, total_steps]
    (both ends included, floored, deduplicated, sorted); ``keep <= 0`` -> []; ``keep == 1`` -> [total]."""
    if keep <= 0:
        return []
    total = max(0, int(total_steps))
    if keep == 1:
        return [total]
    return sorted({i * total // (keep - 1) for i in range(keep)})


# =========================================================================== validation pass


@dataclass
class ValidationSet:
    """The prompts and pairs of the validation pass, loaded once per run."""

    harmful: list[str]
    benign: list[str]
    pairs: list[dict]
    identities: dict[str, dict] = field(default_factory=dict)
    max_new_tokens: int = TRACK_MAX_NEW_TOKENS
    borderline: list[str] = field(default_factory=list)  # borderline-safe prompts (issue 25)

    def sizes(self) -> dict:
        return {"n_harmful": len(self.harmful), "n_benign": len(self.benign), "n_borderline": len(self.borderline),
                "n_pairs": len(self.pairs), "max_new_tokens": self.max_new_tokens, "split": "validation"}


def _cap(n_default: int, cap: int) -> int:
    return min(n_default, cap) if cap else n_default


def validation_set(cfg: ProfileConfig) -> ValidationSet:
    """First ``TRACK_N_*`` rows of the validation split of the profile's harmful, benign and
    preference datasets (capped by the eval section's caps)."""
    from bench.data import dpo_pairs, load_role, select_label

    ev = cfg.eval
    idents: dict[str, dict] = {}
    prompts: dict[str, list[str]] = {}
    for role, n in (("harmful", _cap(TRACK_N_PROMPTS, ev.n_harmful)), ("benign", _cap(TRACK_N_PROMPTS, ev.n_benign)),
                    ("borderline", _cap(TRACK_N_PROMPTS, ev.n_borderline))):
        if role == "borderline" and not cfg.data.borderline:
            prompts[role] = []
            continue
        ds = load_role(cfg.data, role, "validation")
        idents[f"tracking/{role}"] = ds.identity
        rows = ds.rows
        if any("label" in r for r in rows):
            rows = select_label(rows, role)
        prompts[role] = [r["prompt"] for r in rows[:n]]
    prefs = load_role(cfg.data, "preferences", "validation")
    idents["tracking/preferences"] = prefs.identity
    policy = cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better"
    pairs = dpo_pairs(prefs.rows, policy) if prefs.schema == "pku" else [dict(r) for r in prefs.rows]
    pairs = pairs[: _cap(TRACK_N_PAIRS, ev.n_pairs)]
    return ValidationSet(prompts["harmful"], prompts["benign"], pairs, idents,
                         min(TRACK_MAX_NEW_TOKENS, ev.max_new_tokens), prompts["borderline"])


def _logprobs_from_dict(d: dict | None):
    from bench.eval.logprobs import PairLogprobs

    return None if d is None else PairLogprobs(d["chosen"], d["rejected"], d["chosen_tokens"], d["rejected_tokens"])


def _validate(model, tok, cfg: ProfileConfig, vs: ValidationSet, ref=None) -> tuple[dict, Any, list[dict]]:
    """(metrics, the model's PairLogprobs, generations) of one validation pass; see the module docstring."""
    import torch

    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.logprobs import score_pairs
    from bench.eval.preference import preference_metrics
    from bench.eval.refusal import detect_many

    was_training = model.training
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            prompts = vs.harmful + vs.benign + vs.borderline
            texts = generate_greedy(model, tok, prompts, cfg.model.system_prompt,
                                    GenerationSettings(vs.max_new_tokens, cfg.eval.batch_size), desc="tracking") \
                if prompts else []
            pi = score_pairs(model, tok, vs.pairs, cfg.model.system_prompt, cfg.eval.score_batch_size,
                             cfg.eval.max_length, desc="tracking pairs") if vs.pairs else None
    finally:
        model.train(was_training)
    dets = detect_many(texts, prompts[:len(texts)])
    metrics: dict[str, dict] = {}
    gens = []
    nh, nb = len(vs.harmful), len(vs.benign)
    for name, role, lo, hi in (("refusal_harmful", "harmful", 0, nh),
                               ("over_refusal_benign", "benign", nh, nh + nb),
                               ("over_refusal_borderline", "borderline", nh + nb, len(prompts))):
        if hi > lo:
            metrics[name] = rate_metric(sum(d.is_refusal for d in dets[lo:hi]), hi - lo)
        gens += [{"set": role, "prompt": p, "generation": t, "label": d.label}
                 for p, t, d in zip(prompts[lo:hi], texts[lo:hi], dets[lo:hi])]
    if pi is not None:
        metrics.update(preference_metrics(pi, ref))
    return metrics, pi, gens


# =========================================================================== plain copies


def _merged_lora_state(peft_model) -> dict[str, torch.Tensor] | None:
    """State dict of the base model with every LoRA delta added, computed without touching the live
    model; None when the adapters are not plain LoRA (DoRA, modules_to_save, ...)."""
    base = peft_model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}
    for m in layers.values():
        if any(getattr(m, "use_dora", {}).get(a) for a in m.active_adapters):
            return None
    out: dict[str, torch.Tensor] = {}
    for key, t in base.state_dict().items():
        if "modules_to_save" in key or "original_module" in key:
            return None
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            mod, _, pname = key.partition(".base_layer.")
            layer = layers.get(mod)
            if layer is None:
                return None
            if pname == "weight" and not layer.merged:
                for a in layer.active_adapters:
                    if a in layer.lora_A:
                        t = t + layer.get_delta_weight(a).to(t.dtype)
            out[f"{mod}.{pname}"] = t.detach()
        else:
            out[key] = t.detach()
    return out


def save_plain_copy(model, tok, out: Path) -> Path:
    """Write ``model`` as a plain HF causal-LM folder (LoRA merged into a copy; the live model is
    unchanged) that ``AutoModelForCausalLM.from_pretrained`` loads. Atomic (temp folder + rename)."""
    import copy

    from bench.io import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            state = _merged_lora_state(model)
            if state is not None:
                model.get_base_model().save_pretrained(tmp, state_dict=state, safe_serialization=True)
            else:  # unusual adapters: merge a deep copy (costs one model of memory)
                copy.deepcopy(model).merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


# =========================================================================== the tracker


class Tracker:
    """Keeps checkpoints and runs the validation pass at :func:`checkpoint_steps` of one run.

    The recipe calls :meth:`start` once training state is loaded (step 0, or the step a resumed run
    continues from), :meth:`after_step` after every finished optimiser step, and :meth:`finish` with
    its ``StageRun`` to write the series into the record. ``final_dir`` is where the recipe saves
    the final model (the last kept step points there instead of a copy); ``init_dir`` is the initial
    policy's folder (the implicit reward's reference, re-scored only by a resumed run without cache)."""

    def __init__(self, cfg: ProfileConfig, keep: int, run_dir: Path, final_dir: Path, config_hash: str,
                 init_dir: Path | None = None, log=None, main_process: bool = True):
        self.cfg, self.keep, self.config_hash = cfg, keep, config_hash
        self.init_dir = Path(init_dir) if init_dir is not None else None
        self.root = Path(run_dir) / KEPT_DIR
        self.final_dir = Path(final_dir)
        self.log = log
        self.main = main_process
        self.steps: list[int] = []
        self.total = 0
        self.entries: list[dict] = []
        self.ref: dict | None = None  # the initial policy's pair log-probs (PairLogprobs.to_dict())
        self._vs: ValidationSet | None = None

    @property
    def vs(self) -> ValidationSet:
        if self._vs is None:
            self._vs = validation_set(self.cfg)
        return self._vs

    # ------------------------------------------------------------------ persistence
    def _state_path(self) -> Path:
        return self.root / STATE_FILE

    def _save_state(self) -> None:
        atomic_write_json(self._state_path(), {"config_hash": self.config_hash, "total_steps": self.total,
                                               "entries": self.entries, "ref_pair_logps": self.ref})

    def _load_state(self, upto: int) -> None:
        try:
            raw = json.loads(self._state_path().read_text())
        except (OSError, json.JSONDecodeError):
            return
        if raw.get("config_hash") != self.config_hash:
            return
        self.entries = [e for e in raw.get("entries", []) if e["step"] <= upto]
        self.ref = raw.get("ref_pair_logps")

    # ------------------------------------------------------------------ hooks
    def start(self, step: int, total_steps: int, model, tok) -> None:
        """Plan the kept steps; at step 0 keep the initial policy, when resuming reload the series."""
        self.total = int(total_steps)
        self.steps = checkpoint_steps(self.total, self.keep)
        if not self.main:
            return
        if step == 0:
            shutil.rmtree(self.root, ignore_errors=True)  # a fresh run: nothing of an older one stays
            self.entries, self.ref = [], None
        else:
            self._load_state(step)
        if step == 0 and 0 in self.steps:
            self._keep(0, model, tok)
        elif step == 0 and self.steps and self.vs.pairs:  # the reference, while the model still is the initial policy
            self.ref = _score_reference(model, tok, self.cfg, self.vs)
            self._save_state()

    def after_step(self, step: int, model, tok) -> None:
        if self.main and step in self.steps and step > 0:
            self._keep(step, model, tok)

    def _keep(self, step: int, model, tok) -> None:
        final = step >= self.total
        if final:
            mdir = self.final_dir  # the recipe saves the final model there right after training
        elif step == 0 and self.init_dir is not None:
            mdir = self.init_dir  # before the first update the policy *is* its initial folder: no copy
        else:
            mdir = save_plain_copy(model, tok, self.root / f"step-{step}")
        if step == 0:
            metrics, self.ref, gens = self._initial_pass(model, tok)
        else:
            if self.ref is None:  # resumed without a cached reference: score the initial policy
                self.ref = self._initial_policy_logps()
            metrics, _, gens = _validate(model, tok, self.cfg, self.vs, _logprobs_from_dict(self.ref))
        self.root.mkdir(parents=True, exist_ok=True)
        blob = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens).encode()
        atomic_write_bytes(self.root / f"generations-step-{step}.jsonl", blob)
        entry = {"step": step, "fraction": step / self.total if self.total else 1.0, "model_dir": str(mdir),
                 "metrics": metrics}
        self.entries = [e for e in self.entries if e["step"] != step] + [entry]
        self.entries.sort(key=lambda e: e["step"])
        self._save_state()
        short = {k: round(v["value"], 3) for k, v in metrics.items()
                 if k in ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "pref_acc_implicit",
                          "logp_margin_per_token")
                 and isinstance(v.get("value"), float) and math.isfinite(v["value"])}
        if self.log is not None:
            self.log.info("tracking step %d/%d: %s (%s)", step, self.total, json.dumps(short), mdir)
        print(f"tracking: step {step}/{self.total} {short}")

    def _initial_pass(self, model, tok) -> tuple[dict, dict | None, list[dict]]:
        """(metrics, pair log-probs, generations) of the initial policy. They depend only on that
        policy and the validation pass, so variants that start from the same folder (every DPO variant
        starts from SFT) share one pass through ``runs/<profile>/cache/tracking-init/``."""
        path = None
        if self.init_dir is not None:
            path = cache_dir(self.cfg.profile.name, INIT_CACHE) / f"{self._initial_key()}.json"
            try:
                hit = json.loads(path.read_text())
                return hit["metrics"], hit["ref"], hit["generations"]
            except (OSError, ValueError, KeyError):
                pass
        metrics, pi, gens = _validate(model, tok, self.cfg, self.vs, None)
        ref = None
        if pi is not None:
            ref = pi.to_dict()
            metrics = _start_shifts(metrics, pi)
        if path is not None:
            atomic_write_json(path, {"init_dir": str(self.init_dir), "metrics": metrics, "ref": ref,
                                     "generations": gens})
        return metrics, ref, gens

    def _initial_key(self) -> str:
        """What the initial pass depends on: the initial folder's weights (path, size and mtime of
        each file: a retrained policy rewrites them), the validation sets and the pass's settings."""
        from bench.eval.refusal import DETECTOR_NAME, DETECTOR_VERSION

        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(self.init_dir).iterdir()
                       if p.is_file())
        ev = self.cfg.eval
        key = {"v": 1, "init": str(Path(self.init_dir).resolve()), "files": files, "sizes": self.vs.sizes(),
               "data": self.vs.identities, "system_prompt": self.cfg.model.system_prompt, "dtype": self.cfg.model.dtype,
               "batch": [ev.batch_size, ev.score_batch_size, ev.max_length],
               "detector": [DETECTOR_NAME, DETECTOR_VERSION]}
        return json_sha256(key, length=32)

    def _initial_policy_logps(self) -> dict | None:
        """Pair log-probs of the run's initial policy, loaded from ``init_dir`` (only a run resumed
        without a cached reference needs this)."""
        import torch

        from bench.eval.logprobs import score_pairs
        from bench.models import load_pretrained

        if not self.vs.pairs or self.init_dir is None:
            return None
        model, tok = load_pretrained(self.init_dir, self.cfg.model)
        model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return score_pairs(model, tok, self.vs.pairs, self.cfg.model.system_prompt, self.cfg.eval.score_batch_size,
                           self.cfg.eval.max_length, desc="tracking reference").to_dict()

    # ------------------------------------------------------------------ record
    def finish(self, run) -> None:
        """Write the kept checkpoints and the series into the run's record."""
        from bench.eval.refusal import identity

        if not self.main:
            return
        run.artifacts["checkpoints"] = [{k: e[k] for k in ("step", "fraction", "model_dir")} for e in self.entries]
        run.extra["tracking"] = {"series": self.entries, "steps": self.steps, "total_steps": self.total,
                                 "reference": "policy_init",
                                 "detector": identity(),
                                 "validation": self.vs.sizes()}
        run.datasets.update(self.vs.identities)


def _score_reference(model, tok, cfg: ProfileConfig, vs: ValidationSet) -> dict:
    """Pair log-probs of ``model`` (the initial policy) as a ``PairLogprobs.to_dict()``."""
    import torch

    from bench.eval.logprobs import score_pairs

    was_training = model.training
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
            return score_pairs(model, tok, vs.pairs, cfg.model.system_prompt, cfg.eval.score_batch_size,
                               cfg.eval.max_length, desc="tracking reference").to_dict()
    finally:
        model.train(was_training)


def _start_shifts(metrics: dict, pi) -> dict:
    """At step 0 the policy *is* the reference: implicit accuracy is undefined (every implicit margin
    is 0, so it would read 0%) and is left out; the shifts (0 by construction) are recorded."""
    from bench.eval.preference import preference_metrics

    out = dict(metrics)
    full = preference_metrics(pi, pi)
    out["chosen_shift"], out["rejected_shift"] = full["chosen_shift"], full["rejected_shift"]
    return out


# =========================================================================== DPO (TRL) callback


def _keep_checkpoints_class():
    from transformers import TrainerCallback

    class KeepCheckpoints(TrainerCallback):
        """transformers/TRL callback driving a :class:`Tracker`: step 0 in ``on_train_begin`` (the
        initial policy, or the resumed step), then ``on_step_end`` after each optimiser step."""

        def __init__(self, tracker: Tracker, tok):
            self.tracker, self.tok = tracker, tok

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.tracker.main = self.tracker.main and state.is_world_process_zero
            self.tracker.start(state.global_step, state.max_steps, model, self.tok)

        def on_step_end(self, args, state, control, model=None, **kw):
            self.tracker.after_step(state.global_step, model, self.tok)

    KeepCheckpoints.__module__ = __name__
    return KeepCheckpoints


def __getattr__(name: str):
    """``KeepCheckpoints(tracker, tok)``, a ``transformers.TrainerCallback``, is built on first use so
    that importing this module stays free of torch and transformers."""
    if name == "KeepCheckpoints":
        cls = _keep_checkpoints_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
