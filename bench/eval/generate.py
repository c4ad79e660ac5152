"""Batched greedy generation with the KV cache, for refusal evaluation and steering selection.

Prompts are formatted by ``bench.chat`` (one place), sorted by length so a batch carries little
padding, left-padded (decoder-only generation continues from the right edge;
:func:`left_padded_batches`, which ``bench.perf.generation`` times on the same batches), and decoded
back in the caller's order. Greedy decoding makes the generations, and so the refusal rates, deterministic
for a given model and machine.

Decoding is :func:`bench.eval.fastgen.greedy_tokens` in its exact mode: the forward calls
``model.generate(do_sample=False)`` makes, so the same logits bit for bit and the same tokens (fp32
and bf16 autocast alike; steering hooks run on the same calls), without ``generate``'s per-step
bookkeeping and KV-cache concatenation. A model it does not support goes to ``model.generate``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from bench import chat
from bench.eval.fastgen import greedy_tokens
from bench.precision import generation_autocast


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int = 16


def left_padded_batches(tok, texts: list[str], batch_size: int) -> Iterator[tuple[list[int], dict]]:
    """``(indices, encoding)`` per batch: the texts sorted by token length, longest first (an
    out-of-memory error shows up at once), ``batch_size`` at a time, left-padded (decoder-only
    generation continues from the right edge). The tokenizer pads on the left while the batches are
    drawn, as before after."""
    enc_lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -enc_lens[i])
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = old_side


@torch.no_grad()
def generate_greedy(model, tok, prompts: list[str], system_prompt: str | None, settings: GenerationSettings,
                    desc: str = "generate", history: list[list[dict]] | None = None) -> list[str]:
    """Greedy completions (special tokens stripped) for chat prompts, in the input order."""
    texts = [chat.format_prompt(tok, p, system_prompt, history[i] if history else None) for i, p in enumerate(prompts)]
    out: list[str | None] = [None] * len(texts)
    model.eval()
    bs = settings.batch_size
    # closed: the padding side restored; bf16 models: one cast of the weights for the whole call, not per batch
    with contextlib.closing(left_padded_batches(tok, texts, bs)) as batches, generation_autocast(model):
        for idx, batch in tqdm(batches, total=-(-len(texts) // bs), desc=desc, leave=False, disable=None):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            # eos None: the generation config's end tokens, as generate uses
            new = greedy_tokens(model, batch["input_ids"], batch["attention_mask"], settings.max_new_tokens,
                                None, tok.pad_token_id, exact=True)  # (B, new_tokens)
            for j, i in enumerate(idx):
                out[i] = tok.decode(new[j], skip_special_tokens=True).strip()
    return [o or "" for o in out]
