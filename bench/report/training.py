"""The leaderboard's "Training" section: how each trained policy variant was tuned and what it cost.

    bench leaderboard --profile default    # bench.leaderboard calls training_section on the records

The comparison the LoRA-PPO paper and the fine-tuning seeds are about (full vs LoRA: does LoRA match
full tuning, with how much less memory; does dropping the KL term hurt under one and not the other)
needs, beside each variant's scores, what it trained. One row per SFT / DPO / PPO record: the kind of
tuning and its settings, the learning rate, trainable parameters (and their share of the model), the
peak memory measured while the stage ran (``resources``, :mod:`bench.peak_memory`), its wall time and
optimiser steps, and for PPO the KL to the starting policy on the last rollout batch. It reads only
``extra.tuning`` (``bench.models.tuning_summary``), ``resources``, ``wall_time_s``, ``metrics`` and
``extra.series`` of the records; a record written before those fields shows "–".
Tested in ``tests/test_training_report.py``.
"""

from __future__ import annotations

from bench.records import is_eval_key
from bench.report.sections import finite, table, variant_key

STAGES = ("sft", "dpo", "ppo")


def tuning_text(t: dict | None, short: bool = False) -> str:
    """An ``extra.tuning`` in words: ``full``, ``LoRA r 8, alpha 16 (q_proj, ...), every block`` or ``top 6 blocks +
    final norm + head``; ``short``: ``full, lr 2e-05``, ``LoRA r 8, lr 0.0005``, ``top 6 blocks, lr 5e-05`` (the
    contrasts table's form)."""
    if not t:
        return "–"
    kind, lora = t.get("trainable"), t.get("lora") or {}
    if kind == "lora":
        text = f"LoRA r {lora.get('r')}" if short else (
            f"LoRA r {lora.get('r')}, alpha {lora.get('alpha')} ({', '.join(lora.get('target_modules') or [])}), every block")
    elif kind == "top_layers":
        text = f"top {t.get('top_layers')} blocks" + ("" if short else " + final norm + head")
    else:
        text = str(kind)
    lr = t.get("learning_rate")
    return f"{text}, lr {lr:g}" if short and finite(lr) else text


def _params(t: dict | None, rec: dict) -> str:
    n = (t or {}).get("trainable_params")
    if n is None:  # records written before extra.tuning
        n = ((rec.get("metrics") or {}).get("trainable_params") or {}).get("value") or (rec.get("extra") or {}).get(
            "trainable_params")
    if not finite(n):
        return "–"
    total = (t or {}).get("total_params")
    share = f" ({100 * n / total:.2f}%)" if finite(total) and total else ""
    return f"{n / 1e6:.2f} M{share}"


def _memory(res: dict | None) -> str:
    peak, start = (res or {}).get("peak_rss_mib"), (res or {}).get("start_rss_mib")
    if not finite(peak):
        return "–"
    return f"{peak:,.0f} (+{peak - start:,.0f})" if finite(start) else f"{peak:,.0f}"


def _steps(rec: dict) -> str:
    steps = ((rec.get("metrics") or {}).get("steps") or {}).get("value")
    if not finite(steps):
        series = (rec.get("extra") or {}).get("series") or []
        steps = max((s.get("step") for s in series if finite(s.get("step"))), default=None)
    return f"{steps:.0f}" if finite(steps) else "–"


def _kl(rec: dict) -> str:
    m = rec.get("metrics") or {}
    seq, tok = (m.get("kl_ref_end") or {}).get("value"), (m.get("kl_ref_per_token_end") or {}).get("value")
    if not finite(seq):
        return "–"
    return f"{seq:.3f}" + (f" ({tok:.4f})" if finite(tok) else "")


def training_section(records: dict[str, dict]) -> list[str]:
    rows_in = sorted(((k, r) for k, r in records.items() if not is_eval_key(k) and r.get("stage") in STAGES),
                     key=lambda kv: variant_key(kv[1]["variant"], kv[1]["stage"]))
    if not rows_in:
        return []
    gpu = any(finite((r.get("resources") or {}).get("peak_cuda_mib")) for _, r in rows_in)
    rows = []
    for _, r in rows_in:
        t = (r.get("extra") or {}).get("tuning")
        lr = (t or {}).get("learning_rate")
        row = [f"`{r['variant']}`", r["stage"], tuning_text(t), f"{lr:g}" if finite(lr) else "–", _params(t, r),
               _memory(r.get("resources"))]
        if gpu:
            cuda = (r.get("resources") or {}).get("peak_cuda_mib")
            row.append(f"{cuda:,.0f}" if finite(cuda) else "–")
        row += [_steps(r), f"{r['wall_time_s']:.0f}" if finite(r.get("wall_time_s")) else "–", _kl(r)]
        rows.append(row)
    headers = ["variant", "stage", "tuning", "learning rate", "trainable params", "peak RSS MiB (+ during stage)"]
    headers += ["peak GPU MiB"] if gpu else []
    headers += ["optimiser steps", "wall s", "KL to start, last batch (per token)"]
    return (["## Training: what each variant trained and what it cost", "",
             "Trainable parameters are the policy's (LoRA adapters, blocks or all weights; PPO adds its value head) "
             "and their share of the model's parameters. Peak RSS is the process's resident-memory high-water mark "
             "while the stage ran, reset at its start (bench/peak_memory.py): it includes what was already resident "
             "(the interpreter, torch, models loaded by the stage's caller; DPO variants run one after another in one "
             "process), and the part in parentheses is what the stage added. KL to start: PPO's KL(policy || starting "
             "policy) summed over each response of the last rollout batch, mean over the batch (per token in "
             "parentheses); one batch of 8 rollouts, so a rough reading.", ""]
            + table(headers, rows, ["l", "l", "l"] + ["r"] * (len(headers) - 3)) + [""])
