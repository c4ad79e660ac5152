"""PPO rollouts: sample responses, mask them, and score them with the policy, reference, critic, RM and CM.

Helpers of ``bench/train/ppo.py`` (the recipe reads top to bottom there); everything here is a
plain function of tensors and models, with no optimisation state. :func:`experience` is the
recipe's step 2: old log-probs, values, reference log-probs and the variant's per-token regulariser
(``PENALTIES``: ``kl`` with estimator k1/k2/k3, ``js``, ``js_exact``, ``none``) of a sampled batch, without grad.

Layout of one rollout batch (B sequences)::

    ids  = [ left-padded prompt (P) | response (R) ]          # (B, P + R)
    attn = [ prompt attention mask  | response mask ]           # (B, P + R)

The response mask is 1 up to and including the first EOS and 0 after it (``generate`` fills
finished rows with the pad token, which for SmolLM2 *is* the EOS token, so ids alone cannot tell
an EOS from padding: the first EOS position decides). A row with no EOS among its R tokens was
cut at ``max_new_tokens`` and is flagged *truncated*. Position ids are always ``cumsum(attn) - 1``,
the same rule ``generate`` uses under left padding, so the log-probs computed here are those of
the distribution the tokens were sampled from.

Logits at sequence position ``P - 1 + t`` predict response token ``t``, and the critic's value at
that position is the value of the state before emitting it; both are sliced to (B, R).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench import chat
from bench.config import PPOSection, PPOVariant
from bench.losses import entropy_from_logits, sequence_logprobs
from bench.precision import generation_autocast
from bench.ppo_losses import js_divergence_per_token, js_sampled_token, kl_penalty
from bench.tensors import position_ids

# --------------------------------------------------------------------------- masks


def response_mask(responses: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of valid response tokens (stops after the first EOS, EOS included) and truncation flags.

    ``responses`` (B, R) token ids -> (mask (B, R) float32, truncated (B,) bool). A row without any
    EOS keeps all R tokens and is truncated. Every row has at least one valid token.
    """
    B, R = responses.shape
    is_eos = torch.isin(responses, torch.as_tensor(list(eos_ids), device=responses.device))  # (B, R)
    has_eos = is_eos.any(dim=1)  # (B,)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, R, dtype=torch.long))  # (B,)
    pos = torch.arange(R, device=responses.device).expand(B, R)  # (B, R)
    mask = (pos <= first.unsqueeze(1)).float()  # (B, R)
    return mask, ~has_eos


def eos_token_ids(model, tok) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's EOS id(s)."""
    ids = {tok.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


# --------------------------------------------------------------------------- policy + critic


class PolicyWithValueHead(nn.Module):
    """The policy and its critic: a linear value head on the policy's last hidden state.

    Why a shared trunk: it is the simplest correct critic (TRL's ``AutoModelForCausalLMWithValueHead``,
    the original InstructGPT setup used a separate RM-initialised critic). One forward gives both the
    token distribution and the values, nothing else needs loading, and under LoRA / top-layer
    training the critic adapts through the same trainable parameters. ``vf_coef`` keeps the value
    loss from dominating the policy's gradients. ``n_values`` is 1 (reward) or 2 (reward and cost,
    for PPO-Lagrangian). The head starts at zero, so initial values are 0.
    """

    def __init__(self, policy: nn.Module, hidden_size: int, n_values: int = 1):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, n_values)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                temperature: float = 1.0, with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Response logits (B, R, V) float32 divided by the temperature, and values (B, R, n_values)."""
        R = input_ids.shape[1] - prompt_len
        # logits_to_keep: the LM head runs only on the R positions that predict response tokens.
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask), output_hidden_states=with_values,
                          use_cache=False, logits_to_keep=R + 1)
        logits = out.logits[:, :-1].float() / temperature  # (B, R, V)
        values = None
        if with_values:
            h = out.hidden_states[-1][:, prompt_len - 1:-1]  # (B, R, H)
            values = self.value_head(h.to(self.value_head.weight.dtype)).float()  # (B, R, n_values)
        return logits, values


@torch.no_grad()
def reference_logits(module: PolicyWithValueHead, ref_model: nn.Module | None, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, prompt_len: int, temperature: float) -> torch.Tensor:
    """Response logits (B, R, V) of the reference policy.

    ``ref_model is None`` means LoRA: the reference is the same network with its adapters disabled
    (``PeftModel.disable_adapter``), so no second copy lives in memory. Otherwise ``ref_model`` is a
    frozen copy of the initial policy.
    """
    if ref_model is None:
        with module.policy.disable_adapter():
            logits, _ = module(input_ids, attention_mask, prompt_len, temperature, with_values=False)
        return logits
    R = input_ids.shape[1] - prompt_len
    out = ref_model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids(attention_mask), use_cache=False, logits_to_keep=R + 1)
    return out.logits[:, :-1].float() / temperature  # (B, R, V)


# --------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """Sampled responses of one rollout batch; tensors on the policy's device."""

    prompts: list[str]
    input_ids: torch.Tensor  # (B, P + R) prompt (left padded) + response
    attention_mask: torch.Tensor  # (B, P + R) 0 on prompt padding and after the first EOS
    prompt_len: int  # P
    responses: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R) float, 1 on valid response tokens (first EOS included)
    truncated: torch.Tensor  # (B,) bool, no EOS within max_new_tokens
    texts: list[str]  # decoded responses, special tokens stripped


