"""Preference accuracy and log-prob margins from response log-probabilities (pure functions).

Given, per held-out pair, the summed response log-probs under the variant (pi) and under a reference
policy (ref), and the response token counts. The battery calls it twice: with the variant's starting
point as ref (DPO's reference, eq. 5: the SFT policy for DPO and PPO, the unsteered policy for a
steered variant, the base for SFT) and with the base as ref (the ``*_vs_base`` metrics):

- ``pref_acc_implicit``: share of pairs where the implicit reward (Rafailov et al. 2023, eq. 5,
  up to beta) prefers the chosen response: [log pi(yc|x) - log ref(yc|x)] > [log pi(yr|x) - log ref(yr|x)].
- ``pref_acc_raw``: share of pairs with log pi(yc|x) > log pi(yr|x).
- ``logp_margin_sum``: mean of log pi(yc|x) - log pi(yr|x) (summed over response tokens);
  ``logp_margin_per_token``: the same with each log-prob divided by its response length.
- ``chosen_shift`` / ``rejected_shift``: mean of log pi(y|x) - log ref(y|x) for chosen and rejected:
  the decomposition that shows whether a margin grew by raising the chosen or by pushing the
  rejected down (the DPO failure mode the suite exists to expose).
"""

from __future__ import annotations

from bench.eval.logprobs import PairLogprobs
from bench.stats import mean_metric, rate_metric

# The metrics that depend on the reference: the battery reports them against the variant's starting
# point under these names, and against the base as ``<name>_vs_base``.
VS_START_METRICS = ("pref_acc_implicit", "chosen_shift", "rejected_shift")
# An implicit margin this small (nats) is numerical noise between two forward passes (e.g. a gated steered
# variant whose gate stays closed, scored without the prefix cache): a tie, not a preference.
TIE_NATS = 1e-3


def preference_metrics(pi: PairLogprobs, ref: PairLogprobs | None) -> dict[str, dict]:
    n = len(pi.chosen)
    if n == 0:
        return {}
    out = {
        "pref_acc_raw": rate_metric(sum(c > r for c, r in zip(pi.chosen, pi.rejected)), n),
        "logp_margin_sum": mean_metric(c - r for c, r in zip(pi.chosen, pi.rejected)),
        "logp_margin_per_token": mean_metric(
            c / max(nc, 1) - r / max(nr, 1)
            for c, r, nc, nr in zip(pi.chosen, pi.rejected, pi.chosen_tokens, pi.rejected_tokens)),
        "logp_chosen": mean_metric(pi.chosen),
        "logp_rejected": mean_metric(pi.rejected),
    }
    if ref is not None:
        if len(ref.chosen) != n:
            raise ValueError(f"reference log-probs cover {len(ref.chosen)} pairs, the variant's {n}")
        implicit = [(c - rc) - (r - rr) for c, r, rc, rr in zip(pi.chosen, pi.rejected, ref.chosen, ref.rejected)]
        out["pref_acc_implicit"] = rate_metric(sum(m > TIE_NATS for m in implicit), n)
        out["chosen_shift"] = mean_metric(c - rc for c, rc in zip(pi.chosen, ref.chosen))
        out["rejected_shift"] = mean_metric(r - rr for r, rr in zip(pi.rejected, ref.rejected))
    return out
