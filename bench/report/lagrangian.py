"""The leaderboard's "PPO-Lagrangian constraint" section: did the cost constraint ever bind?

    bench leaderboard --profile default    # bench.leaderboard calls lagrangian_section on the records

PPO-Lagrangian (Safe RLHF) trains the policy on (A_r - lambda A_c) / (1 + lambda) and moves lambda
by dual ascent on (episode cost - d): lambda rises only on steps whose episode cost (the mean raw
cost-model cost of the recent episodes) is above the threshold d. A run whose constraint never binds
is plain PPO with a shrinking cost term, which the main tables cannot show; this section shows, per
PPO-Lagrangian record, d and how it was set, and the step-by-step episode cost, threshold and lambda.
It reads only ``extra.lagrangian`` and ``extra.series`` of the records (written by
``bench/train/ppo.py`` through ``bench.train.ppo_metrics.lagrangian_extra``); no record with
``extra.lagrangian``: no section. Tested in ``tests/test_ppo_lagrangian.py``
(``python -m pytest tests/test_ppo_lagrangian.py -q``).
"""

from __future__ import annotations

from bench.records import is_eval_key
from bench.report.sections import finite, table, variant_key


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if finite(x) else "–"


def _steps(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps)


def threshold_text(lag: dict) -> str:
    """How d was set, in words."""
    d = _num(lag.get("threshold"))
    if lag.get("threshold_from") == "start":
        return (f"d = {d}: the starting policy's mean cost-model cost on {lag.get('threshold_prompts', '–')} "
                "validation prompts (one response each, sampled as the rollouts are; weighted to the training "
                "prompts' label mix), so PPO may raise the reward but not the expected cost above the starting "
                "policy's")
    return f"d = {d}, fixed in the profile (`ppo.cost_threshold`)"


def record_lines(rec: dict) -> list[str]:
    """One PPO-Lagrangian record: threshold, the per-step table and the binding sentence."""
    ex = rec.get("extra") or {}
    lag = ex["lagrangian"]
    series = [r for r in ex.get("series") or [] if r.get("lambda") is not None]
    window = lag.get("cost_window")
    window_text = ("the recent episodes" if window is None
                   else "the step's rollout batch" if window == 0 else f"the last {window} episodes")
    lines = [f"### `{rec['variant']}`", "",
             f"Threshold {threshold_text(lag)}. Episode cost: the mean raw cost of {window_text}; "
             f"lambda {_num(lag.get('lambda_init'))} at the start, {_num(lag.get('lambda_final'))} at the end.", ""]
    by_label = lag.get("threshold_by_label") or {}
    if by_label:  # d = sum over labels of weight x the label's mean cost (weights: the training stream's mix)
        parts = [f"{lab} {_num(g.get('mean'))} (n {g.get('n')}, weight {_num(g.get('weight'), 2)})"
                 for lab, g in sorted(by_label.items())]
        lines += ["The starting policy's mean cost per prompt label, weighted by the label's share of the training "
                  f"prompts: {'; '.join(parts)}.", ""]
    if series:
        lines += table(["step", "episode cost", "threshold", "lambda"],
                       [[str(r["step"]), _num(r.get("episode_cost")), _num(r.get("cost_threshold")),
                         _num(r.get("lambda"), 4)] for r in series], ["r", "r", "r", "r"]) + [""]
    bound, rose = lag.get("bound_steps") or [], lag.get("lambda_rose_steps") or []
    rose_text = f"lambda rose on step{'s' if len(rose) > 1 else ''} {_steps(rose)}" if rose else "lambda never rose"
    lines += [f"The constraint bound on {len(bound)} of {len(series)} steps (episode cost above the threshold); "
              f"{rose_text}.", ""]
    return lines


def lagrangian_section(records: dict[str, dict]) -> list[str]:
    """"## PPO-Lagrangian constraint" for every training record with ``extra.lagrangian`` (sorted by
    variant); [] when there is none."""
    recs = sorted((r for k, r in records.items() if not is_eval_key(k) and (r.get("extra") or {}).get("lagrangian")),
                  key=lambda r: variant_key(r["variant"], r.get("stage", "")))
    if not recs:
        return []
    lines = ["## PPO-Lagrangian constraint", "",
             "PPO-Lagrangian keeps the expected episode cost (the cost model's raw score; above 0 it judges an "
             "answer unsafe) at or below a threshold d: after each rollout the multiplier lambda = exp(log lambda) "
             "takes one dual-ascent step on (episode cost - d), so it rises only while the episode cost is above d "
             "(the constraint binds) and the policy's advantage is (A_r - lambda A_c) / (1 + lambda).", ""]
    for rec in recs:
        lines += record_lines(rec)
    return lines
