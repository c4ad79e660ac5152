"""Throughput of greedy generation: the pipeline's ``generate_greedy`` against plain ``model.generate``.

Two entry points on the same batches (``bench.eval.generate.left_padded_batches``: the battery's
refusal prompts chat-formatted, sorted by length, left-padded, as ``generate_greedy`` forms them):

- :func:`unit_generate`, the ``generate`` unit of `bench perf` (``make bench``): new tokens/s of
  ``generate_greedy`` (whose decode loop is ``bench.eval.fastgen.greedy_tokens`` in exact mode) in
  fp32 and in bf16 as the pipeline runs it, against plain batched ``model.generate`` in fp32 on a
  plainly loaded model (what a user would write);
- :func:`main`, a closer look at the decoder itself, outside `make bench`: ``generate`` /
  ``fastgen`` (exact) / ``fastgen-approx`` (``exact=False``: shared-prefix prefill, compaction) in
  fp32, under an outer ``torch.autocast("cpu", bfloat16)`` (``bf16``) and as the project runs bf16
  (``bf16-project``: ``bench.precision.for_precision``, fp32 head, ``generation_autocast``); tokens
  compared with ``generate``'s at each precision; ``--compile`` also times ``generate`` with a static
  cache and ``torch.compile`` (the evidence for leaving compilation out of fastgen; minutes on 2 cores).
  It reports medians over ``--repeats`` rounds (sides alternating) and the best run (a neighbour only
  slows a run down). Tokens/s there counts rows x returned length.

    BENCH_CACHE=/path/to/.cache/bench nice -n 10 python -m bench.perf.generation [--prompts 64]
        [--new 48] [--batch 32] [--repeats 3] [--threads N] [--sides generate,fastgen,fastgen-approx]
        [--precisions fp32,bf16,bf16-project] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.perf.common import compute, cpu_bf16, interleaved, plain_and_bf16_models, timed, unit_cfg

SIDES = ("generate", "fastgen", "fastgen-approx")
PRECISIONS = ("fp32", "bf16", "bf16-project")


def refusal_prompts(cfg, n: int) -> list[str]:
    """The battery's refusal prompts (its held-out inputs), taken in turn from each refusal set, so
    that any ``n`` (0: all) mixes harmful, benign and borderline prompts."""
    from itertools import chain, zip_longest

    from bench.eval.inputs import REFUSAL_SETS, load_inputs

    sets, _ = load_inputs(cfg)
    mixed = [r["prompt"] for r in chain(*zip_longest(*(sets[k] for k, *_ in REFUSAL_SETS))) if r is not None]
    return mixed[:n] if n else mixed


def batches(tok, prompts: list[str], system_prompt, batch_size: int) -> list[tuple[list[int], dict]]:
    """``generate_greedy``'s batches of these prompts: ``(indices, encoding)``."""
    from bench import chat
    from bench.eval.generate import left_padded_batches

    return list(left_padded_batches(tok, [chat.format_prompt(tok, p, system_prompt) for p in prompts], batch_size))


def _eos_ids(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return eos or [tok.eos_token_id]


def _n_new(row, eos: set[int]) -> int:
    """New tokens of one generated row: up to and including the first EOS, else all of them."""
    for j, t in enumerate(row.tolist()):
        if t in eos:
            return j + 1
    return len(row)


def _plain_generate(model, enc, tok, max_new_tokens: int):
    """What a user writes: batched greedy ``generate``; its new tokens (B, n)."""
    g = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                       use_cache=True)
    return g[:, enc["input_ids"].shape[1]:]


# --------------------------------------------------------------------------- the `bench perf` unit


