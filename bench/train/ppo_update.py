"""PPO's optimisation: the update (step 4 of the recipe), its schedule, and the per-step seeds.

:func:`ppo_update`: ``ppo_epochs`` passes over one rollout batch in shuffled mini-batches of
``mini_batch_size`` sequences (one optimiser step each, processed in micro-batches of ``batch_size``):
the clipped policy loss (``losses.ppo_policy_loss``) plus ``vf_coef`` x the clipped value loss of
each critic (``losses.value_loss``; two critics under PPO-Lagrangian), through the backend's
backward / step (``bench.train.ppo_backends``), which clips gradients and steps the optimiser.

:func:`step_seed` / :func:`seed_step`: step k reseeds torch from (seed, k) on every rank, and the
mini-batch order draws from its own generator seeded from the same number; so the mini-batches of
step k are the same whether the run was interrupted before it or not, and at any number of ranks
(the samples are keyed by row: ``rollout.keyed_sampler``).
:func:`planned_steps` / :func:`lr_factor`: the run's number of steps (``max_steps``, else ``epochs``
over the prompts) and the linear learning-rate warmup over ``warmup_ratio`` of them.

Why apart from the recipe: it is the inner loop a reader of ``bench/train/ppo.py`` (``make ppo
PROFILE=...``) can take as one step, and the GPU perf unit (``bench.perf.gpu.unit_7b_lora_ppo``)
measures exactly this function. Tested through the smoke and resume runs of ``tests/test_ppo.py``
(``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import math

import torch

from bench.config import PPOSection
from bench.losses import ppo_policy_loss, sequence_logprobs, value_loss
from bench.train.ppo_backends import step_reducer
from bench.train.rollout import Samples


def ppo_update(backend, s: Samples, exp: dict, adv: torch.Tensor, returns: torch.Tensor, section: PPOSection,
               seed: int, step: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    """``ppo_epochs`` passes over the step's rollout batch in shuffled mini-batches; returns the
    token-weighted mean loss statistics of the whole step (every rank's micro-batches).

    ``s``, ``exp``, ``adv``, ``returns``: the step's *global* batch (every rank's rows,
    ``ppo_backends.gather_rollout``); ``section``: this rank's share (``per_rank_section``). The
    permutation depends on (seed, step) alone; each global mini-batch of ``mini_batch_size x world``
    rows is split into ``world`` equal parts and this rank runs its part in micro-batches of
    ``batch_size``. Token-count normalisation: a micro-batch's (token-mean) loss is weighted by

        w = n_micro_tokens / (N_minibatch_tokens / n_micro_total)

    where ``n_micro_total`` = micro-batches per optimiser step over all ranks; the backends average
    over micro-batches (1/gas) and ranks (1/world), so the step's gradient is that of

        L = (1 / N_minibatch_tokens) * sum over the mini-batch's valid tokens of (policy + vf_coef x value loss),

    whatever the split into ranks and micro-batches (the mini-batch's token mean, as DAPO's
    token-level loss; a mean of per-micro-batch means would weight a token by its micro-batch's
    length and change with the split)."""
    g = torch.Generator().manual_seed(step_seed(seed, step) + 1)
    keys = ("policy_loss", "value_loss", "clip_frac", "approx_kl", "vf_clip_frac")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64)  # token-weighted sums of the stats, then tokens
    grad_norms: list[float] = []
    n = len(s.prompts)
    global_mini = section.mini_batch_size * world
    n_micro_total = (section.mini_batch_size // section.batch_size) * world
    for _ in range(section.ppo_epochs):
        perm = torch.randperm(n, generator=g).to(adv.device)
        for mb in perm.split(global_mini):
            tokens_mb = float(s.mask[mb].sum())
            for idx in mb.tensor_split(world)[rank].split(section.batch_size):
                m = s.mask[idx]  # (b, R)
                logits, values = backend.forward(s.input_ids[idx], s.attention_mask[idx], s.prompt_len,
                                                 section.temperature)  # (b, R, V), (b, R, K)
                logp = sequence_logprobs(logits, s.responses[idx], m)  # (b, R)
                pl, pst = ppo_policy_loss(logp, exp["logp"][idx], adv[idx], m, section.clip_eps)
                vl_total = 0.0
                vf_clip = []
                for k in range(values.shape[-1]):  # reward critic, and cost critic under PPO-Lagrangian
                    vl, vst = value_loss(values[..., k], exp["values"][idx][..., k], returns[idx][..., k], m,
                                         section.value_clip_eps)
                    vl_total = vl_total + vl
                    vf_clip.append(vst["vf_clip_frac"].item())
                tokens = float(m.sum())
                backend.backward((pl + section.vf_coef * vl_total) * (tokens * n_micro_total / max(tokens_mb, 1.0)))
                norm = backend.step()
                if norm is not None:
                    grad_norms.append(norm)
                stats = (pl.item(), float(vl_total.detach()), pst["clip_frac"].item(), pst["approx_kl"].item(),
                         sum(vf_clip) / len(vf_clip))
                sums += torch.tensor([*(x * tokens for x in stats), tokens], dtype=torch.float64)
    reduce = step_reducer()  # the step's statistics over every rank's micro-batches
    sums = sums if reduce is None else reduce(sums)
    out = {k: float(sums[i] / sums[-1]) if sums[-1] > 0 else math.nan for i, k in enumerate(keys)}
    out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    return out


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + (step + 1) * 7_919) % (2**63 - 1)


def seed_step(seed: int, step: int) -> None:
    torch.manual_seed(step_seed(seed, step))  # also seeds every CUDA device


def planned_steps(section: PPOSection, n_prompts: int, world: int, group_size: int = 1) -> int:
    if section.max_steps > 0:
        return section.max_steps
    return max(1, math.ceil(section.epochs * n_prompts * group_size / (section.rollout_prompts * world)))


def lr_factor(section: PPOSection, step: int, total_steps: int) -> float:
    """Linear warmup over ``warmup_ratio`` of the steps, then constant."""
    warm = int(section.warmup_ratio * total_steps)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0
