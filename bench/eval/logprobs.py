"""Response log-probabilities of preference pairs under a causal LM.

For each pair we need ``log pi(y|x)`` summed over response tokens, for the chosen and the rejected
response, plus the token counts (for per-token margins). The prompt/response boundary is found by
tokenising the formatted prompt alone: the chat template ends the prompt with the assistant header,
so the response tokens start right after it.

Shared prefixes are computed once (the KV cache is reused, which is exact: causal attention makes
a position's keys and values independent of what follows it):

- the longest token prefix common to every prompt (the chat template's system turn) is run once
  per call, and its cache expanded to each batch;
- each prompt's own tokens (all but its last) are run once per pair, and their cache expanded to
  the pair's two responses;
- each response is run with the prompt's last token in front, so the logits of every response
  token come from this last forward, and no logits are computed over prompt positions.

Per pair this runs ``prompt + 2 (response + 1)`` positions instead of ``2 (prompt + response)``.
Pairs are sorted by their longest response, so a batch's continuations carry little padding. The
output head (49,152 x 576 in fp32 for SmolLM2, the largest product of a bf16 forward) projects only
the positions that predict a response token (:func:`kept_token_logprobs`: transformers' boolean
``logits_to_keep``), and their log-sum-exp runs in cache-sized row slices
(:func:`bench.losses.token_logprobs`).

A bf16 model (``bench.precision.for_precision``) is scored inside one ``generation_autocast``: the
weights are fixed for the call, so autocast casts each to bf16 once instead of at every forward
(the same bf16 values, so the same numbers; on the 2-core AMX host a per-forward cast of the
135M-parameter model cost about as much as its bf16 matrix products, docs/experiments.md#generation-ceiling).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench import chat
from bench.losses import token_logprobs
from bench.precision import generation_autocast
from bench.tensors import pad_right


@dataclass
class PairLogprobs:
    """Per pair: summed response log-probs and response token counts; lists aligned with input."""

    chosen: list[float]
    rejected: list[float]
    chosen_tokens: list[int]
    rejected_tokens: list[int]

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "rejected": self.rejected,
                "chosen_tokens": self.chosen_tokens, "rejected_tokens": self.rejected_tokens}


def encode_pair(tok, pair: dict, system_prompt: str | None, max_length: int) -> tuple[list[int], list[int], int]:
    """Token ids of prompt+chosen and prompt+rejected, and the prompt length (response start)."""
    prompt = chat.format_prompt(tok, pair["prompt"], system_prompt, pair.get("history"))
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(chat.format_response(tok, pair["chosen"]), add_special_tokens=False)["input_ids"]
    r_ids = tok(chat.format_response(tok, pair["rejected"]), add_special_tokens=False)["input_ids"]
    # Truncate responses, never prompts: a truncated prompt would change what is being scored.
    room = max(1, max_length - len(p_ids))
    return p_ids + c_ids[:room], p_ids + r_ids[:room], len(p_ids)


def common_prefix(rows: list[list[int]]) -> list[int]:
    """Longest list that starts every row."""
    n = min(len(r) for r in rows)
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return first[:n]


def kept_token_logprobs(model, ids: torch.Tensor, keep: torch.Tensor, **forward) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) at the positions ``keep`` (B, T-1) marks, 0 elsewhere: (B, T-1),
    float32. ``model(input_ids=ids, **forward)`` runs the forward pass with transformers' boolean
    ``logits_to_keep``, so the output head projects only the kept positions (no prompt, no
    padding: the fp32 head is the largest product of a bf16 forward), and their log-probs come from
    :func:`bench.losses.token_logprobs`. Per-row sums over the result are what a full-logits
    ``sequence_logprobs`` gives (docs/experiments.md#compact-scorer)."""
    B, T = ids.shape
    rows = torch.cat([keep, keep.new_zeros(B, 1)], 1)  # (B, T): the last position predicts nothing
    dev = model.device
    logits = model(input_ids=ids.to(dev), **forward, logits_to_keep=rows.to(dev)).logits  # (N, V)
    lp = torch.zeros((B, T - 1), dtype=torch.float32, device=logits.device)
    where = keep.to(logits.device)
    lp[where] = token_logprobs(logits, ids[:, 1:].to(logits.device)[where])
    return lp


