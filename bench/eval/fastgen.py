"""Batched greedy decoding by a lean loop over the model's forward: ``generate``'s tokens, less overhead.

What: :func:`greedy_tokens` returns the new tokens ``(B, n_new)`` that
``model.generate(input_ids, attention_mask, max_new_tokens=..., do_sample=False, pad_token_id=...,
eos_token_id=...)`` returns after a left-padded prompt batch: the same argmax tokens, the same
``pad_token_id`` after a row has emitted an end-of-sequence token, the same early exit when every
row has (so ``n_new <= max_new_tokens``). ``bench.eval.generate.generate_greedy`` (the battery,
steering selection, on-policy pairs, tracking) decodes with it; PPO's rollouts pass a ``choose``
(a sampler) in its place of the argmax. Models it does not support go to ``model.generate``
(:func:`unsupported_reason` says why; with a ``choose``, to a plain loop), so a caller can always use it.

Why: refusal evaluation, steering selection and on-policy pairs spend most of their CPU time in
greedy generation. Measured on a 2-core AVX-512/AMX CPU with SmolLM2-135M-Instruct, batch 32:
a decode step of plain ``generate`` in fp32 costs ~100 ms, of which the matrix products are ~62 ms
(the 211 linear layers at M=32 rows run at ~140 GFLOP/s, near what fp32 gets here), the KV cache's
``torch.cat`` (every layer copies its whole cache, both K and V, every step: O(L) bytes per step,
O(L^2) per sequence) ~12 ms, attention ~9 ms and the rest (~1500 small ops, ``generate``'s own
bookkeeping) ~15 ms. Under ``torch.autocast("cpu", bfloat16)`` the products fall to ~30 ms (AMX),
so the concatenation (~17 ms, the cache is fp32 there: RoPE's fp32 cos/sin promote the keys) and
the small ops become half of the step. Prefill (one pass over B x L prompt tokens) is all matrix
products: ~1.9 s fp32 / ~0.9 s bf16 for 32 x 64 tokens, a quarter of the total at 48 new tokens.
So the decode loop is not mostly overhead in fp32; what can be removed without changing one
computed number is the concatenation and ``generate``'s bookkeeping (``bench.perf.generation``
measures what that gives).

How, exact part (the default, ``exact=True``): the calls into the model are the ones ``generate``
makes, argument for argument, so every logit is bit-identical to ``generate``'s (in fp32 and under
autocast alike; checked bitwise on the logits) and forward hooks (steering, ``bench.steer.hooks``)
run on the same calls:

- prefill once: ``input_ids`` (B, L), the 2-D ``attention_mask`` (dropped when it is all ones, as
  ``generate`` drops it), ``position_ids = cumsum(mask) - 1`` with pads at 0, ``logits_to_keep=1``;
- then one token per step: ``input_ids`` (B, 1), the mask grown by a column of ones, position
  ``p_t = p_{L-1} + t`` per row, and the cache;
- token ``y_t = argmax_v logits[:, -1, v]`` (fp32, first index on ties, as ``generate``'s
  ``torch.argmax``; computed by :func:`pick`), replaced by ``pad_token_id`` in rows already
  finished; a row finishes on a token in ``eos_token_ids``.
- KV cache: a ``DynamicCache`` whose layers write the new positions into one buffer preallocated
  for ``L + max_new_tokens`` positions and hand attention a view of the filled part
  ``buf[:, :, :n]``: the values and shapes ``DynamicLayer``'s ``torch.cat`` would give (only the
  strides differ), so attention computes the same numbers, with O(1) bytes written per step instead
  of O(L). The mask is a preallocated buffer viewed the same way.
- under autocast, the cache stores the keys in autocast's dtype. They come out of RoPE in fp32
  (its cos/sin are fp32), and attention (``scaled_dot_product_attention`` or ``matmul``, both on
  autocast's lower-precision list) casts the whole cache to bf16 at every step: O(L) again. Rounding
  each position once when it is written gives the same bf16 values.

How, approximate part (``exact=False``): two savings that change the shapes of matrix products and
so, at the last bit, the numbers (a GEMM's row ``i`` is not bitwise the same for M=32 and M=24
rows on MKL/oneDNN); a near-tie between two logits can then flip a token, rarely:

- shared-prefix prefill: chat prompts share the template's head (SmolLM2's default system prompt:
  24 tokens of ~45). Its K/V are computed once (one row) and copied into every row's place in the
  cache; the batch prefill then runs only the last ``L - P`` columns, where ``P`` is the longest
  common prefix of the unpadded rows (for row ``r`` with ``s_r`` left pads, cache columns
  ``[s_r, L - S)`` hold prefix positions ``0 .. L - S - s_r - 1``, ``S = L - P``; the rest of its
  prefix, if any, is recomputed in the suffix pass). Used when ``P >= 8``.
- compaction: when a quarter of the live rows have finished, they leave the batch (cache, mask,
  positions are index-selected), so later steps multiply fewer rows.

Both are skipped when the model has whole-model hooks (``model._forward_pre_hooks`` /
``_forward_hooks``, e.g. the gated steering of ``bench.steer.hooks``, which reads each row's whole
prompt in one pass and keeps a per-row mask): such hooks see the batch, and would see a different
one. Hooks on decoder layers act position by position and row by row, which both savings keep.

Not done: ``torch.compile`` of the decode step (measured in docs/experiments.md#generation-ceiling: 35 s
to compile one static-cache shape for a decode step 15% faster, a crash on the second call, and fused
kernels change the numbers); transformers' static cache
(attention over all ``L + max_new`` columns, the unfilled ones masked, at every step including the
prefill: more work, and not bit-identical: its logits differ from ``generate``'s by ~3e-6 on the
test model).

Fallback (reason from :func:`unsupported_reason`): a model that is not a Llama-family decoder-only
causal LM (``config.model_type == "llama"``, a ``forward`` taking ``position_ids``,
``past_key_values`` and ``logits_to_keep``); a peft wrapper other than LoRA; cache layers other than
full attention (sliding window, hybrid); a model spread over devices (``hf_device_map``); a
generation config that ``generate`` would turn into logits processors or a different cache
(repetition penalty, n-gram blocking, bad words, min length, suppressed or forced tokens, static
cache, beams, ...). Without ``choose`` such a model goes to ``model.generate`` (its tokens, its
logits processors included). With ``choose`` it runs a plain loop (:func:`_generic_tokens`): the
model's forward with a transformers ``DynamicCache`` built from its config, position ids from the
mask, the same ``choose`` / end-token / padding rules, on the raw logits (no logits processors: the
picker is the caller's), so ``choose`` is always honoured.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

SUPPORTED_MODEL_TYPES = ("llama",)
MIN_SHARED_PREFIX = 8  # tokens; below this a second (one-row) forward is not worth it
COMPACT_WHEN_LIVE_AT_MOST = 0.75  # of the current rows
# Attention implementations whose first op on the cached keys/values is on autocast's
# lower-precision list (F.scaled_dot_product_attention; matmul): they read the cache in autocast's dtype.
CAST_BY_AUTOCAST = ("sdpa", "eager")

# Generation-config fields whose non-neutral value makes ``generate`` do more than argmax, or cache
# differently: (name, neutral values).
_NEUTRAL = (
    ("num_beams", (None, 1)), ("num_beam_groups", (None, 1)), ("num_return_sequences", (None, 1)),
    ("repetition_penalty", (None, 1.0)), ("encoder_repetition_penalty", (None, 1.0)),
    ("no_repeat_ngram_size", (None, 0)), ("encoder_no_repeat_ngram_size", (None, 0)),
    ("bad_words_ids", (None,)), ("min_length", (None, 0)), ("min_new_tokens", (None, 0)),
    ("suppress_tokens", (None,)), ("begin_suppress_tokens", (None,)), ("forced_bos_token_id", (None,)),
    ("forced_eos_token_id", (None,)), ("sequence_bias", (None,)), ("exponential_decay_length_penalty", (None,)),
    ("guidance_scale", (None, 1.0)), ("watermarking_config", (None,)), ("stop_strings", (None,)),
    ("max_time", (None,)), ("prompt_lookup_num_tokens", (None,)), ("assistant_model", (None,)),
    ("token_healing", (None, False)), ("cache_implementation", (None, "dynamic")),
    ("prefill_chunk_size", (None,)), ("penalty_alpha", (None,)), ("dola_layers", (None,)),
    ("epsilon_cutoff", (None, 0.0)), ("eta_cutoff", (None, 0.0)), ("low_memory", (None, False)),
    ("renormalize_logits", (None, False)),
)


def _stored_dtype(x: torch.Tensor, cast_by_autocast: bool) -> torch.dtype:
    """The dtype attention will read ``x`` in: autocast's lower precision for an fp32 tensor when
    autocast is on and attention's first op on the cache is on autocast's lower-precision list
    (``scaled_dot_product_attention``, ``matmul``); ``x.dtype`` otherwise."""
    dev = x.device.type
    if cast_by_autocast and x.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in one buffer of ``capacity`` positions.

    ``update`` copies the new positions in place and returns views ``buf[:, :, :n]``: what the
    parent's ``torch.cat`` returns, without rewriting the whole cache every step. Under autocast
    (``cast_by_autocast``), fp32 keys (RoPE's fp32 cos/sin promote them) are stored already in
    autocast's dtype: attention would cast the whole cache to it at every step; the same rounding
    once per position gives the same values."""

    def __init__(self, capacity: int, cast_by_autocast: bool = False):
        super().__init__()
        self.capacity = capacity
        self.cast_by_autocast = cast_by_autocast
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_zeros((b, h, self.capacity, d), dtype=_stored_dtype(key_states, self.cast_by_autocast))
        self._v = value_states.new_zeros((b, value_states.shape[1], self.capacity, value_states.shape[-1]),
                                         dtype=_stored_dtype(value_states, self.cast_by_autocast))
        self.is_initialized = True

    def _view(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.length, key_states.shape[-2]
        if n + m > self.capacity:
            raise RuntimeError(f"fastgen cache: {n + m} positions exceed the capacity {self.capacity}")
        self._k[:, :, n:n + m].copy_(key_states)
        self._v[:, :, n:n + m].copy_(value_states)
        self.length = n + m
        self._view()
        return self.keys, self.values

    def load_prefix(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        """Fill the first ``length`` positions of every row from (B, H, length, D) tensors."""
        if not self.is_initialized:
            self.lazy_initialization(k, v)
        self._k[:, :, :length].copy_(k)
        self._v[:, :, :length].copy_(v)
        self.length = length
        self._view()

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            n = self.length
            k = self._k.new_zeros((len(indices), *self._k.shape[1:]))
            v = self._v.new_zeros((len(indices), *self._v.shape[1:]))
            k[:, :, :n] = self._k[indices, :, :n]
            v[:, :, :n] = self._v[indices, :, :n]
            self._k, self._v = k, v
            self._view()

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("fastgen's cache only grows and drops rows")

    crop = batch_repeat_interleave = reorder_cache = _unsupported


def _unwrap(model):
    """The transformers model under a LoRA peft wrapper (its forward is the base model's, with the
    adapters injected into the layers); the model itself otherwise."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model


def unsupported_reason(model) -> str | None:
    """Why :func:`greedy_tokens` would hand this model to ``model.generate``; None if it runs the lean loop."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        kinds = {str(getattr(c, "peft_type", "")).split(".")[-1] for c in model.peft_config.values()}
        if kinds != {"LORA"}:
            return f"peft adapters other than LoRA ({sorted(kinds)}): their forward is not the base model's"
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if config is None:
        return f"{type(inner).__name__} has no transformers config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model_type {getattr(config, 'model_type', None)!r} is not one of {SUPPORTED_MODEL_TYPES} (the tested family)"
    params = set(inspect.signature(inner.forward).parameters)
    missing = {"input_ids", "attention_mask", "position_ids", "past_key_values", "logits_to_keep"} - params
    if missing:
        return f"forward takes no {sorted(missing)}"
    device_map = getattr(inner, "hf_device_map", None)
    if device_map and len(set(device_map.values())) > 1:
        return "model spread over several devices (hf_device_map)"
    layers = DynamicCache(config=config).layers
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return "cache layers other than full attention (sliding window, chunked or hybrid attention)"
    gc = getattr(inner, "generation_config", None)
    if gc is not None:
        for name, neutral in _NEUTRAL:
            value = getattr(gc, name, None)
            if value not in neutral and not (isinstance(value, (list, tuple, dict)) and not value):
                return f"generation_config.{name}={value!r}: generate would not decode by plain argmax"
    return None


def pick(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` of each row, as ``generate`` takes it (on the logits cast to fp32; the first index
    among equal maxima), by ``max(-1).indices``, which returns the same index (documented: the first
    maximal value) ~3x faster on CPU (0.8 vs 2.5 ms for 32 x 49152 fp32 on one core; argmax on bf16
    takes 5.6 ms)."""
    return logits.float().max(-1).indices


def _eos_list(model, eos_token_ids) -> list[int]:
    if eos_token_ids is None:  # what generate uses when given none
        eos_token_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_ids is None:
        return []
    if isinstance(eos_token_ids, int):
        return [eos_token_ids]
    if isinstance(eos_token_ids, torch.Tensor):
        return [int(x) for x in eos_token_ids.flatten().tolist()]
    return [int(x) for x in eos_token_ids]


def _has_model_hooks(model) -> bool:
    inner = _unwrap(model)
    mods = [model, inner, getattr(inner, "model", None)]
    return any(m is not None and (m._forward_pre_hooks or m._forward_hooks) for m in mods)


def _generate(model, input_ids, attention_mask, max_new_tokens, eos, pad_token_id) -> torch.LongTensor:
    # eos_token_id=[] is how generate is told "no end token" (None means the generation config's).
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_token_id, eos_token_id=list(eos), use_cache=True)
    return out[:, input_ids.shape[1]:]


def _default_mask(input_ids: torch.Tensor, pad_token_id: int, eos: list[int]) -> torch.Tensor:
    """The mask ``generate`` infers when given none: ``input_ids != pad`` when the pad token occurs in
    the inputs and is not an end token; all ones otherwise."""
    if pad_token_id not in eos and bool((input_ids == pad_token_id).any()):
        return (input_ids != pad_token_id).long()
    return torch.ones_like(input_ids)


def _generic_call(model, reason: str):
    """``model(**kw).logits`` with only the keyword arguments its ``forward`` takes, for the plain loop
    (a model :func:`unsupported_reason` refuses, decoding with a ``choose``)."""
    inner = _unwrap(model)
    if getattr(getattr(inner, "config", None), "is_encoder_decoder", False):
        raise ValueError(f"greedy_tokens(choose=...): cannot decode this model ({reason})")
    params = inspect.signature(model.forward).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = {"input_ids", "attention_mask", "past_key_values"} - set(params)
    if missing and not takes_all:
        raise ValueError(f"greedy_tokens(choose=...): forward takes no {sorted(missing)} ({reason})")

    def call(**kw):
        return model(**{k: v for k, v in kw.items() if takes_all or k in params}).logits

    return call


def _common_prefix(input_ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> int:
    """Length of the longest token prefix shared by every row's unpadded tokens, at most min length - 1
    (each row keeps at least its last token for the suffix pass, which gives the first logits)."""
    limit = int(lengths.min()) - 1
    if limit <= 0:
        return 0
    idx = starts[:, None] + torch.arange(limit, device=input_ids.device)  # (B, limit)
    heads = input_ids.gather(1, idx)
    same = (heads == heads[:1]).all(0)  # (limit,)
    differ = (~same).nonzero()
    return int(differ[0]) if len(differ) else limit


def _prefill_shared(model, cache, input_ids, mask_arg, pos, starts, lengths, prefix: int):
    """Prefill with the shared prefix computed once; returns the logits of the last position."""
    L = input_ids.shape[1]
    S = int(lengths.max()) - prefix  # suffix columns every row needs
    head = L - S  # cache columns filled from the prefix pass
    r0 = int(lengths.argmax())
    one = DynamicCache(config=_unwrap(model).config)
    model(input_ids=input_ids[r0:r0 + 1, int(starts[r0]):int(starts[r0]) + prefix],
          position_ids=torch.arange(prefix, device=input_ids.device)[None], past_key_values=one,
          use_cache=True, logits_to_keep=1)
    # Row r's cache column j (< head) holds prefix position j - s_r, or zeros (a masked pad) for j < s_r.
    j = torch.arange(head, device=input_ids.device)
    src = (j[None, :] - starts[:, None])  # (B, head)
    valid = (src >= 0)[:, None, :, None]  # (B, 1, head, 1)
    src = src.clamp(min=0)
    for layer, done in zip(cache.layers, one.layers):
        pk, pv = done.keys[0], done.values[0]  # (H, P, D)
        k = torch.where(valid, pk[:, src].permute(1, 0, 2, 3), 0)
        v = torch.where(valid, pv[:, src].permute(1, 0, 2, 3), 0)
        layer.load_prefix(k, v, head)
    return model(input_ids=input_ids[:, head:], attention_mask=mask_arg, position_ids=pos[:, head:],
                 past_key_values=cache, use_cache=True, logits_to_keep=1).logits


@torch.no_grad()
def prefill_inputs(attention_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The ``attention_mask`` and ``position_ids`` (B, L) that the prefill of :func:`greedy_tokens` passes
    the model for a left-padded batch: the mask, or None when it is all ones (``generate`` drops it),
    and ``cumsum(mask) - 1`` with pads at 0 (as ``generate``'s ``_prepare_position_ids_for_generation``).
    The gate's prompt read-out (:func:`bench.steer.hooks.gate_decisions`) passes the same."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return (None if bool((attention_mask == 1).all()) else attention_mask), pos


def greedy_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                  eos_token_ids=None, pad_token_id: int | None = None, *, exact: bool = True,
                  choose=None) -> torch.LongTensor:
    """New tokens (B, n_new) of greedy decoding from a left-padded batch, as ``model.generate``'s.

    ``eos_token_ids``: an int or ints ending a row; None means the model's
    ``generation_config.eos_token_id`` (what ``generate`` uses), ``[]`` means none.
    ``pad_token_id``: the token of finished rows; None means the generation config's pad token,
    else the first end token. ``attention_mask`` None: the one ``generate`` infers.
    ``n_new < max_new_tokens`` when every row ended early.
    ``exact=False`` adds the shared-prefix prefill and compaction (module docstring): faster,
    tokens equal to ``generate``'s except at a rare near-tie.
    Works under an outer ``torch.autocast``; unsupported models go to ``model.generate``, or, with a
    ``choose``, to a plain loop over the model's forward (module docstring).

    ``choose(logits, t, rows) -> tokens``: how the next token is picked, given the last position's
    logits (b, V) as the model returns them, the step ``t`` (the token's index in the response) and
    ``rows`` (b,), the original row index of each row of the batch; returns (b,) token ids. None is
    greedy (:func:`pick`). PPO's rollouts pass a sampler whose noise is keyed by row and position
    (``bench.train.rollout``), so a row's tokens do not depend on which rows share its batch.
    """
    eos = _eos_list(model, eos_token_ids)
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        if pad_token_id is None:
            if not eos:
                raise ValueError("greedy_tokens: no pad_token_id and no end token to pad with")
            pad_token_id = eos[0]
    if input_ids.dim() != 2:
        raise ValueError(f"greedy_tokens: input_ids must be (B, L), got {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    dev = input_ids.device
    if attention_mask is None:
        attention_mask = _default_mask(input_ids, pad_token_id, eos)
    if max_new_tokens <= 0:
        return input_ids.new_zeros((B, 0))
    reason = unsupported_reason(model)
    if reason is not None and choose is None:
        return _generate(model, input_ids, attention_mask, max_new_tokens, eos, pad_token_id)

    config = getattr(_unwrap(model), "config", None)
    if reason is None:  # the lean loop: generate's calls, a preallocated cache
        call = lambda **kw: model(**kw).logits  # noqa: E731
        cast = getattr(config, "_attn_implementation", None) in CAST_BY_AUTOCAST
        cache = DynamicCache(config=config)
        cache.layers = [_PreallocatedLayer(L + max_new_tokens, cast) for _ in cache.layers]
    else:  # a plain loop, so that choose is honoured
        call = _generic_call(model, reason)
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    free = reason is None and not exact and not _has_model_hooks(model)
    am = attention_mask
    mask_arg, pos = prefill_inputs(am)
    no_pad = mask_arg is None
    mask = am.new_ones((B, L + max_new_tokens))
    mask[:, :L] = am
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)

    prefix = 0
    if free and B > 1:
        lengths = am.long().sum(-1)
        starts = L - lengths
        left_padded = bool((am.long().cumsum(-1) == (torch.arange(L, device=dev) - starts[:, None] + 1).clamp(min=0)).all())
        if left_padded:
            prefix = _common_prefix(input_ids, starts, lengths)
    if prefix >= MIN_SHARED_PREFIX:
        logits = _prefill_shared(model, cache, input_ids, None if no_pad else am, pos, starts, lengths, prefix)
    else:
        logits = call(input_ids=input_ids, attention_mask=None if no_pad else am, position_ids=pos,
                      past_key_values=cache, use_cache=True, logits_to_keep=1)

    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
    rows = torch.arange(B, device=dev)  # the original row of each row still in the batch
    live = torch.ones(B, dtype=torch.bool, device=dev)
    last = pos[:, -1:]
    for t in range(max_new_tokens):
        nxt = pick(logits[:, -1]) if choose is None else choose(logits[:, -1], t, rows)
        nxt = torch.where(live, nxt.to(device=dev, dtype=torch.long), pad_token_id)
        out[rows, t] = nxt
        if len(eos):
            live = live & ~torch.isin(nxt, eos_t)
        n_live = int(live.sum())
        if n_live == 0:  # generate stops when every row has ended
            return out[:, :t + 1]
        if t == max_new_tokens - 1:
            break
        if free and n_live <= COMPACT_WHEN_LIVE_AT_MOST * len(rows):
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, live, mask, last = rows[keep], nxt[keep], live[keep], mask[keep], last[keep]
        last = last + 1
        logits = call(input_ids=nxt[:, None], attention_mask=None if no_pad else mask[:, :L + t + 1],
                      position_ids=last, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out
