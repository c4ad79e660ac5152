"""Performance benchmarks (`make bench`): our stages against what a user would run instead.

    make bench                                   # == bench perf --profile default
    bench perf --profile default --repeats 5
    bench perf --profile smoke --quick           # tiny sizes, 1 repeat, in-process (the tests)

Writes ``leaderboards/perf.md`` (``perf-<profile>.md`` for other profiles) and the raw numbers as
JSON beside it (``perf[-<profile>].json``), with the machine (``bench.provenance``). Every
figure is a median with its spread (min-max, and the interquartile range in the JSON) over repeats.

What is measured, and how (each unit is in :mod:`bench.perf.units`):

- **stages**: wall time of every stage read from the run records (stage and battery records, as
  ``bench.runs.record_paths`` lists them): the pipeline is not re-run; peak memory of a stage is the peak
  resident memory of the unit below that does its work (records carry no memory figure).
- **scoring**: pairs/s of ``bench.eval.logprobs.score_pairs`` vs lm-evaluation-harness's
  ``HFLM.loglikelihood`` on the same pairs (two requests per pair) and model, and their agreement.
- **generation**: new tokens/s of ``bench.eval.generate.generate_greedy`` vs a per-prompt
  ``model.generate`` loop.
- **training**: tokens/s of our DPO recipe vs TRL's ``DPOTrainer`` defaults, and of our PPO step.
- **GPU** (only where ``torch.cuda.is_available()``): fp16 training tokens/s and MFU of a 1B Llama
  shape, and the peak memory of a 7B-shaped LoRA-PPO step under a 32 GB cap (:mod:`bench.perf.gpu`).

Each unit runs in its own process and its peak resident memory (``ru_maxrss``) is read by the
parent; ``--quick`` runs them in-process (faster; the memory column then says "not isolated").
Set ``BENCH_LEADERBOARDS`` or ``--out-dir`` to write elsewhere (the tests do).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bench.config import REPO_ROOT, ProfileConfig, dump_yaml
from bench.perf.timing import rates, ratio, summarize
from bench.published import leaderboards_root
from bench.runs import PIPELINE_STAGES, record_paths, runs_root, stage_rank

TARGET_SCORING_SPEEDUP = 2.0
TARGET_PIPELINE_S = 20 * 60  # the default profile's whole pipeline on the 2-core reference machine
GPU_MEMORY_CAP_GB = 32.0


@dataclass(frozen=True)
class Sizes:
    """How much work each unit does (``quick``: seconds in total on the smoke profile)."""

    score_pairs: int = 48
    gen_prompts: int = 32
    gen_max_new_tokens: int = 0  # 0: the profile's eval.max_new_tokens
    dpo_pairs: int = 16
    ppo_steps: int = 2
    gpu_seq_len: int = 1024
    gpu_batch: int = 4
    gpu_steps: int = 6
    ppo7b_prompts: int = 4
    ppo7b_prompt_len: int = 256
    ppo7b_new_tokens: int = 256


QUICK = Sizes(score_pairs=6, gen_prompts=4, gen_max_new_tokens=8, dpo_pairs=4, ppo_steps=1, gpu_seq_len=256,
              gpu_batch=2, gpu_steps=2, ppo7b_prompts=1, ppo7b_prompt_len=64, ppo7b_new_tokens=16)


def output_paths(profile: str, out_dir: Path | None = None, only: str | None = None) -> tuple[Path, Path]:
    d = Path(out_dir) if out_dir else leaderboards_root()
    # A GPU-only report (measured on a GPU node) sits beside the CPU one instead of replacing it.
    stem = "perf-gpu" if only == "gpu" else ("perf" if profile == "default" else f"perf-{profile}")
    return d / f"{stem}.md", d / f"{stem}.json"


# --------------------------------------------------------------------------- stage records


def stage_times(profile: str) -> dict:
    """Wall times of the profile's finished stages from its run records (no re-run)."""
    from bench.records import RecordError, read_record

    rows = []
    for path in record_paths(profile):
        try:
            rec = read_record(path)
        except RecordError as e:
            rows.append({"record": str(path), "error": str(e)})
            continue
        rows.append({"stage": rec["stage"], "variant": rec["variant"], "wall_time_s": rec.get("wall_time_s"),
                     "resumed": bool((rec.get("extra") or {}).get("resumed_from")),
                     "date": (rec.get("provenance") or {}).get("date"), "record": str(path)})
    stages: dict[str, dict] = {}
    for r in rows:
        if "stage" not in r:
            continue
        s = stages.setdefault(r["stage"], {"variants": [], "total_s": 0.0, "resumed": False})
        s["variants"].append(r["variant"])
        s["total_s"] += float(r["wall_time_s"] or 0.0)
        s["resumed"] |= r["resumed"]
    for name, s in stages.items():
        # Eval records carry the scored variant's name: match on the stage too.
        s["per_variant_s"] = summarize([r["wall_time_s"] for r in rows if r.get("stage") == name
                                        and r.get("wall_time_s") is not None])
    stages = dict(sorted(stages.items(), key=lambda kv: stage_rank(kv[0])))
    missing = [st for st in PIPELINE_STAGES if st not in stages]
    return {"runs_dir": str(runs_root() / profile), "records": rows, "stages": stages, "missing": missing,
            "total_s": sum(s["total_s"] for s in stages.values())}


