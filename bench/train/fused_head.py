"""TRL's fused LM head, made to score only the positions that carry a label on every device.

TRL 1.16's SFT and DPO trainers compute per-token log-probabilities with a chunked fused LM head
(``trl.trainer.utils.add_fused_lm_head`` calling ``trl.kernels.ChunkedLogProbFunction``): the
projection onto the vocabulary is done in tiles and folded into an online log-sum-exp, without the
``[tokens, vocab]`` logits. On a device with Triton it passes the head only the positions whose
label is not ``-100`` (the completion tokens); elsewhere it passes every position, prompt and
padding included, because on a compiled backend (its example: Neuron) a row count that changes with
every batch would recompile. On the CPU, in eager mode, nothing recompiles, and every prompt and
padding row costs an fp32 product with the 49,152-wide head, its log-sum-exp fold, and the same
again in the backward pass (which recomputes the tiles).

:func:`compact_fused_head` makes TRL take its compact path on every device, for a trainer's
``train()``. It changes which rows reach the head, not how a row is computed: each row's logits
(an fp32 product, row for row the same at any row count: the product's sum runs over the hidden
width, not over rows), its fold (row-wise reductions) and its gradient (``g (onehot - p)``, zero on
unlabelled rows either way) are the same numbers. Measured on the default profile's DPO recipe
(bf16 and fp32, top-layers and LoRA): every trained weight and every logged metric bitwise equal,
and ``trainer.train()`` 1.5-1.8x faster; seed 2's SFT stage 1.59x and its DPO stages 1.27-1.52x
(docs/experiments.md#compact-fused-head).

The one place it is not exact is a trained head (``dpo-full``: SmolLM2's head is the tied input
embedding, trainable there): the head's weight gradient is a sum over rows, and dropping the zero
rows changes how that sum is blocked, so last bits move (max parameter difference 2e-5 after four
steps). There the context leaves TRL's default alone, so no committed number moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def compact_fused_head(model) -> Iterator[bool]:
    """Inside: TRL's fused LM head scores only labelled positions, on any device; yields whether it
    does (False for a trained or missing head, or a TRL without the switch: TRL's default then runs).
    Restores TRL's own device test on exit, also on error."""
    import trl.trainer.utils as trl_utils

    head = model.get_output_embeddings()
    trained = head is None or head.weight.requires_grad
    if trained or not callable(getattr(trl_utils, "_use_triton", None)):
        yield False
        return
    original = trl_utils._use_triton  # read there only to choose compact rows; the kernels keep their own
    trl_utils._use_triton = lambda device: True
    try:
        yield True
    finally:
        trl_utils._use_triton = original
