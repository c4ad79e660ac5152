"""Measured units of `bench perf`: each loads what it needs, times its work, returns plain JSON.

    python -m bench.perf.units score '{"profile": "smoke", "n_pairs": 8, "repeats": 1}' out.json

A unit is a function ``args (dict) -> result (dict)`` in :data:`UNITS`. :func:`run_unit` runs one
in a fresh Python process (``isolate=True``, what `bench perf` does) and reads the child's peak
resident memory from ``os.wait4`` (``ru_maxrss``: the high-water mark of the whole process, so
torch's allocator, the tokenizer and the Python heap all count; ``tracemalloc`` would see only the
Python heap). ``isolate=False`` runs it in this process (``--quick``, tests): faster, and the
reported peak is then this process's high-water mark so far, marked as not isolated.

Inside a unit, the compared implementations run back to back in every repeat (ours, then theirs,
then the order swapped in the next repeat), after one untimed warm-up pass of each, on the same
model, inputs and threads: a neighbour slowing the machine down slows both sides of a repeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

# --------------------------------------------------------------------------- running a unit


def _rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_unit(name: str, args: dict, isolate: bool = True, log_dir: Path | None = None,
             timeout_s: float | None = None) -> dict:
    """Run unit ``name``; returns its result with ``peak_rss_mb``, ``isolated``, ``wall_s`` and,
    when it failed, ``error`` (the last lines of its traceback) instead of raising."""
    t0 = time.perf_counter()
    if not isolate:
        try:
            out = UNITS[name](dict(args))
        except Exception as e:  # a failed unit is a reported row, not a crashed benchmark
            out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
        out.update(peak_rss_mb=_rss_mb_self(), isolated=False, wall_s=time.perf_counter() - t0)
        return out
    with tempfile.TemporaryDirectory(prefix=f"bench-perf-{name}-") as tmp:
        out_file = Path(tmp) / "result.json"
        log_path = (log_dir / f"{name}.log") if log_dir else Path(tmp) / "log.txt"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.perf.units", name, json.dumps(args), str(out_file)],
                                    stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
        if out_file.exists():
            out = json.loads(out_file.read_text())
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
            why = "timed out" if deadline is not None and time.monotonic() > deadline else f"exit code {proc.returncode}"
            out = {"error": f"unit process failed ({why})", "traceback": "\n".join(tail)}
    out.update(peak_rss_mb=usage.ru_maxrss / 1024.0, isolated=True, wall_s=time.perf_counter() - t0)
    return out


def _child_main(argv: list[str]) -> int:
    name, args, out_file = argv[0], json.loads(argv[1]), Path(argv[2])
    try:
        out = UNITS[name](args)
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    out_file.write_text(json.dumps(out, default=str))
    return 0


# --------------------------------------------------------------------------- shared set-up


def _cfg(args: dict):
    from bench.config import load_config

    cfg = load_config(args["profile"], list(args.get("overrides") or []))
    _threads(cfg)
    return cfg


def _threads(cfg) -> None:
    import torch

    if cfg.profile.cpu_threads:
        torch.set_num_threads(cfg.profile.cpu_threads)


def _base(cfg):
    """The profile's base policy (built once for micro-llama profiles, as `make base` does)."""
    from bench.models import load_pretrained, prepare_base

    folder, _ = prepare_base(cfg, progress=lambda s: None)
    model, tok = load_pretrained(folder, cfg.model)
    return model.eval(), tok