# --------------------------------------------------------------------------- figures


def _score_figures(u: dict) -> dict:
    s = u["seconds"]
    n = u["n_pairs"]
    ours, theirs, toks = rates(n, s["ours"]), rates(n, s["lm_eval"]), rates(n, s["lm_eval_tokens"])
    return {"ours_pairs_per_s": summarize(ours), "lm_eval_pairs_per_s": summarize(theirs),
            "lm_eval_tokens_pairs_per_s": summarize(toks), "speedup_vs_lm_eval": ratio(ours, theirs),
            "speedup_vs_lm_eval_tokens": ratio(ours, toks)}


def _gen_figures(u: dict) -> dict:
    s = u["seconds"]
    ours, plain = rates(u["new_tokens"], s["ours"]), rates(u["new_tokens"], s["plain_loop"])
    return {"ours_tokens_per_s": summarize(ours), "plain_tokens_per_s": summarize(plain), "speedup": ratio(ours, plain)}


def _dpo_figures(ours: dict, trl: dict) -> dict:
    out = {}
    for key, u in (("ours", ours), ("trl_defaults", trl)):
        if u and "error" not in u:
            out[f"{key}_tokens_per_s"] = summarize(rates(u["tokens_per_epoch"], u["seconds"]))
    if "ours_tokens_per_s" in out and "trl_defaults_tokens_per_s" in out:
        mo, mt = out["ours_tokens_per_s"]["median"], out["trl_defaults_tokens_per_s"]["median"]
        out["speedup_of_medians"] = mo / mt if mt else math.nan
    return out


def _ppo_figures(u: dict) -> dict:
    return {"tokens_per_s": summarize(rates(u["tokens_per_step"], u["seconds"])), "step_s": summarize(u["seconds"])}


def _gpu_1b_figures(u: dict) -> dict:
    tps = rates(u["tokens_per_step"], u["seconds"])
    out = {"tokens_per_s": summarize(tps)}
    if u.get("peak_tflops_fp16"):
        out["mfu"] = summarize([t * u["flops_per_token"] / (u["peak_tflops_fp16"] * 1e12) for t in tps])
    return out


# --------------------------------------------------------------------------- the run


