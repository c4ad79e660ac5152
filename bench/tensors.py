"""Batching helpers shared by every scorer (pair log-probs, response log-probs, score models)."""

from __future__ import annotations

import torch


def position_ids(attn: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding, as ``generate`` computes them: cumsum(mask) - 1, >= 0."""
    return (attn.long().cumsum(-1) - 1).clamp_min(0)  # (B, L)


def pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (N, longest row), right padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[j, : len(r)] = 1
    return ids, attn


def longest_first_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (little padding; an
    out-of-memory shows up on the first batch, not the last)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    step = max(1, batch_size)
    return [order[s:s + step] for s in range(0, len(order), step)]