def row_key(seed: int, step: int, row: int) -> int:
    """The sampling key of one rollout: the run's seed, the step and the row's index in the step's
    *global* batch (all ranks' rows in prompt-stream order), never the rank or the batch it shares."""
    return (((seed % 2**31) * 1_000_003 + step) * 1_000_033 + row) % (2**63 - 25)


def keyed_sampler(keys: Sequence[int], temperature: float) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]:
    """A token picker for ``bench.eval.fastgen.greedy_tokens(choose=...)`` that samples from
    softmax(logits / T) by the Gumbel-max trick, with noise keyed by (row key, position):

        y_t = argmax_v ( z_v / T + G_v ),   G_v = -log E_v,  E_v ~ Exp(1) iid,

    drawn from a generator seeded by ``(keys[row], t)``. argmax(z/T + G) is an exact sample of
    softmax(z/T) (Gumbel 1954; Maddison et al. 2014). Why keyed noise rather than ``generate``'s
    ``torch.multinomial`` on the global RNG: the draws of one row do not depend on which rows share
    its batch, on the batch's order or on the rank that samples it, so a step split over N ranks
    samples the tokens one process samples (up to last-bit differences of the logits between batch
    shapes, which flip a token only at a near-tie of z/T + G). The noise is drawn on the CPU (one
    generator per row and position, ~V floats) and moved to the logits' device."""
    if temperature <= 0:
        raise ValueError(f"keyed_sampler: temperature must be > 0, got {temperature}")
    keys = list(keys)

    def choose(logits: torch.Tensor, t: int, rows: torch.Tensor) -> torch.Tensor:
        V = logits.shape[-1]
        noise = torch.empty((len(rows), V))
        for i, r in enumerate(rows.tolist()):
            g = torch.Generator().manual_seed((keys[r] * 4_099 + t) % (2**63 - 25))
            noise[i].exponential_(generator=g)
        gumbel = -noise.log_().to(logits.device)  # (b, V)
        return (logits.float() / temperature + gumbel).argmax(-1)

    return choose


@torch.no_grad()
def sample_responses(policy, tok, prompts: list[str], system_prompt: str | None, max_new_tokens: int,
                     temperature: float, batch_size: int, eos_ids: Sequence[int], keys: Sequence[int],
                     rows: slice | None = None) -> Samples:
    """Sampled completions of ``prompts[rows]`` (default: all), chat-formatted, with the KV cache.

    ``prompts`` is the step's whole (global) batch: every rank left-pads to its widest prompt, so
    the prompt width P, and with it every row's positions and padding, is the one a single process
    uses. ``keys[i]`` is global row i's sampling key (:func:`row_key`): tokens come from
    :func:`keyed_sampler` through ``bench.eval.fastgen`` (the decode loop of the eval battery's
    greedy generation). Generation runs in chunks of ``batch_size`` rows, each ending when all its
    rows have ended; the responses are right-padded (with pad, masked out) to the longest chunk's
    length R.
    """
    from bench.eval.fastgen import greedy_tokens

    rows = rows if rows is not None else slice(0, len(prompts))
    texts = [chat.format_prompt(tok, p, system_prompt) for p in prompts]
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = old_side
    device = next(policy.parameters()).device
    p_ids, p_attn = enc["input_ids"][rows].to(device), enc["attention_mask"][rows].to(device)  # (B, P)
    mine = list(range(len(prompts)))[rows]
    P = p_ids.shape[1]
    chunks = []
    with generation_autocast(policy):  # bf16 policies: one cast of the weights for the whole call
        for start in range(0, len(mine), batch_size):
            sl = slice(start, start + batch_size)
            choose = keyed_sampler([keys[i] for i in mine[sl]], temperature)
            chunks.append(greedy_tokens(policy, p_ids[sl], p_attn[sl], max_new_tokens, list(eos_ids),
                                        tok.pad_token_id, choose=choose))  # (b, R_chunk)
    R = max(c.shape[1] for c in chunks)
    responses = torch.cat([nn.functional.pad(c, (0, R - c.shape[1]), value=tok.pad_token_id) for c in chunks])
    return assemble(prompts[rows], p_ids, p_attn, responses, eos_ids, tok)


