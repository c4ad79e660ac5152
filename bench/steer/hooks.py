"""Steering by forward hooks: ablate or add a direction in the residual stream.

One context manager, :func:`steering`, applies a direction (or a steered variant's
:class:`~bench.steer.spec.SteeringSpec`) to a Hugging Face decoder-only model (Llama-style:
``model.model.embed_tokens``, ``model.model.layers[i].self_attn`` / ``.mlp``)::

    with steering(model, SteeringSpec.from_record(record).located(run_dir)): ...

Two modes:

- ``mode="ablate"`` (directional ablation, Arditi et al. 2024, "Refusal in language models is
  mediated by a single direction", eq. 4): ``x <- x - (x . r_hat) r_hat`` for the unit direction
  ``r_hat`` on every write into the residual stream: the embeddings, every attention block's output,
  every MLP's output, and every decoder layer's output (the last one is redundant in exact arithmetic
  but keeps the stream clean to float tolerance). Every token position, prompt and generated alike.
- ``mode="add"`` (activation addition, their eq. 3): ``x <- x + alpha * r`` at one residual-stream
  point, ``layer`` in hidden-state numbering (the index into ``output_hidden_states``): 0 is the
  embeddings' output, ``i >= 1`` the output of decoder layer ``i - 1``. ``r`` is the raw difference of
  means, so ``alpha = 1`` adds the direction at its natural norm.

A gated spec's decision can also be read without steering: :func:`gate_decisions` says which chat
prompts the gate ablates, with the read-out the gated hooks use (:func:`gate_ablates`).

Hooks are registered with ``prepend=True`` so that they run before transformers' own output-capturing
hooks (``output_hidden_states`` then shows the steered stream), and they are removed on exit even
when the block raises.

:func:`orthogonalize_weights` exports ablation as a plain checkpoint: the direction is projected out
of every matrix that writes into the residual stream (embedding rows, attention ``o_proj`` and MLP
``down_proj`` outputs, and their biases if any). For this architecture that is exact: the stream
starts orthogonal to ``r_hat`` and every write into it is orthogonal, which is what the hooks do. A
tied ``lm_head`` is untied first (the unembedding reads the *normed* stream, whose component along
``r_hat`` is not zero, so it must keep the original matrix).

Steering vectors are plain tensors saved with ``torch.save`` of a dict of tensors and read back with
``torch.load(..., weights_only=True)`` (no pickled code). :func:`write_lm_eval_steer_file` writes the
same steering in the format of lm-eval's ``steered`` model adapter (``lm_eval/models/hf_steered.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from bench.steer.spec import MODES, GateSpec, SteeringSpec

# --------------------------------------------------------------------------- model anatomy


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (``LlamaModel``) of a causal LM (``LlamaForCausalLM``, or a peft wrapper)."""
    if hasattr(model, "get_base_model"):  # peft: hook the wrapped transformers model
        model = model.get_base_model()
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if hasattr(model, "layers") and hasattr(model, "embed_tokens"):
        return model
    raise TypeError(f"{type(model).__name__}: cannot find the decoder layers (expected model.model.layers)")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return backbone(model).layers


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def project_out(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``x - (x . u) u`` over the last dimension; ``u`` must have unit norm. # x: (..., H)"""
    u = unit.to(device=x.device, dtype=x.dtype)
    return x - (x @ u).unsqueeze(-1) * u


def unit_vector(direction: torch.Tensor) -> torch.Tensor:
    d = direction.detach().to(torch.float64).flatten()
    norm = d.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("steering direction has zero or non-finite norm")
    return (d / norm).to(torch.float32)


# --------------------------------------------------------------------------- vectors on disk


def save_vector(path: str | Path, direction: torch.Tensor, **tensors: torch.Tensor) -> Path:
    """``torch.save`` a dict of plain tensors (``direction`` plus any extras), atomically."""
    import io

    from bench.io import atomic_write_bytes

    payload = {"direction": direction.detach().to(torch.float32).cpu().contiguous()}
    payload.update({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_vector(path: str | Path) -> torch.Tensor:
    """The ``direction`` tensor of a file written by :func:`save_vector` (``weights_only=True``)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "direction" not in data:
        raise ValueError(f"{path}: not a steering vector file (expected a dict with key 'direction')")
    return data["direction"]


# --------------------------------------------------------------------------- the context manager


def as_spec(direction_or_spec: Any, mode: str = "ablate", layer: int | None = None,
            alpha: float | None = 1.0) -> SteeringSpec:
    """A :class:`~bench.steer.spec.SteeringSpec` from a spec, a spec dict, or a tensor plus arguments."""
    if isinstance(direction_or_spec, SteeringSpec):
        return direction_or_spec
    if isinstance(direction_or_spec, Mapping):
        return SteeringSpec.from_dict(direction_or_spec)
    if not isinstance(direction_or_spec, torch.Tensor):
        raise TypeError(f"steering: expected a tensor or a spec, got {type(direction_or_spec).__name__}")
    return SteeringSpec(mode=mode, layer=layer, alpha=alpha if mode == "add" else None, vector=direction_or_spec)


def _tensor(vector: Any, vector_path: str | None) -> torch.Tensor:
    return torch.as_tensor(vector) if vector is not None else load_vector(vector_path)


@contextlib.contextmanager
def steering(model: nn.Module, direction_or_spec: Any, mode: str = "ablate", layer: int | None = None,
             alpha: float | None = 1.0) -> Iterator[nn.Module]:
    """Ablate (every layer) or add (one layer) a direction while the block runs; yields the model.

    ``direction_or_spec``: a :class:`~bench.steer.spec.SteeringSpec` (what a steer record holds, see
    :meth:`SteeringSpec.from_record`), a spec dict, or a tensor ``(H,)`` steered as ``mode``,
    ``layer`` and ``alpha`` say (those arguments are used only with a tensor). A spec with a gate
    (:mod:`bench.steer.gate`) ablates only the rows whose prompt-end projection on the gate direction
    is below the threshold or, for an addition, adds ``alpha`` times the direction to the rows at or
    above it and ``gate.alpha_below`` times it to the rows below.
    """
    spec = as_spec(direction_or_spec, mode, layer, alpha)
    direction = _tensor(spec.vector, spec.vector_path)
    stack = backbone(model)
    layers = stack.layers
    hidden = stack.embed_tokens.embedding_dim
    if direction.numel() != hidden:
        raise ValueError(f"steering: direction has {direction.numel()} elements, the model's hidden size is {hidden}")
    handles: list[torch.utils.hooks.RemovableHandle] = []

    state: dict[str, Any] = {"mask": None, "reading": False}  # gated ablation: rows to ablate (B,) bool
    if spec.mode == "ablate":
        unit = unit_vector(direction)

        def ablate_hook(module, args, output):
            return _replace_first(output, project_out(_first(output), unit))

        def gated_ablate_hook(module, args, output):
            if state["reading"]:  # the gate's own unsteered pass
                return output
            x = _first(output)
            m = state["mask"].to(x.device).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1) bool
            return _replace_first(output, torch.where(m, project_out(x, unit), x))  # exactly steer-ablate's rows

        targets = [stack.embed_tokens]
        for block in layers:
            targets += [block.self_attn, block.mlp, block]
        hook = gated_ablate_hook if spec.gated else ablate_hook
    else:
        if not 0 <= spec.layer <= len(layers):
            raise ValueError(f"steering: layer {spec.layer} out of range 0..{len(layers)}")
        vec = direction.detach().flatten().to(torch.float32) * float(spec.alpha)

        def add_hook(module, args, output):
            x = _first(output)
            return _replace_first(output, x + vec.to(device=x.device, dtype=x.dtype))

        below = None if not spec.gated else direction.detach().flatten().to(torch.float32) * float(spec.gate.alpha_below)

        def gated_add_hook(module, args, output):
            if state["reading"]:  # the gate's own unsteered pass
                return output
            x = _first(output)
            m = state["mask"].to(x.device).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1) bool: reads as not harmful
            return _replace_first(output, x + torch.where(m, below.to(device=x.device, dtype=x.dtype),
                                                          vec.to(device=x.device, dtype=x.dtype)))

        targets = [stack.embed_tokens if spec.layer == 0 else layers[spec.layer - 1]]
        hook = gated_add_hook if spec.gated else add_hook
    try:
        if spec.gated:
            handles.append(model.register_forward_pre_hook(_gate_pre_hook(model, spec.gate, state), with_kwargs=True))
        for module in targets:
            handles.append(module.register_forward_hook(hook, prepend=True))
        yield model
    finally:
        for h in handles:
            h.remove()


def _gate_pre_hook(model: nn.Module, gate: GateSpec, state: dict):
    """Before each forward of the whole model: on a multi-token input (a prompt, or a scored sequence),
    :func:`gate_ablates` reads each row's prompt end in one unsteered pass and sets ``state["mask"]`` to
    the rows to ablate; a decoding step (one token after a filled KV cache) keeps the mask of its
    prefill. Any other continuation of a cache is an error: the cached tokens were computed before the
    gate was known."""
    g_unit = gate_unit(gate)

    def pre_hook(module, args, kwargs):
        if state["reading"]:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("gated steering needs input_ids (it reads the prompt's tokens)")
        past = kwargs.get("past_key_values")
        if past is not None and past.get_seq_length() > 0:  # continues cached tokens: a decoding step
            if ids.shape[1] != 1 or state["mask"] is None or state["mask"].shape[0] != ids.shape[0]:
                raise ValueError("gated steering reads each sequence's prompt in one forward pass: it cannot "
                                 f"continue a KV cache with {ids.shape[1]} tokens (score without prefix caching)")
            return None
        state["reading"] = True  # the ablation hooks let the read-out's pass through unsteered
        try:
            state["mask"] = gate_ablates(model, gate, ids, kwargs.get("attention_mask"), kwargs.get("position_ids"),
                                         unit=g_unit)  # (B,) bool: the rows to ablate
        finally:
            state["reading"] = False
        return None

    return pre_hook


# --------------------------------------------------------------------------- the gate's read-out


def gate_unit(gate: GateSpec) -> torch.Tensor:
    """The gate's unit direction (H,)."""
    return unit_vector(_tensor(gate.vector, gate.vector_path))


def gate_projections(model: nn.Module, gate: GateSpec, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                     unit: torch.Tensor | None = None) -> torch.Tensor:
    """Per row (B,), the projection on the gate direction of the residual stream at hidden-state index
    ``gate.layer`` *before* the final norm (what ``bench.steer.directions.activations`` measured when
    the gate was fitted; transformers' last hidden state is normed, so it is captured by a hook), at the
    row's prompt end (:func:`bench.steer.gate.prompt_end_positions` with ``gate.header``).

    One forward pass of the decoder stack with the given mask and positions. The stream must be the
    unsteered one: call it on a model without steering hooks (the gated hooks step aside while
    their pre-hook reads)."""
    from bench.steer.gate import prompt_end_positions

    unit = gate_unit(gate) if unit is None else unit
    stack = backbone(model)
    point = stack.embed_tokens if gate.layer == 0 else stack.layers[gate.layer - 1]
    seen: list[torch.Tensor] = []
    grab = point.register_forward_hook(lambda m, a, out: seen.append(_first(out)))
    try:
        with torch.no_grad():
            stack(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    finally:
        grab.remove()
    hs = seen[0]  # (B, T, H)
    attn = attention_mask if attention_mask is None or attention_mask.dim() == 2 else None
    pos = prompt_end_positions(input_ids, attn, gate.header)  # (B,)
    read = hs[torch.arange(input_ids.shape[0], device=hs.device), pos]  # (B, H)
    return read.float() @ unit.to(read.device)  # (B,)


def gate_ablates(model: nn.Module, gate: GateSpec, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                 unit: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool, the gate's decision: the rows whose prompt-end projection (:func:`gate_projections`)
    is below the threshold, i.e. the rows steer-gated ablates."""
    return gate_projections(model, gate, input_ids, attention_mask, position_ids, unit) < float(gate.threshold)


@torch.no_grad()
def gate_decisions(model: nn.Module, tok, gate: GateSpec | SteeringSpec, prompts: list[str],
                   system_prompt: str | None = None, batch_size: int = 16) -> torch.Tensor:
    """(N,) bool on the CPU: which user ``prompts`` the gate ablates, read where generation reads them.

    Each prompt is formatted as the battery's generation formats it (:func:`bench.chat.format_prompt`
    with the profile's ``system_prompt``, the assistant header last), batched and left-padded as
    :func:`bench.eval.generate.generate_greedy` does, and given the mask and positions of its prefill
    (:func:`bench.eval.fastgen.prefill_inputs`), under the same autocast: for the same prompts and batch
    size, the pre-hook of :func:`steering` decides the same, bit for bit. Call it on the unsteered
    model (outside any steering context). lm-eval's gated path (:mod:`bench.eval.lm_eval_gate`) uses
    it to decide each document once, on its context."""
    import contextlib

    from bench import chat
    from bench.eval.fastgen import prefill_inputs
    from bench.eval.generate import left_padded_batches
    from bench.precision import generation_autocast

    gate = gate.gate if isinstance(gate, SteeringSpec) else gate
    if gate is None:
        raise ValueError("gate_decisions: the steering spec has no gate")
    unit = gate_unit(gate)
    texts = [chat.format_prompt(tok, p, system_prompt) for p in prompts]
    out = torch.zeros(len(texts), dtype=torch.bool)
    dev = next(model.parameters()).device
    with contextlib.closing(left_padded_batches(tok, texts, batch_size)) as batches, generation_autocast(model):
        for idx, enc in batches:  # bf16 models: one cast of the weights for the whole call
            ids = enc["input_ids"].to(dev)  # (B, L) left padded
            mask, pos = prefill_inputs(enc["attention_mask"].to(dev))
            out[idx] = gate_ablates(model, gate, ids, mask, pos, unit).cpu()
    return out


# --------------------------------------------------------------------------- weight orthogonalisation


@torch.no_grad()
def orthogonalize_weights(model: nn.Module, direction: torch.Tensor) -> nn.Module:
    """Project ``direction`` out of every weight that writes into the residual stream, in place.

    Equivalent to ``steering(model, direction, mode="ablate")`` for Llama-style blocks (embedding,
    attention ``o_proj``, MLP ``down_proj``; biases too when present). A tied ``lm_head`` is untied
    first and keeps the original matrix; ``config.tie_word_embeddings`` becomes False so the saved
    checkpoint loads the same way with plain ``transformers``. Returns the model.
    """
    stack = backbone(model)
    unit64 = unit_vector(direction).to(torch.float64)
    emb = stack.embed_tokens.weight  # (V, H)
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight.data_ptr() == emb.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            cfg.tie_word_embeddings = False

    def rows(w: torch.Tensor) -> None:  # w: (N, H), each row a vector in the residual space
        u = unit64.to(w.device)
        w64 = w.to(torch.float64)
        w.copy_((w64 - (w64 @ u).unsqueeze(-1) * u).to(w.dtype))

    def outputs(linear: nn.Linear) -> None:  # weight: (H, in), output = W x lives in the residual space
        u = unit64.to(linear.weight.device)
        w64 = linear.weight.to(torch.float64)
        linear.weight.copy_((w64 - torch.outer(u, u @ w64)).to(linear.weight.dtype))
        if linear.bias is not None:
            b64 = linear.bias.to(torch.float64)
            linear.bias.copy_((b64 - (b64 @ u) * u).to(linear.bias.dtype))

    rows(emb)
    for block in stack.layers:
        outputs(block.self_attn.o_proj)
        outputs(block.mlp.down_proj)
    return model


# --------------------------------------------------------------------------- lm-eval's `steered` adapter


def _hookpoint(model: nn.Module, module: nn.Module) -> str:
    """Name of ``module`` relative to ``model.base_model`` (how lm-eval's adapter finds hookpoints)."""
    for name, m in model.base_model.named_modules():
        if m is module:
            return name
    raise ValueError("module not found under model.base_model")


def lm_eval_steer_config(model: nn.Module, direction: torch.Tensor, mode: str, layer: int | None = None,
                         alpha: float | None = 1.0) -> dict:
    """The dict that lm-eval's ``steered`` model (``steer_path=<file>.pt``) loads with
    ``torch.load(weights_only=True)``: ``{hookpoint: {action, steering_coefficient, steering_vector, bias}}``.

    ablate -> action ``clamp`` with value 0 (project out, then add 0 * direction) at the same hookpoints
    as :func:`steering`; add -> action ``add`` at the one hookpoint.
    """
    stack = backbone(model)
    vec = direction.detach().flatten().to(torch.float32).cpu()
    if mode == "ablate":
        modules = [stack.embed_tokens]
        for block in stack.layers:
            modules += [block.self_attn, block.mlp, block]
        return {_hookpoint(model, m): {"action": "clamp", "steering_coefficient": 0.0, "steering_vector": vec,
                                       "bias": None} for m in modules}
    if mode == "add":
        module = stack.embed_tokens if layer == 0 else stack.layers[layer - 1]
        return {_hookpoint(model, module): {"action": "add", "steering_coefficient": float(alpha),
                                            "steering_vector": vec, "bias": None}}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def write_lm_eval_steer_file(path: str | Path, model: nn.Module, direction: torch.Tensor, mode: str,
                             layer: int | None = None, alpha: float | None = 1.0) -> Path:
    import io

    from bench.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(lm_eval_steer_config(model, direction, mode, layer, alpha), buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
