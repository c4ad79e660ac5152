"""Measured units of `bench perf`: each loads what it needs, times its work, returns plain JSON.

    python -m bench.perf.units score '{"profile": "smoke", "n_pairs": 8, "repeats": 1}' out.json

A unit is a function ``args (dict) -> result (dict)`` in :data:`UNITS`. :func:`run_unit` runs one
in a fresh Python process (``isolate=True``, what `bench perf` does) and reads the child's peak
resident memory from ``os.wait4`` (``ru_maxrss``: the high-water mark of the whole process, so
torch's allocator, the tokenizer and the Python heap all count; ``tracemalloc`` would see only the
Python heap). ``isolate=False`` runs it in this process (``--quick``, tests): faster, and the
reported peak is then this process's high-water mark so far, marked as not isolated. The units'
shared set-up (config, models, precision, interleaved timing) is :mod:`bench.perf.common`; the
generation unit lives with the decoder's own benchmark in :mod:`bench.perf.generation`.

Inside a unit, the compared implementations run back to back in every repeat (ours, then theirs,
then the order swapped in the next repeat), after one untimed warm-up pass of each, on the same
model, inputs and threads: a neighbour slowing the machine down slows both sides of a repeat.

Precision axis: a side runs in ``fp32`` (autocast explicitly off, so an enclosing autocast cannot
leak in) or ``bf16`` (a model made ready by ``bench.precision.for_precision``, as the loaders do:
fp32 weights, bf16 matmuls, fp32 output heads; see ``common.compute``), whatever the profile's
``model.precision`` says. The users' baselines (lm-eval, plain batched ``generate``) run in
fp32 on a model loaded as a user would load it (no head swap). ``matmul_peak`` measures the
machine's fp32 and bf16 matmul throughput in the same run, so training FLOP/s is a fraction of
this machine's own limit.
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

from bench.perf.common import (PRECISIONS, compute, cpu_bf16, heldout_pairs, interleaved, plain_and_bf16_models,
                               timed, unit_cfg, with_precision)
from bench.perf.generation import unit_generate

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


# --------------------------------------------------------------------------- scoring


def unit_score(args: dict) -> dict:
    """Pairs/s of ``bench.eval.logprobs.score_pairs`` in fp32 and in bf16 vs lm-eval's
    ``HFLM.loglikelihood`` in fp32 (the user's baseline; two requests per pair: context =
    chat-formatted prompt, continuation = response + EOS). Correctness: lm-eval's token-level core
    ``HFLM._loglikelihood_tokens`` fed our exact token ids (untimed) against our fp32 sums; our bf16
    sums against our fp32 sums, and the sign of each pair's chosen - rejected margin."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from bench import chat
    from bench.eval.logprobs import encode_pair, score_pairs

    cfg = unit_cfg(args)
    plain, ours16, tok = plain_and_bf16_models(cfg)
    pairs = heldout_pairs(cfg, int(args.get("n_pairs", 0)))
    bs = int(args.get("batch_size") or cfg.eval.score_batch_size)
    max_length = int(args.get("max_length") or cfg.eval.max_length)
    sp = cfg.model.system_prompt
    # Pairs whose responses would be cut by max_length are left out: lm-eval would score them whole.
    enc = [encode_pair(tok, p, sp, 10**9) for p in pairs]
    keep = [i for i, (c, r, _) in enumerate(enc) if max(len(c), len(r)) <= max_length]
    pairs, enc = [pairs[i] for i in keep], [enc[i] for i in keep]
    if not pairs:
        return {"error": "no preference pairs fit eval.max_length"}

    lm = HFLM(pretrained=plain, tokenizer=tok, batch_size=bs, max_length=max_length, device=str(plain.device))
    str_reqs, tok_reqs = [], []
    for p, (c, r, plen) in zip(pairs, enc):
        ctx = chat.format_prompt(tok, p["prompt"], sp, p.get("history"))
        for resp, ids in ((p["chosen"], c), (p["rejected"], r)):
            cont = chat.format_response(tok, resp)
            str_reqs.append(Instance("loglikelihood", {}, (ctx, cont), len(str_reqs)))
            tok_reqs.append(((ctx, cont), ids[:plen], ids[plen:]))

    def ours(model, precision):
        def run():
            with compute(precision):
                return score_pairs(model, tok, pairs, sp, bs, max_length, desc=f"perf: ours {precision}")
        return run

    def lm_eval():
        with compute("fp32"):
            return lm.loglikelihood(str_reqs, disable_tqdm=True)

    with torch.no_grad():
        secs, last = interleaved({"ours_fp32": ours(plain, "fp32"), "ours_bf16": ours(ours16, "bf16"),
                                   "lm_eval_fp32": lm_eval}, int(args.get("repeats", 3)))
        with compute("fp32"):
            tok_path = [lp for lp, _ in lm._loglikelihood_tokens(tok_reqs, disable_tqdm=True)]

    def flat(res):
        return [x for i in range(len(pairs)) for x in (res.chosen[i], res.rejected[i])]

    o32, o16 = flat(last["ours_fp32"]), flat(last["ours_bf16"])
    str_path = [lp for lp, _ in last["lm_eval_fp32"]]
    d_tok = [abs(a - b) for a, b in zip(o32, tok_path)]
    d_str = [b - a for a, b in zip(o32, str_path)]
    d_prec = [abs(a - b) for a, b in zip(o32, o16)]
    m32 = [c - r for c, r in zip(last["ours_fp32"].chosen, last["ours_fp32"].rejected)]
    m16 = [c - r for c, r in zip(last["ours_bf16"].chosen, last["ours_bf16"].rejected)]
    # What lm-eval's string path scores: it moves trailing whitespace of the context into the
    # continuation, so its continuation can hold more tokens than the response alone.
    extra_tokens = []
    for (ctx, cont), _, cont_ids in tok_reqs:
        _, cont_enc = lm._encode_pair(ctx, cont)
        extra_tokens.append(len(cont_enc) - len(cont_ids))
    n_tokens = sum(len(c) + len(r) for c, r, _ in enc)
    return {
        "n_pairs": len(pairs), "n_requests": len(str_reqs), "tokens_per_pass": n_tokens, "batch_size": bs,
        "seconds": secs, "threads": torch.get_num_threads(), "model_params": sum(p.numel() for p in plain.parameters()),
        "cpu": cpu_bf16(),
        "agreement": {
            "tokens_max_abs_diff": max(d_tok), "tokens_mean_abs_diff": sum(d_tok) / len(d_tok),
            "tokens_agree_1e-3": max(d_tok) <= 1e-3,
            "strings_mean_diff": sum(d_str) / len(d_str), "strings_max_abs_diff": max(abs(x) for x in d_str),
            "strings_extra_continuation_tokens": sorted(set(extra_tokens)),
        },
        "bf16_vs_fp32": {
            "max_abs_diff_sums": max(d_prec), "mean_abs_diff_sums": sum(d_prec) / len(d_prec),
            "margin_sign_agreement": sum((a > 0) == (b > 0) for a, b in zip(m32, m16)) / len(m32),
            "margins_max_abs_diff": max(abs(a - b) for a, b in zip(m32, m16)), "n_margins": len(m32),
        },
    }