def assemble(prompts: list[str], p_ids: torch.Tensor, p_attn: torch.Tensor, responses: torch.Tensor,
             eos_ids: Sequence[int], tok) -> Samples:
    """Samples from left-padded prompts (B, P) and right-padded responses (B, R)."""
    mask, truncated = response_mask(responses, eos_ids)  # (B, R), (B,)
    input_ids = torch.cat([p_ids, responses], dim=1)  # (B, P + R)
    attention_mask = torch.cat([p_attn, mask.long()], dim=1)  # (B, P + R)
    decoded = [tok.decode(responses[i][mask[i].bool()], skip_special_tokens=True).strip() for i in range(len(prompts))]
    return Samples(list(prompts), input_ids, attention_mask, p_ids.shape[1], responses, mask, truncated, decoded)


# --------------------------------------------------------------------------- score models


@torch.no_grad()
def score_responses(model, tok, prompts: list[str], responses: list[str], system_prompt: str | None,
                    batch_size: int) -> torch.Tensor:
    """Scores (B,) float32 of a score model (RM or CM) on prompt + response, through the same
    ``bench.score_model.score_texts`` the score stages evaluate with (same text, same padding: the
    score model's own tokenizer, whose pad differs from EOS so the head reads the end-of-turn token).
    A score model offloaded to host memory (on a GPU, ``ppo_models.load_score_model``) visits its
    device for this pass only (``ppo_models.on_scoring_device``)."""
    from bench.score_model import score_texts
    from bench.train.ppo_models import on_scoring_device, scoring_device

    with on_scoring_device(model) as m:
        scores = score_texts(m, tok, prompts, responses, system_prompt, batch_size=batch_size, max_length=10**9,
                             desc="score rollouts")
    # On the scoring device (the policy's): the rewards meet the policy's log-probs on a GPU.
    return torch.tensor(scores, dtype=torch.float32, device=scoring_device(model))


# --------------------------------------------------------------------------- experience


PENALTIES: dict[str, Callable[..., torch.Tensor]] = {
    # (variant, logp, ref_logp, logits, ref_logits, mask) -> (B, R) per-token penalty
    "kl": lambda v, lp, rlp, lg, rlg, m: kl_penalty(lp, rlp, v.kl_estimator),
    "js": lambda v, lp, rlp, lg, rlg, m: js_sampled_token(lp, rlp),  # Sun et al. 2023: sampled token, clamped
    "js_exact": lambda v, lp, rlp, lg, rlg, m: js_divergence_per_token(lg, rlg, m),  # full vocabulary
    "none": lambda v, lp, rlp, lg, rlg, m: torch.zeros_like(lp),
}


def regulariser_coef(variant: PPOVariant, section: PPOSection) -> float:
    """The coefficient of the variant's per-token penalty: its own ``coef``, else the section's
    (``js`` shares ``kl_coef`` as in Sun et al. 2023; ``js_exact`` has ``js_coef``)."""
    if variant.coef is not None:
        return variant.coef
    return {"kl": section.kl_coef, "js": section.kl_coef, "js_exact": section.js_coef,
            "none": 0.0}[variant.regulariser]


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def experience(module: PolicyWithValueHead, ref_model: nn.Module | None, s: Samples, variant: PPOVariant,
               section: PPOSection) -> dict[str, torch.Tensor]:
    """Old log-probs, values, reference log-probs, per-token penalty, entropy and k3 KL, each (B, R)
    (values (B, R, n_values)), computed in micro-batches of ``batch_size``."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "ref_logp", "values", "penalty", "entropy", "kl")}
    for sl in micro_slices(len(s.prompts), section.batch_size):
        ids, attn, y, m = s.input_ids[sl], s.attention_mask[sl], s.responses[sl], s.mask[sl]
        logits, values = module(ids, attn, s.prompt_len, section.temperature)  # (b, R, V), (b, R, K)
        ref_logits = reference_logits(module, ref_model, ids, attn, s.prompt_len, section.temperature)
        logp = sequence_logprobs(logits, y, m)  # (b, R)
        ref_logp = sequence_logprobs(ref_logits, y, m)  # (b, R)
        parts["logp"].append(logp)
        parts["ref_logp"].append(ref_logp)
        parts["values"].append(values)
        parts["penalty"].append(PENALTIES[variant.regulariser](variant, logp, ref_logp, logits, ref_logits, m))
        parts["entropy"].append(entropy_from_logits(logits))
        parts["kl"].append(torch.where(m.bool(), kl_penalty(logp, ref_logp, "k3"), 0.0))
    return {k: torch.cat(v) for k, v in parts.items()}