@torch.no_grad()
def score_pairs(model, tok, pairs: list[dict], system_prompt: str | None, batch_size: int = 8,
                max_length: int = 512, desc: str = "score pairs", prefix_cache: bool = True) -> PairLogprobs:
    """``batch_size`` counts sequences (two per pair), as before the shared-prefix rewrite.
    ``prefix_cache=False`` scores every sequence whole in one pass (a gated steered model needs the
    prompt and the response in the same forward call; same numbers, slower)."""
    with generation_autocast(model):  # bf16 models: one cast of the weights per call
        return _score_pairs(model, tok, pairs, system_prompt, batch_size, max_length, desc, prefix_cache)


def _score_pairs(model, tok, pairs, system_prompt, batch_size, max_length, desc, prefix_cache) -> PairLogprobs:
    encoded = [encode_pair(tok, p, system_prompt, max_length) for p in pairs]
    res = {k: [0.0] * len(pairs) for k in ("chosen", "rejected")}
    ntok = {k: [0] * len(pairs) for k in ("chosen", "rejected")}
    if not pairs:
        return PairLogprobs([], [], [], [])
    # Longest response first (a batch costs its longest continuation), then longest prompt.
    order = sorted(range(len(pairs)), key=lambda i: (-(max(len(encoded[i][0]), len(encoded[i][1])) - encoded[i][2]),
                                                     -encoded[i][2]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    dev = model.device
    model.eval()
    # prompt tokens but the last (shared by both responses), run once through the KV cache
    stems = [c[: plen - 1] if prefix_cache else [] for c, _, plen in encoded]
    common = common_prefix(stems)
    C = len(common)
    common_cache = None
    if C:
        common_cache = model(input_ids=torch.tensor([common], device=dev), position_ids=torch.arange(C, device=dev)[None],
                             use_cache=True, logits_to_keep=1).past_key_values
    half = max(1, batch_size // 2)  # two sequences per pair
    for start in tqdm(range(0, len(order), half), desc=desc, leave=False, disable=None):
        idx = order[start:start + half]
        b = len(idx)
        cache = None
        if common_cache is not None:
            cache = copy.deepcopy(common_cache)
            cache.batch_repeat_interleave(b)
        mids = [stems[i][C:] for i in idx]
        seen = torch.ones((b, C), dtype=torch.long)  # (b, C + M): which cached positions are real tokens
        if max(len(m) for m in mids):
            mid_ids, mid_attn = pad_right(mids, pad)  # (b, M)
            seen = torch.cat([seen, mid_attn], 1)
            pos = C + torch.arange(mid_ids.shape[1]).expand(b, -1)
            cache = model(input_ids=mid_ids.to(dev), attention_mask=seen.to(dev), position_ids=pos.to(dev),
                          past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
        conts = []
        for i in idx:
            c, r, plen = encoded[i]
            conts += [c[len(stems[i]):], r[len(stems[i]):]]  # the prompt's uncached tail + response
        ids, attn = pad_right(conts, pad)  # (2b, R + 1)
        if cache is not None:
            cache.batch_repeat_interleave(2)  # each prompt's cache, once per response
        first = torch.tensor([C + len(mids[j // 2]) for j in range(2 * b)])  # position of the first uncached token
        pos = first[:, None] + torch.arange(ids.shape[1])[None]
        full = torch.cat([seen.repeat_interleave(2, 0), attn], 1)  # (2b, C + M + R + 1)
        keep = attn[:, 1:].bool()  # (2b, R): response tokens only ...
        if not prefix_cache:  # ... once the labels that are prompt tokens are dropped
            for k, i in enumerate(idx):
                keep[2 * k: 2 * k + 2, : encoded[i][2] - 1] = False
        lp = kept_token_logprobs(model, ids, keep, attention_mask=full.to(dev),
                                 position_ids=pos.to(dev), past_key_values=cache, use_cache=cache is not None)  # (2b, R)
        sums = lp.sum(-1).tolist()  # lp is 0 off the kept positions
        counts = keep.sum(-1).tolist()
        for k, i in enumerate(idx):
            res["chosen"][i], res["rejected"][i] = sums[2 * k], sums[2 * k + 1]
            ntok["chosen"][i], ntok["rejected"][i] = counts[2 * k], counts[2 * k + 1]
    return PairLogprobs(res["chosen"], res["rejected"], ntok["chosen"], ntok["rejected"])
