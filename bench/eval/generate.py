"""Batched greedy generation with the KV cache, for refusal evaluation and steering selection.

Prompts are formatted by ``bench.chat`` (one place), sorted by length so a batch carries little
padding, left-padded (decoder-only generation continues from the right edge), and decoded back in
the caller's order. Greedy decoding makes the generations, and so the refusal rates, deterministic
for a given model and machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench import chat
from bench.precision import generation_autocast


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int = 16


@torch.no_grad()
def generate_greedy(model, tok, prompts: list[str], system_prompt: str | None, settings: GenerationSettings,
                    desc: str = "generate", history: list[list[dict]] | None = None) -> list[str]:
    """Greedy completions (special tokens stripped) for chat prompts, in the input order."""
    texts = [chat.format_prompt(tok, p, system_prompt, history[i] if history else None) for i, p in enumerate(prompts)]
    enc_lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -enc_lens[i])  # longest first: OOM shows up at once
    out: list[str | None] = [None] * len(texts)
    old_side = tok.padding_side
    tok.padding_side = "left"
    model.eval()
    try:
        bs = settings.batch_size
        for start in tqdm(range(0, len(order), bs), desc=desc, leave=False, disable=None):
            idx = order[start:start + bs]
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with generation_autocast(model):  # bf16 models: one cast of the weights for the whole call
                gen = model.generate(**batch, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, use_cache=True)
            new = gen[:, batch["input_ids"].shape[1]:]  # (B, new_tokens)
            for j, i in enumerate(idx):
                out[i] = tok.decode(new[j], skip_special_tokens=True).strip()
    finally:
        tok.padding_side = old_side
    return [o or "" for o in out]