# --------------------------------------------------------------------------- DPO


def unit_dpo(args: dict) -> dict:
    """Training tokens/s over one epoch of the same ``n_pairs`` pairs: ``side='ours'`` is the
    recipe of ``bench.train.dpo`` (its DPOConfig, trainable set, reference precomputed, TRL's fused
    head on labelled positions only: ``bench.train.fused_head``), run in each
    of ``precisions`` back to back every repeat (``seconds``: {precision: [s]});
    ``side='trl_defaults'`` is ``DPOConfig(output_dir, use_cpu)`` as TRL ships it (its own
    precision), on the base model with every parameter trainable, bounded to one epoch and with
    saving off (``seconds``: [s])."""
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
    from bench.train.fused_head import compact_fused_head, sliced_fold_rows
    from bench.train.hf_trainer import load_trainable_policy

    cfg = unit_cfg(args)
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
        precisions = list(args.get("precisions") or PRECISIONS) if side == "ours" else ["trl"]
        secs: dict[str, list[float]] = {k: [] for k in precisions}
        info: dict = {}
        for r in range(int(args.get("repeats", 1))):
            for prec in (precisions if r % 2 == 0 else precisions[::-1]):
                pcfg = with_precision(cfg, prec) if side == "ours" else with_precision(cfg, "fp32")
                model, tok, n_train, n_total = load_trainable_policy(pcfg, section, policy_dir)
                if side == "trl_defaults":
                    for p in model.parameters():
                        p.requires_grad_(True)
                    n_train = n_total
                pairs, _ = build_pairs(pcfg, section, dpo_pairs(train.rows, section.pairs), tok,
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
                    trainer = DPOTrainer(model=model, args=dargs, train_dataset=Dataset.from_list(pairs),
                                         processing_class=tok)
                    # ours: `prec` and the compact fused head as the pipeline runs them (`train_resumable`);
                    # TRL: none of ours (its own bf16 autocast applies, its head scores every position)
                    compact = compact_fused_head(trainer.model) if side == "ours" else contextlib.nullcontext(False)
                    with compute(prec if side == "ours" else "fp32"), compact as info["compact_fused_head"]:
                        info["head_fold_rows"] = sliced_fold_rows()
                        dt, result = timed(trainer.train)
                    secs[prec].append(dt)
                    info["steps"] = int(result.global_step)
                del trainer, model
        n_tokens = 0
        for p in pairs:
            n_p = len(tok(p["prompt"], add_special_tokens=False)["input_ids"])
            for k in ("chosen", "rejected"):
                n_tokens += n_p + len(tok(chat.format_response(tok, p[k]), add_special_tokens=False)["input_ids"])
    return {"side": side, "variant": name, "seconds": secs if side == "ours" else secs["trl"],
            "precisions": precisions if side == "ours" else None, "tokens_per_epoch": n_tokens,
            "threads": torch.get_num_threads(), "cpu": cpu_bf16(), **info}


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
    (``bench.train.ppo.train_variant``, the profile's first variant) over ``steps`` steps, in each
    of ``precisions`` back to back every repeat (one whole run of ``steps`` steps per precision and
    repeat, the order alternating). The reward (and cost) models are the profile's trained ones;
    ``train_reward=True`` trains a throw-away reward model first when the profile has none
    (``--quick`` on a fresh smoke profile)."""
    import dataclasses

    import torch

    from bench import chat
    from bench.models import load_pretrained, policy_init_dir, prepare_base
    from bench.runs import find_record
    from bench.train import ppo, prompt_stream

    cfg = unit_cfg(args)
    section = cfg.require("ppo")
    steps = int(args.get("steps") or 2)
    section = dataclasses.replace(section, max_steps=steps, save_steps=10**6, logging_steps=10**6, keep_checkpoints=0)
    cfg = dataclasses.replace(cfg, ppo=section)
    name, variant = next(iter(section.variants.items()))
    precisions = list(args.get("precisions") or PRECISIONS)
    prepare_base(cfg, progress=lambda s: None)
    seconds: dict[str, list[float]] = {k: [] for k in precisions}
    tokens: dict[str, list[int]] = {k: [] for k in precisions}
    run_seconds: dict[str, list[float]] = {k: [] for k in precisions}
    run_tokens: dict[str, list[int]] = {k: [] for k in precisions}
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
        policy, tok = load_pretrained(policy_init_dir(cfg, section.policy_init), with_precision(cfg, "fp32").model)
        total_params = sum(p.numel() for p in policy.parameters())
        del policy
        # Tokens of each step's rollout: the same prompts train_variant draws (fit, then prompt_indices).
        fitted, _ = prompt_stream.fit_prompts(prompts, tok, cfg.model.system_prompt, section)
        plen = [len(tok(chat.format_prompt(tok, p, cfg.model.system_prompt), add_special_tokens=False)["input_ids"])
                for p in fitted]
        trainable = None
        for r in range(int(args.get("repeats", 1))):
            for prec in (precisions if r % 2 == 0 else precisions[::-1]):
                with contextlib.redirect_stdout(sys.stderr), compute(prec):
                    ppo.train_variant(with_precision(cfg, prec), name, variant, prompts, identity, force=True)
                rec = find_record(cfg.profile.name, name)
                trainable = rec["extra"]["tuning"]["trainable_params"]
                series = rec["extra"]["series"]
                toks = []
                for row in series:
                    idx = prompt_stream.prompt_indices(len(fitted), section.rollout_prompts, row["step"] - 1,
                                                       cfg.profile.seed)
                    toks.append(sum(plen[i] for i in idx) + row["response_length"] * len(idx))
                seconds[prec] += [row["seconds"] for row in series]
                tokens[prec] += toks
                run_seconds[prec].append(sum(row["seconds"] for row in series))
                run_tokens[prec].append(sum(toks))
    return {"variant": name, "steps": steps, "precisions": precisions, "seconds": seconds, "tokens_per_step": tokens,
            "run_seconds": run_seconds, "run_tokens": run_tokens, "rollout_prompts": section.rollout_prompts,
            "ppo_epochs": section.ppo_epochs, "max_new_tokens": section.max_new_tokens, "trainable": section.trainable,
            "trainable_params": trainable, "total_params": total_params,
            "trained_throwaway_reward_model": trained_reward, "threads": torch.get_num_threads(), "cpu": cpu_bf16()}


# --------------------------------------------------------------------------- matmul peak


# (M, K, N): SmolLM2-135M's MLP up-projection and its LM head on a 1024-token batch, the MLP at
# decode shape (32 sequences, one token each), and the square 2048^3 every BLAS is tuned for.
MATMUL_SHAPES = ((1024, 576, 1536), (1024, 576, 49152), (32, 576, 1536), (2048, 2048, 2048))


def unit_matmul_peak(args: dict) -> dict:
    """``torch.matmul`` GFLOP/s (2*M*K*N per product) in fp32 and bf16 on :data:`MATMUL_SHAPES`,
    on the profile's threads; each repeat runs every shape in both dtypes back to back (order
    alternating). A timing loops the product for at least ``min_s`` seconds after one warm-up."""
    import torch

    cfg = unit_cfg(args)
    shapes = [tuple(int(x) for x in s) for s in (args.get("shapes") or MATMUL_SHAPES)]
    min_s = float(args.get("min_s", 0.3))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    gen = torch.Generator().manual_seed(0)
    ops = {}
    for m, k, n in shapes:
        a32, b32 = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        for name, dt in dtypes.items():
            a, b = a32.to(dt), b32.to(dt)
            ops[(m, k, n), name] = (a, b, torch.empty(m, n, dtype=dt))

    def gflops(key) -> float:
        a, b, c = ops[key]
        (m, k, n), _ = key
        torch.matmul(a, b, out=c)  # warm-up (kernel selection, page faults of c)
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=c)
            reps += 1
            dt = time.perf_counter() - t0
            if dt >= min_s and reps >= 2:
                return 2.0 * m * k * n * reps / dt / 1e9

    results: dict[str, dict[str, list[float]]] = {f"{m}x{k}x{n}": {d: [] for d in dtypes} for m, k, n in shapes}
    names = list(dtypes)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for r in range(int(args.get("repeats", 3))):
            for shape in shapes:
                for d in (names if r % 2 == 0 else names[::-1]):
                    results["x".join(map(str, shape))][d].append(gflops((shape, d)))
    return {"gflops": results, "threads": torch.get_num_threads(), "min_s": min_s, "cpu": cpu_bf16(),
            "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)())}


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
    "matmul_peak": unit_matmul_peak,
    "gpu_1b_train": lambda a: _gpu_units()["gpu_1b_train"](a),
    "gpu_1b_deepspeed": lambda a: _gpu_units()["gpu_1b_deepspeed"](a),
    "gpu_7b_lora_ppo": lambda a: _gpu_units()["gpu_7b_lora_ppo"](a),
}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