def unit_generate(args: dict) -> dict:
    """New tokens/s of greedy decoding on the battery's refusal prompts. Baseline: plain batched
    ``model.generate`` in fp32 on the plainly loaded model, on ``generate_greedy``'s batches (the
    profile's batch size). Ours: ``bench.eval.generate.generate_greedy`` on the same fp32 model with
    autocast off (``ours_fp32``: the decode loop's gain alone; its outputs must equal the baseline's)
    and on the bf16-ready model (``ours_bf16``: as the pipeline runs). Every side's throughput counts
    the tokens the baseline generates (each row up to and including its first EOS), so a speed-up is
    a ratio of times; identical outputs are counted against the baseline's texts."""
    import torch

    from bench.eval.fastgen import unsupported_reason
    from bench.eval.generate import GenerationSettings, generate_greedy

    cfg = unit_cfg(args)
    plain, ours16, tok = plain_and_bf16_models(cfg)
    prompts = refusal_prompts(cfg, int(args.get("n_prompts", 0)))
    sp = cfg.model.system_prompt
    settings = GenerationSettings(max_new_tokens=int(args.get("max_new_tokens") or cfg.eval.max_new_tokens),
                                  batch_size=int(args.get("batch_size") or cfg.eval.batch_size))
    eos = _eos_ids(plain, tok)
    work = batches(tok, prompts, sp, settings.batch_size)

    def baseline():
        out, counts, widths = [""] * len(prompts), [0] * len(prompts), []
        with compute("fp32"):
            for idx, enc in work:
                new = _plain_generate(plain, enc, tok, settings.max_new_tokens)
                widths.append(new.shape[1])  # forward passes: the prefill, then one per further token
                for j, i in enumerate(idx):
                    counts[i] = _n_new(new[j], set(eos))
                    out[i] = tok.decode(new[j], skip_special_tokens=True).strip()
        return out, (counts, widths)

    def ours(model, precision):
        def run():
            with compute(precision):
                return generate_greedy(model, tok, prompts, sp, settings, desc="perf: generate"), None
        return run

    sides = {"batched_generate_fp32": baseline, "ours_fp32": ours(plain, "fp32"), "ours_bf16": ours(ours16, "bf16")}
    repeats = int(args.get("repeats", 3))
    with torch.no_grad():
        secs, last = interleaved(sides, repeats)
    base_texts, (counts, widths) = last["batched_generate_fp32"]
    identical = {k: sum(a == b for a, b in zip(v[0], base_texts)) for k, v in last.items()}
    steps = [max(w - 1, 0) for w in widths]
    floor = {p: matmul_floor(m, work, steps, p, repeats)
             for p, m in (("fp32", plain), ("bf16", ours16))}
    return {"n_prompts": len(prompts), "new_tokens": sum(counts), "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size, "seconds": secs, "threads": torch.get_num_threads(),
            "identical_outputs": identical, "eos_token_ids": eos,
            "matmul_floor_seconds": floor, "decode_steps": steps,
            "decoder": {"module": "bench.eval.fastgen", "exact": True,
                        "fallback": {"fp32": unsupported_reason(plain), "bf16": unsupported_reason(ours16)}},
            "cpu": cpu_bf16()}