def _pairs(cfg, n: int) -> list[dict]:
    """Held-out preference pairs (test split), as the battery forms them."""
    from bench.data import dpo_pairs, load_role

    prefs = load_role(cfg.data, "preferences", "test")
    policy = cfg.dpo.pairs if cfg.dpo is not None else "safer_then_better"
    pairs = dpo_pairs(prefs.rows, policy) if prefs.schema == "pku" else [dict(r) for r in prefs.rows]
    return pairs[:n] if n else pairs


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _interleaved(sides: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """One untimed warm-up call of each side, then ``repeats`` rounds; the order alternates per
    round. Returns ({side: [seconds]}, {side: output of its last call})."""
    last = {k: fn() for k, fn in sides.items()}
    secs: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            dt, last[k] = _timed(sides[k])
            secs[k].append(dt)
    return secs, last


# --------------------------------------------------------------------------- scoring


def unit_score(args: dict) -> dict:
    """Pairs/s of ``bench.eval.logprobs.score_pairs`` vs lm-eval's ``HFLM.loglikelihood`` (two
    requests per pair: context = chat-formatted prompt, continuation = response + EOS) and its
    token-level core ``HFLM._loglikelihood_tokens`` fed our exact token ids; log-prob agreement."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from bench import chat
    from bench.eval.logprobs import encode_pair, score_pairs

    cfg = _cfg(args)
    model, tok = _base(cfg)
    pairs = _pairs(cfg, int(args.get("n_pairs", 0)))
    bs = int(args.get("batch_size") or cfg.eval.score_batch_size)
    max_length = int(args.get("max_length") or cfg.eval.max_length)
    sp = cfg.model.system_prompt
    # Pairs whose responses would be cut by max_length are left out: lm-eval would score them whole.
    enc = [encode_pair(tok, p, sp, 10**9) for p in pairs]
    keep = [i for i, (c, r, _) in enumerate(enc) if max(len(c), len(r)) <= max_length]
    pairs, enc = [pairs[i] for i in keep], [enc[i] for i in keep]
    if not pairs:
        return {"error": "no preference pairs fit eval.max_length"}

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, max_length=max_length, device=str(model.device))
    str_reqs, tok_reqs = [], []
    for p, (c, r, plen) in zip(pairs, enc):
        ctx = chat.format_prompt(tok, p["prompt"], sp, p.get("history"))
        for resp, ids in ((p["chosen"], c), (p["rejected"], r)):
            cont = chat.format_response(tok, resp)
            str_reqs.append(Instance("loglikelihood", {}, (ctx, cont), len(str_reqs)))
            tok_reqs.append(((ctx, cont), ids[:plen], ids[plen:]))

    with torch.no_grad():
        secs, last = _interleaved({
            "ours": lambda: score_pairs(model, tok, pairs, sp, bs, max_length, desc="perf: ours"),
            "lm_eval": lambda: lm.loglikelihood(str_reqs, disable_tqdm=True),
            "lm_eval_tokens": lambda: lm._loglikelihood_tokens(tok_reqs, disable_tqdm=True),
        }, int(args.get("repeats", 3)))
    ours = [x for i in range(len(pairs)) for x in (last["ours"].chosen[i], last["ours"].rejected[i])]
    tok_path = [lp for lp, _ in last["lm_eval_tokens"]]
    str_path = [lp for lp, _ in last["lm_eval"]]
    d_tok = [abs(a - b) for a, b in zip(ours, tok_path)]
    d_str = [b - a for a, b in zip(ours, str_path)]
    # What lm-eval's string path scores: it moves trailing whitespace of the context into the
    # continuation, so its continuation can hold more tokens than the response alone.
    extra_tokens = []
    for (ctx, cont), _, cont_ids in tok_reqs:
        _, cont_enc = lm._encode_pair(ctx, cont)
        extra_tokens.append(len(cont_enc) - len(cont_ids))
    n_tokens = sum(len(c) + len(r) for c, r, _ in enc)
    return {
        "n_pairs": len(pairs), "n_requests": len(str_reqs), "tokens_per_pass": n_tokens, "batch_size": bs,
        "seconds": secs, "threads": torch.get_num_threads(), "model_params": sum(p.numel() for p in model.parameters()),
        "agreement": {
            "tokens_max_abs_diff": max(d_tok), "tokens_mean_abs_diff": sum(d_tok) / len(d_tok),
            "tokens_agree_1e-3": max(d_tok) <= 1e-3,
            "strings_mean_diff": sum(d_str) / len(d_str), "strings_max_abs_diff": max(abs(x) for x in d_str),
            "strings_extra_continuation_tokens": sorted(set(extra_tokens)),
        },
    }


# --------------------------------------------------------------------------- generation


def unit_generate(args: dict) -> dict:
    """New tokens/s of ``bench.eval.generate.generate_greedy`` (batched, length-sorted, KV cache)
    vs a plain per-prompt ``model.generate`` loop, greedy, on the battery's refusal prompts."""
    import torch

    from bench import chat
    from bench.eval.generate import GenerationSettings, generate_greedy
    from bench.eval.inputs import REFUSAL_SETS, load_inputs

    cfg = _cfg(args)
    model, tok = _base(cfg)
    sets, _ = load_inputs(cfg)
    prompts = [r["prompt"] for k, *_ in REFUSAL_SETS for r in sets[k]]
    n = int(args.get("n_prompts", 0))
    prompts = prompts[:n] if n else prompts
    sp = cfg.model.system_prompt
    settings = GenerationSettings(max_new_tokens=int(args.get("max_new_tokens") or cfg.eval.max_new_tokens),
                                  batch_size=int(args.get("batch_size") or cfg.eval.batch_size))

    def plain() -> tuple[list[str], int]:
        texts, n_new = [], 0
        for p in prompts:
            enc = tok(chat.format_prompt(tok, p, sp), return_tensors="pt", add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            n_new += int(new.numel())
            texts.append(tok.decode(new, skip_special_tokens=True).strip())
        return texts, n_new

    with torch.no_grad():
        secs, last = _interleaved({
            "ours": lambda: generate_greedy(model, tok, prompts, sp, settings, desc="perf: generate"),
            "plain_loop": plain,
        }, int(args.get("repeats", 3)))
    plain_texts, n_new = last["plain_loop"]
    same = sum(a == b for a, b in zip(last["ours"], plain_texts))
    return {"n_prompts": len(prompts), "new_tokens": n_new, "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size, "seconds": secs, "threads": torch.get_num_threads(),
            "identical_outputs": same}


# --------------------------------------------------------------------------- DPO


def unit_dpo(args: dict) -> dict:
    """Training tokens/s over one epoch of the same ``n_pairs`` pairs: ``side='ours'`` is the
    recipe of ``bench.train.dpo`` (its DPOConfig, trainable set, reference precomputed);
    ``side='trl_defaults'`` is ``DPOConfig(output_dir, use_cpu)`` as TRL ships it, on the base
    model with every parameter trainable, bounded to one epoch and with saving off."""
    import dataclasses

    import torch
    from datasets import Dataset
    from transformers.trainer_utils import SaveStrategy
    from trl import DPOConfig, DPOTrainer

    from bench import chat
    from bench.data import load
    from bench.data.pairs import dpo_pairs
    from bench.models import policy_init_dir, prepare_base
    from bench.train.dpo import build_pairs, dpo_args
    from bench.train.hf_trainer import load_trainable_policy

    cfg = _cfg(args)
    side = args["side"]
    section = cfg.require("dpo")
    section = dataclasses.replace(section, max_steps=-1, epochs=1.0, logging_steps=10**6, save_steps=10**6)
    name, variant = next(iter(section.variants.items()))
    prepare_base(cfg, progress=lambda s: None)
    with _runs_view(cfg, args):
        policy_dir = policy_init_dir(cfg, section.policy_init)
        train = load(cfg.data.preferences, "train", cfg.data)
        n_pairs = int(args.get("n_pairs") or 8)
        cuda = torch.cuda.is_available()
        secs, info = [], {}
        for r in range(int(args.get("repeats", 1))):
            model, tok, n_train, n_total = load_trainable_policy(cfg, section, policy_dir)
            if side == "trl_defaults":
                for p in model.parameters():
                    p.requires_grad_(True)
                n_train = n_total
            pairs, _ = build_pairs(cfg, section, dpo_pairs(train.rows, section.pairs), tok,
                                   f"{cfg.data.preferences}:train")
            pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs[:n_pairs]]
            with tempfile.TemporaryDirectory(prefix="bench-perf-dpo-") as out:
                if side == "ours":
                    dargs = dpo_args(section, variant, Path(out), cfg.profile.seed)
                else:
                    dargs = DPOConfig(output_dir=out, use_cpu=not cuda)
                    dargs.num_train_epochs = 1.0  # bounded run; TRL's default is 3 epochs
                    dargs.report_to = []
                dargs.save_strategy = SaveStrategy.NO
                info = {"bf16": dargs.bf16, "fp16": dargs.fp16, "gradient_checkpointing": dargs.gradient_checkpointing,
                        "per_device_train_batch_size": dargs.per_device_train_batch_size,
                        "precompute_ref_log_probs": dargs.precompute_ref_log_probs, "trainable_params": n_train,
                        "total_params": n_total, "n_pairs": len(pairs)}
                trainer = DPOTrainer(model=model, args=dargs, train_dataset=Dataset.from_list(pairs), processing_class=tok)
                dt, result = _timed(trainer.train)
                secs.append(dt)
                info["steps"] = int(result.global_step)
        n_tokens = 0
        for p in pairs:
            n_p = len(tok(p["prompt"], add_special_tokens=False)["input_ids"])
            for k in ("chosen", "rejected"):
                n_tokens += n_p + len(tok(chat.format_response(tok, p[k]), add_special_tokens=False)["input_ids"])
    return {"side": side, "variant": name, "seconds": secs, "tokens_per_epoch": n_tokens,
            "threads": torch.get_num_threads(), **info}


@contextlib.contextmanager
def _runs_view(cfg, args: dict, stages: tuple[str, ...] = ("sft", "reward", "cost")):
    """``BENCH_RUNS`` pointed at a temporary folder whose ``<profile>/<stage>`` entries link to the
    real runs' finished stages (the inputs a recipe reads), so a benchmark run writes nothing into
    the real ``runs/`` and never overwrites a record."""
    from bench.runs import find_record, profile_root, run_dir

    profile = cfg.profile.name
    real = {stage: run_dir(profile, stage) for stage in stages if find_record(profile, stage)}
    old = os.environ.get("BENCH_RUNS")
    with tempfile.TemporaryDirectory(prefix="bench-perf-runs-") as tmp:
        os.environ["BENCH_RUNS"] = tmp
        view = profile_root(profile)
        view.mkdir(parents=True)
        for stage, folder in real.items():
            run_dir(profile, stage).symlink_to(folder, target_is_directory=True)
        try:
            yield view
        finally:
            if old is None:
                os.environ.pop("BENCH_RUNS", None)
            else:
                os.environ["BENCH_RUNS"] = old


# --------------------------------------------------------------------------- PPO


def unit_ppo(args: dict) -> dict:
    """Seconds and tokens (prompt + sampled response, non-padding) of each step of our PPO
    (``bench.train.ppo.train_variant``, the profile's first variant) over ``steps`` steps. The reward
    (and cost) models are the profile's trained ones; ``train_reward=True`` trains a throw-away
    reward model first when the profile has none (``--quick`` on a fresh smoke profile)."""
    import dataclasses

    import torch

    from bench import chat
    from bench.models import prepare_base
    from bench.runs import find_record
    from bench.train import ppo, prompt_stream

    cfg = _cfg(args)
    section = cfg.require("ppo")
    steps = int(args.get("steps") or 2)
    section = dataclasses.replace(section, max_steps=steps, save_steps=10**6, logging_steps=10**6, keep_checkpoints=0)
    cfg = dataclasses.replace(cfg, ppo=section)
    name, variant = next(iter(section.variants.items()))
    prepare_base(cfg, progress=lambda s: None)
    with _runs_view(cfg, args) as view:
        trained_reward = False
        if find_record(cfg.profile.name, "reward") is None:
            if not args.get("train_reward"):
                return {"error": f"profile '{cfg.profile.name}' has no reward model record (run `make reward "
                                 f"PROFILE={cfg.profile.name}`)"}
            from bench.train.reward_cost import run_score_stage

            (view / "reward").unlink(missing_ok=True)
            with contextlib.redirect_stdout(sys.stderr):
                run_score_stage(cfg, "reward")
            trained_reward = True
        prompts, identity = prompt_stream.training_prompts(cfg)
        with contextlib.redirect_stdout(sys.stderr):
            ppo.train_variant(cfg, name, variant, prompts, identity, force=True)
        rec = find_record(cfg.profile.name, name)
    series = rec["extra"]["series"]
    # Tokens of each step's rollout: the same prompts train_variant drew (fit, then prompt_indices).
    from bench.models import load_pretrained, policy_init_dir

    with _runs_view(cfg, args):
        _, tok = load_pretrained(policy_init_dir(cfg, section.policy_init), cfg.model)
    fitted, _ = prompt_stream.fit_prompts(prompts, tok, cfg.model.system_prompt, section)
    plen = [len(tok(chat.format_prompt(tok, p, cfg.model.system_prompt), add_special_tokens=False)["input_ids"])
            for p in fitted]
    tokens = []
    for row in series:
        idx = prompt_stream.prompt_indices(len(fitted), section.rollout_prompts, row["step"] - 1, cfg.profile.seed, 0, 1)
        tokens.append(sum(plen[i] for i in idx) + row["response_length"] * len(idx))
    return {"variant": name, "steps": len(series), "seconds": [row["seconds"] for row in series],
            "tokens_per_step": tokens, "rollout_prompts": section.rollout_prompts, "ppo_epochs": section.ppo_epochs,
            "max_new_tokens": section.max_new_tokens, "trainable": section.trainable,
            "trained_throwaway_reward_model": trained_reward, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- memory probe (tests)


def unit_alloc(args: dict) -> dict:
    """Touch ``mb`` MiB and return: a known high-water mark to test the peak-memory plumbing."""
    buf = bytearray(int(args.get("mb", 64)) * 1024 * 1024)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return {"allocated_mb": len(buf) / 2**20}


def _gpu_units() -> dict[str, Callable[[dict], dict]]:
    from bench.perf import gpu

    return {"gpu_1b_train": gpu.unit_1b_train, "gpu_1b_deepspeed": gpu.unit_1b_deepspeed,
            "gpu_7b_lora_ppo": gpu.unit_7b_lora_ppo}


UNITS: dict[str, Callable[[dict], dict]] = {
    "score": unit_score, "generate": unit_generate, "dpo": unit_dpo, "ppo": unit_ppo, "alloc": unit_alloc,
    "gpu_1b_train": lambda a: _gpu_units()["gpu_1b_train"](a),
    "gpu_1b_deepspeed": lambda a: _gpu_units()["gpu_1b_deepspeed"](a),
    "gpu_7b_lora_ppo": lambda a: _gpu_units()["gpu_7b_lora_ppo"](a),
}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
