"""TRL's fused LM head, made to score only the positions that carry a label on every device, and
to fold its tiles in cache-sized row slices on a CPU.

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
``train()``. It changes which rows reach the head, not how a row is computed: each row's logits are
an fp32 product whose sum runs over the hidden width, not over rows; the fold's reductions are per
row; an unlabelled row's gradient is zero either way (``g (onehot - p)`` with ``g = 0``). Whether a
row's product is bitwise the same at another row count is up to the BLAS kernels: on the AMX host it
was at the hundreds of labelled rows these batches have, and was not at a tile of 32 rows. So the
equality is measured, not promised: on the AMX host, seed 2's SFT and every DPO variant from scratch
gave records equal to the committed ones in every metric, and ``trainer.train()`` of the DPO recipe
ran 1.5-1.8x faster (SFT stage 1.59x, DPO stages 1.27-1.52x; docs/experiments.md#compact-fused-head).
Not checked on the AVX512-BF16 host that ran seeds 0 and 1; on the AMX host with its kernels restricted
to that host's kind (oneDNN to ``avx512_core_bf16``, MKL to AVX2 or AVX-512), the DPO recipe's weights and
logs were bitwise equal too (docs/experiments.md#compact-on-avx512-kernels).

The one place it is not exact is a trained head (``dpo-full``: SmolLM2's head is the tied input
embedding, trainable there): the head's weight gradient is a sum over rows, and dropping the zero
rows changes how that sum is blocked, so last bits move (max parameter difference 2e-5 after four
steps). There the context leaves TRL's rows alone.

Inside the context, on every head, trained or not, TRL's torch fold of each projected tile (used
where Triton does not run: its online log-sum-exp in the forward pass, the logits' gradient in the
backward pass, about ten elementwise passes each over a ``[rows, 32,768]`` fp32 tile) runs in slices of
:data:`bench.losses.CACHE_ROWS` rows (:func:`row_sliced_folds`), so that a slice stays in the CPU's
cache between its passes instead of streaming the whole tile from memory at each. The products and
their tiles are TRL's; every fold operation is elementwise or a reduction within a row, so a sliced
fold can compute each value as the whole-tile fold does. Whether a row's reduction is bitwise the same
in a slice is up to torch's CPU kernels; it was measured so (the products' gradient included, at 37 to
905 rows and slices of 4 to 32 rows, and on whole SFT and DPO runs; docs/experiments.md#sliced-head-folds).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from bench.losses import CACHE_ROWS


@contextlib.contextmanager
def compact_fused_head(model) -> Iterator[bool]:
    """Inside: TRL's fused LM head scores only labelled positions, on any device; yields whether it
    does (False for a trained or missing head, or a TRL without the switch: TRL's default then runs).
    Its tiles fold in cache-sized row slices on a CPU either way (:func:`row_sliced_folds`).
    Restores TRL's own functions on exit, also on error."""
    import trl.trainer.utils as trl_utils

    head = model.get_output_embeddings()
    trained = head is None or head.weight.requires_grad
    with row_sliced_folds():
        if trained or not callable(getattr(trl_utils, "_use_triton", None)):
            yield False
            return
        original = trl_utils._use_triton  # read there only to choose compact rows; the kernels keep their own
        trl_utils._use_triton = lambda device: True
        try:
            yield True
        finally:
            trl_utils._use_triton = original


FOLDS = ("_forward_tile", "_backward_tile")  # TRL's torch folds of one projected tile (no Triton)


def _sliced(fold: Callable, rows: int) -> Callable:
    """``fold`` applied to ``rows`` rows of a CPU tile at a time. Every tensor argument whose leading
    size is the tile's row count (targets, the running statistics it updates in place, the log-sum-exp
    and the incoming gradients) is sliced with it; the rest (offsets, flags, scalars) pass unchanged.
    The slices are views, so the fold's in-place updates land in the caller's tensors."""

    @functools.wraps(fold)
    def run(tile, *args, **kwargs):
        n = tile.shape[0]
        if tile.device.type != "cpu" or n <= rows:  # a GPU has no such cache: TRL's own call
            return fold(tile, *args, **kwargs)

        def part(x, i):
            return x[i:i + rows] if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == n else x

        for i in range(0, n, rows):
            fold(tile[i:i + rows], *(part(a, i) for a in args), **{k: part(v, i) for k, v in kwargs.items()})

    run.slice_rows = rows
    return run


def _kernels():
    """TRL's chunked log-prob kernels module, or None for a TRL without it."""
    try:
        import trl.kernels.chunked_logprob as kernels
    except ImportError:
        return None
    return kernels


def sliced_fold_rows() -> int | None:
    """The row slice TRL's folds run in now (inside :func:`row_sliced_folds`), else None."""
    return getattr(getattr(_kernels(), FOLDS[0], None), "slice_rows", None)


@contextlib.contextmanager
def row_sliced_folds(rows: int = CACHE_ROWS) -> Iterator[bool]:
    """Inside: TRL's torch folds of its fused head's tiles run ``rows`` rows at a time on a CPU; yields
    whether they do (False for a TRL without them: its own code then runs). Restored on exit, also on
    error."""
    kernels = _kernels()
    originals = {name: getattr(kernels, name, None) for name in FOLDS}
    if not all(callable(f) for f in originals.values()):
        yield False
        return
    for name, fold in originals.items():
        setattr(kernels, name, _sliced(fold, rows))
    try:
        yield True
    finally:
        for name, fold in originals.items():
            setattr(kernels, name, fold)
