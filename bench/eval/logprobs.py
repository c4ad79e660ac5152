"""Response log-probabilities of preference pairs under a causal LM.

For each pair we need ``log pi(y|x)`` summed over response tokens, for the chosen and the rejected
response, plus the token counts (for per-token margins). Both responses of a pair go into the same
batch, and batches are formed from pairs of similar length, so padding is small and each prompt is
tokenised once. The prompt/response boundary is found by tokenising the formatted prompt alone:
the chat template ends the prompt with the assistant header, so the response tokens start right
after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench import chat
from bench.losses import sequence_logprobs


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


@torch.no_grad()
def score_pairs(model, tok, pairs: list[dict], system_prompt: str | None, batch_size: int = 8,
                max_length: int = 512, desc: str = "score pairs") -> PairLogprobs:
    encoded = [encode_pair(tok, p, system_prompt, max_length) for p in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -max(len(encoded[i][0]), len(encoded[i][1])))
    res = {k: [0.0] * len(pairs) for k in ("chosen", "rejected")}
    ntok = {k: [0] * len(pairs) for k in ("chosen", "rejected")}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    half = max(1, batch_size // 2)  # two sequences per pair
    for start in tqdm(range(0, len(order), half), desc=desc, leave=False, disable=None):
        idx = order[start:start + half]
        seqs, starts = [], []
        for i in idx:
            c, r, plen = encoded[i]
            seqs += [c, r]
            starts += [plen, plen]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (2B, L), right padded
        attn = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            attn[j, : len(s)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits  # (2B, L, V)
        labels = ids[:, 1:].to(logits.device)  # token t+1 is predicted at position t
        mask = torch.zeros_like(labels, dtype=torch.float)
        for j, s in enumerate(seqs):
            mask[j, starts[j] - 1: len(s) - 1] = 1.0  # response tokens only
        lp = sequence_logprobs(logits[:, :-1], labels, mask)  # (2B, L-1)
        sums = (lp * mask).sum(-1).tolist()
        counts = mask.sum(-1).long().tolist()
        for k, i in enumerate(idx):
            res["chosen"][i], res["rejected"][i] = sums[2 * k], sums[2 * k + 1]
            ntok["chosen"][i], ntok["rejected"][i] = counts[2 * k], counts[2 * k + 1]
    return PairLogprobs(res["chosen"], res["rejected"], ntok["chosen"], ntok["rejected"])