def matmul_floor(model, work, decode_steps: list[int], precision: str, repeats: int) -> list[float]:
    """Seconds the matrix products alone of a greedy decode of ``work`` take on ``model`` at
    ``precision`` (as :func:`compute` sets it for a whole generation call), one figure per repeat:
    the time no decoder that multiplies by these weights, with these kernels, can beat.

    For batch ``b`` of ``B`` rows and ``L`` prompt columns: every ``nn.Linear`` of the model once at
    ``B x L`` rows, the output head at ``B`` rows (the prefill keeps the last position's logits), then
    ``decode_steps[b]`` decode steps, each every linear and the head at ``B`` rows. A decode step's
    products are timed once per distinct ``B`` per repeat and multiplied by the steps; the weights are
    distinct tensors, so they stream from memory as in the real decode (what bounds a step at small
    ``B``). Left out: attention over the cache, norms, RoPE, activations, sampling, the loop itself;
    so the real decoder's time over this one is its overhead above its matrix products."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    gen = torch.Generator().manual_seed(0)
    inputs: dict[tuple[int, int], torch.Tensor] = {}

    def x(rows: int, width: int) -> torch.Tensor:
        if (rows, width) not in inputs:
            inputs[rows, width] = torch.randn(rows, width, generator=gen)
        return inputs[rows, width]

    def prefill(b: int, length: int) -> None:
        for m in linears:
            m(x(b if m is head else b * length, m.in_features))

    def step(b: int) -> None:
        for m in linears:
            m(x(b, m.in_features))

    out = []
    with torch.no_grad(), compute(precision, model, whole_call=True):
        b0, l0 = work[0][1]["input_ids"].shape
        prefill(b0, l0)
        step(b0)  # warm-up: kernel selection, and under autocast the one cast of the weights
        for _ in range(repeats):
            per_step: dict[int, float] = {}
            total = 0.0
            for (_, enc), n in zip(work, decode_steps):
                b, length = enc["input_ids"].shape
                if b not in per_step:
                    per_step[b] = timed(lambda: step(b))[0]
                total += timed(lambda: prefill(b, length))[0] + n * per_step[b]
            out.append(total)
    return out


# --------------------------------------------------------------------------- the decoder on its own


def _side(name: str, model, tok, work, new: int):
    from bench.eval.fastgen import greedy_tokens

    eos = model.generation_config.eos_token_id

    def run():
        if name == "generate":
            return [_plain_generate(model, enc, tok, new) for _, enc in work]
        return [greedy_tokens(model, enc["input_ids"], enc["attention_mask"], new, eos, tok.pad_token_id,
                              exact=(name == "fastgen")) for _, enc in work]

    return run


def _precision(p: str, model):
    import torch

    from bench.precision import generation_autocast

    if p == "bf16-project":
        return generation_autocast(model)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=(p == "bf16"))


def _same(a, b) -> tuple[bool, int]:
    """(all tokens equal, rows that differ) between two lists of (B, n) outputs."""
    import torch

    rows = 0
    for x, y in zip(a, b):
        n = max(x.shape[1], y.shape[1])
        x, y = (torch.nn.functional.pad(t, (0, n - t.shape[1]), value=-1) for t in (x, y))
        rows += int((x != y).any(1).sum())
    return rows == 0 and all(x.shape == y.shape for x, y in zip(a, b)), rows


def _compile_timing(model, tok, work, new: int) -> dict:
    import torch
    from transformers import CompileConfig

    cc = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    cc._compile_all_devices = True  # transformers compiles only on accelerators unless told
    _, b = work[0]
    out = {}
    for label in ("first_call_s", "second_call_s"):
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**b, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id,
                           cache_implementation="static", compile_config=cc)
        out[label] = time.perf_counter() - t
    out["tokens"] = b["input_ids"].shape[0] * new
    return out


def _time_precision(p: str, model, tok, work, sides: list[str], new: int, repeats: int):
    """({side: [seconds]}, {side: outputs of its last run}) at precision ``p``, sides alternating."""
    import torch

    runs = {s: _side(s, model, tok, work, new) for s in sides}
    secs: dict[str, list[float]] = {s: [] for s in sides}
    last: dict = {}
    with torch.no_grad(), _precision(p, model):
        for s in sides:  # warm-up: one batch each (first-call allocations, oneDNN primitives)
            _side(s, model, tok, work[:1], new)()
        for r in range(repeats):
            for s in (sides if r % 2 == 0 else sides[::-1]):
                t = time.perf_counter()
                last[s] = runs[s]()
                secs[s].append(time.perf_counter() - t)
    return secs, last


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import copy

    import torch
    import transformers

    from bench.config import load_config
    from bench.eval.fastgen import unsupported_reason
    from bench.models import load_base, prepare_base
    from bench.perf.timing import summarize
    from bench.precision import for_precision

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.profile, ["model.precision=fp32"])  # fp32 weights and compute; bf16 is added below
    prepare_base(cfg)
    model, tok = load_base(cfg)
    model.eval()
    precs = [p for p in a.precisions.split(",") if p]
    models = {p: (for_precision(copy.deepcopy(model), "bf16") if p == "bf16-project" else model) for p in precs}
    prompts = refusal_prompts(cfg, a.prompts)
    work = batches(tok, prompts, cfg.model.system_prompt, a.batch)
    sides = [s for s in a.sides.split(",") if s]
    if "generate" not in sides:
        sides.insert(0, "generate")
    report: dict = {"setup": {"profile": a.profile, "prompts": len(prompts), "new_tokens": a.new, "batch": a.batch,
                              "batch_shapes": [list(enc["input_ids"].shape) for _, enc in work],
                              "threads": torch.get_num_threads(), "repeats": a.repeats, "torch": torch.__version__,
                              "transformers": transformers.__version__,
                              "fastgen_fallback": {p: unsupported_reason(models[p]) for p in precs}},  # None: lean loop
                    "results": {}}
    print(json.dumps(report["setup"]), flush=True)
    last_fp32 = None
    for p in precs:
        secs, last = _time_precision(p, models[p], tok, work, sides, a.new, a.repeats)
        for s in sides:
            tokens = sum(o.numel() for o in last[s])
            same, rows = _same(last[s], last["generate"])
            sm = summarize(secs[s])
            res = report["results"][f"{s}/{p}"] = {
                "seconds": sm, "tokens": tokens, "tokens_per_s": tokens / sm["median"],
                "tokens_per_s_best": tokens / sm["min"],
                "same_tokens_as_generate_at_this_precision": same, "rows_differing": rows}
            if p != "fp32" and last_fp32 is not None:
                res["same_tokens_as_generate_fp32"], res["rows_differing_from_fp32"] = _same(last[s], last_fp32)
            print(f"{s:>15} {p}: {tokens / sm['median']:7.1f} tokens/s median, {tokens / sm['min']:7.1f} best "
                  f"(s: median {sm['median']:.2f}, min {sm['min']:.2f}, max {sm['max']:.2f}; {tokens} tokens)  "
                  f"same as generate/{p}: {same} ({rows} rows differ)", flush=True)
        if p == "fp32":
            last_fp32 = last["generate"]
    base = report["results"].get("generate/fp32")
    if base:
        for v in report["results"].values():
            v["speedup_vs_generate_fp32"] = v["tokens_per_s"] / base["tokens_per_s"]
            v["speedup_vs_generate_fp32_best"] = v["tokens_per_s_best"] / base["tokens_per_s_best"]
        print("speed-up vs generate fp32 (medians; best runs): " + ", ".join(
            f"{k} {v['speedup_vs_generate_fp32']:.2f}x; {v['speedup_vs_generate_fp32_best']:.2f}x"
            for k, v in report["results"].items()), flush=True)
    if a.compile:
        ct = report["compile"] = _compile_timing(model, tok, work, a.new)
        print(f"generate + static cache + torch.compile, one batch: first call {ct['first_call_s']:.1f} s, "
              f"second {ct['second_call_s']:.1f} s ({ct['tokens'] / ct['second_call_s']:.1f} tokens/s)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