def run_perf(cfg: ProfileConfig, repeats: int = 3, quick: bool = False, out_dir: Path | None = None,
             progress: Callable[[str], None] = print, isolate: bool | None = None,
             only: str | None = None) -> tuple[Path, Path]:
    """Run every unit (``only="gpu"``: just the GPU units, into ``perf-gpu.md``), write the markdown and
    JSON; returns their paths."""
    import torch

    from bench.io import atomic_write_json, atomic_write_text
    from bench.perf.report import render
    from bench.perf.units import run_unit
    from bench.provenance import provenance

    sizes = QUICK if quick else Sizes()
    repeats = 1 if quick else max(1, repeats)
    isolate = (not quick) if isolate is None else isolate
    if only not in (None, "gpu"):
        raise ValueError(f"bench perf --only: unknown unit group {only!r} (known: gpu)")
    if only == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("bench perf --only gpu: no CUDA device on this machine (torch.cuda.is_available() is False)")
    md_path, json_path = output_paths(cfg.profile.name, out_dir, only)
    log_dir = json_path.parent / f".{json_path.stem}-logs" if isolate else None
    # The units reload the resolved profile (command-line overrides included) from this file.
    resolved = Path(tempfile.mkdtemp(prefix="bench-perf-cfg-")) / f"{cfg.profile.name}.yaml"
    resolved.write_text(dump_yaml(cfg))
    base = {"profile": str(resolved)}
    units: dict[str, dict] = {}

    def unit(name: str, key: str, args: dict) -> dict:
        progress(f"perf: {key} ...")
        units[key] = run_unit(name, {**base, **args}, isolate=isolate, log_dir=log_dir, timeout_s=3600)
        if "error" in units[key]:
            progress(f"perf: {key} failed: {units[key]['error']}")
        return units[key]

    if only is None:
        unit("score", "score", {"n_pairs": sizes.score_pairs, "repeats": repeats})
        unit("generate", "generate", {"n_prompts": sizes.gen_prompts, "max_new_tokens": sizes.gen_max_new_tokens,
                                      "repeats": repeats})
        if cfg.dpo is not None:
            unit("dpo", "dpo_ours", {"side": "ours", "n_pairs": sizes.dpo_pairs, "repeats": repeats})
            unit("dpo", "dpo_trl_defaults", {"side": "trl_defaults", "n_pairs": sizes.dpo_pairs, "repeats": repeats})
        if cfg.ppo is not None:
            unit("ppo", "ppo", {"steps": sizes.ppo_steps, "train_reward": quick})
    gpu_skip = None
    if torch.cuda.is_available():
        unit("gpu_1b_train", "gpu_1b_train", {"seq_len": sizes.gpu_seq_len, "batch": sizes.gpu_batch,
                                              "steps": sizes.gpu_steps})
        unit("gpu_1b_deepspeed", "gpu_1b_deepspeed", {"seq_len": sizes.gpu_seq_len, "batch": sizes.gpu_batch,
                                                      "steps": sizes.gpu_steps})
        unit("gpu_7b_lora_ppo", "gpu_7b_lora_ppo", {"prompts": sizes.ppo7b_prompts, "prompt_len": sizes.ppo7b_prompt_len,
                                                    "max_new_tokens": sizes.ppo7b_new_tokens, "cap_gb": GPU_MEMORY_CAP_GB})
    else:
        gpu_skip = ("skipped: no CUDA device on this machine (torch.cuda.is_available() is False); the fp16 1B "
                    "training/MFU and 7B LoRA-PPO memory units need a GPU (`bench perf` on a GPU node runs them)")

    figures: dict[str, dict] = {}
    for key, fn in (("score", _score_figures), ("generate", _gen_figures), ("ppo", _ppo_figures),
                    ("gpu_1b_train", _gpu_1b_figures), ("gpu_1b_deepspeed", _gpu_1b_figures)):
        if key in units and "error" not in units[key]:
            figures[key] = fn(units[key])
    if "dpo_ours" in units:
        figures["dpo"] = _dpo_figures(units["dpo_ours"], units["dpo_trl_defaults"])
    result = {
        "profile": cfg.profile.name, "quick": quick, "repeats": repeats, "isolated": isolate, "only": only,
        "sizes": asdict(sizes), "provenance": provenance(),
        "stages": stage_times(cfg.profile.name) if only is None else None,
        "units": units, "figures": figures, "gpu_skipped": gpu_skip,
        "targets": {"scoring_speedup": TARGET_SCORING_SPEEDUP, "pipeline_s": TARGET_PIPELINE_S,
                    "gpu_cap_gb": GPU_MEMORY_CAP_GB},
    }
    shutil.rmtree(resolved.parent, ignore_errors=True)
    if only == "gpu" and json_path.exists():  # `make gpu-check`'s results live in the same report: keep them
        kept = json.loads(json_path.read_text()).get("gpu_check")
        if kept is not None:
            result["gpu_check"] = kept
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, render(result))
    progress(f"perf: wrote {md_path} and {json_path}")
    return md_path, json_path


def load_result(path: Path) -> dict:
    return json.loads(Path(path).read_text())
