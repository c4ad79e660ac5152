"""The steering spec: what a steered variant does to its policy, as one typed, validated value.

A steer record (``make steer``, :mod:`bench.steer.recipe`) describes its variant in two artifacts:

- ``artifacts["steering"]``: the spec dict, read and written only through :class:`SteeringSpec`
  (``{"mode", "layer", "position", "alpha", "vector_path"}``, plus ``"gate"`` for ``steer-gated``:
  ``{"layer", "threshold", "header", "vector_path"}``);
- ``artifacts["base_variant"]`` and ``artifacts["model_dir"]``: the *steered policy*, i.e. the variant
  whose model the hooks are applied to (``"sft"`` on the default profile, ``"base"`` on others).
  The key says "base" for historical reasons and is kept as written so committed records load
  unchanged; code reads it as :attr:`SteeringSpec.policy_variant`.

Every reader (the hooks that apply it, the recipe that writes it, :mod:`bench.variants` that loads a
steered variant for the battery) goes through this module::

    spec = SteeringSpec.from_record(record)           # validated; clear error naming the record
    spec.to_dict() == record["artifacts"]["steering"]  # exact round trip (tests/test_steer.py)
    with bench.steer.hooks.steering(model, spec.located(run_dir)): ...

This module is pure data (no torch at import): vectors are files (``vector_path``) or, in tests, an
in-memory tensor (``vector``) that is never written into a record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MODES = ("ablate", "add")
SPEC_KEYS = ("mode", "layer", "position", "alpha", "vector_path")
GATE_KEYS = ("layer", "threshold", "header", "vector_path", "alpha_below")
POLICY_KEY = "base_variant"  # artifacts key naming the steered policy (kept as committed records have it)


class SpecError(ValueError):
    """A steering spec with a missing, unknown or ill-typed field."""


def _int(where: str, name: str, value: Any, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: {name} must be an integer{' or null' if optional else ''}, got {value!r}")
    return value


def _number(where: str, name: str, value: Any, optional: bool = True) -> float | int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"{where}: {name} must be a number{' or null' if optional else ''}, got {value!r}")
    return value  # kept as given (int or float), so a record's JSON round-trips byte for byte


def _path(where: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise SpecError(f"{where}: {name} must be a file path, got {value!r}")
    return str(value)


def _check_keys(where: str, d: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(allowed)})")


def _locate(recorded: str | None, folder: Path) -> str | None:
    """The recorded file if it exists, else the same file name in ``folder`` (runs moved)."""
    if recorded is None:
        return None
    path = Path(recorded)
    if path.exists():
        return str(path)
    alt = Path(folder) / path.name
    if not alt.exists():
        raise FileNotFoundError(f"steering vector {path} not found (nor {alt}); re-run `make steer`")
    return str(alt)


@dataclass(frozen=True)
class GateSpec:
    """``steer-gated``'s gate (:mod:`bench.steer.gate`): the rows whose prompt-end read-out at
    hidden-state index ``layer`` projects below ``threshold`` on the gate direction read as not harmful.
    With an ablation spec those rows alone are ablated; with an addition spec (CAST) the rows at or
    above the threshold get the spec's ``alpha`` times the direction and the rows below get
    ``alpha_below`` times it (negative: steered away from refusing). ``header``: the chat template's
    assistant-header token ids (where a prompt ends)."""

    layer: int
    threshold: float
    header: tuple[int, ...] = ()
    vector_path: str | None = None
    alpha_below: float | None = None  # addition specs only
    vector: Any = field(default=None, compare=False, repr=False)  # in-memory tensor (tests); never written

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "steering.gate") -> GateSpec:
        if not isinstance(d, Mapping):
            raise SpecError(f"{where}: must be an object, got {type(d).__name__}")
        _check_keys(where, d, GATE_KEYS + ("vector",))
        for k in ("layer", "threshold"):
            if k not in d:
                raise SpecError(f"{where}: missing {k}")
        header = d.get("header") or []
        if not isinstance(header, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, int) for t in header):
            raise SpecError(f"{where}: header must be a list of token ids, got {header!r}")
        gate = cls(layer=_int(where, "layer", d["layer"], optional=False),
                   threshold=_number(where, "threshold", d["threshold"], optional=False),
                   header=tuple(header), vector_path=_path(where, "vector_path", d.get("vector_path")),
                   alpha_below=_number(where, "alpha_below", d.get("alpha_below")), vector=d.get("vector"))
        if gate.layer < 0:
            raise SpecError(f"{where}: layer must be >= 0, got {gate.layer}")
        if gate.vector_path is None and gate.vector is None:
            raise SpecError(f"{where}: needs vector_path (or an in-memory vector)")
        return gate

    def to_dict(self) -> dict:
        out = {"layer": self.layer, "threshold": self.threshold, "header": list(self.header),
               "vector_path": self.vector_path}
        if self.alpha_below is not None:  # absent from ablation gates, so their records round-trip unchanged
            out["alpha_below"] = self.alpha_below
        return out


@dataclass(frozen=True)
class SteeringSpec:
    """How a steered variant steers its policy (:func:`bench.steer.hooks.steering` applies it).

    - ``mode``: ``"ablate"`` (project the direction out at every residual write) or ``"add"`` (add
      ``alpha`` times the direction at one residual point);
    - ``layer``: hidden-state index the direction was selected at; for ``add`` also where it is added
      (0 = embeddings' output, i = output of block i-1); ablation acts on every layer regardless;
    - ``position``: prompt position the direction was read at (negative offset, -1 = last token);
    - ``alpha``: the addition's scale (``add`` only; ``None`` for ablation);
    - ``vector_path``: the direction file (:func:`bench.steer.hooks.save_vector`), or ``vector`` in memory;
    - ``gate``: a :class:`GateSpec` for ``steer-gated`` (ablation where the prompt reads as not harmful,
      or an addition with one scale on each side of the gate);
    - ``policy_variant`` / ``model_dir``: the steered policy (record artifacts ``base_variant`` and
      ``model_dir``; not part of :meth:`to_dict`).
    """

    mode: str
    layer: int | None = None
    position: int | None = None
    alpha: float | None = None
    vector_path: str | None = None
    gate: GateSpec | None = None
    vector: Any = field(default=None, compare=False, repr=False)  # in-memory tensor (tests); never written
    policy_variant: str | None = None
    model_dir: str | None = None

    def __post_init__(self) -> None:
        where = "steering"
        if self.mode not in MODES:
            raise SpecError(f"{where}: mode must be one of {MODES}, got {self.mode!r}")
        _int(where, "layer", self.layer)
        _int(where, "position", self.position)
        _number(where, "alpha", self.alpha)
        if self.vector_path is None and self.vector is None:
            raise SpecError(f"{where}: needs vector_path (or an in-memory vector)")
        if self.gate is not None and not isinstance(self.gate, GateSpec):
            raise SpecError(f"{where}: gate must be a GateSpec, got {type(self.gate).__name__}")
        if self.gate is not None and (self.gate.alpha_below is None) != (self.mode == "ablate"):
            raise SpecError(f"{where}: a gate has alpha_below exactly when the mode is 'add'")
        if self.mode == "add":
            if self.layer is None:
                raise SpecError(f"{where}: mode 'add' needs a layer (hidden-state index: 0 = embeddings, "
                                "i = output of block i-1)")
            if self.layer < 0:
                raise SpecError(f"{where}: layer must be >= 0, got {self.layer}")
            if self.alpha is None:
                raise SpecError(f"{where}: mode 'add' needs alpha")

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_dict(cls, d: Mapping, policy_variant: str | None = None, model_dir: str | None = None,
                  where: str = "steering") -> SteeringSpec:
        """A spec dict as in ``artifacts["steering"]`` (``"vector"`` may hold an in-memory tensor)."""
        if isinstance(d, SteeringSpec):
            return d
        if not isinstance(d, Mapping):
            raise SpecError(f"{where}: must be an object, got {type(d).__name__}")
        _check_keys(where, d, SPEC_KEYS + ("gate", "vector"))
        if "mode" not in d:
            raise SpecError(f"{where}: missing mode (one of {MODES})")
        gate = d.get("gate")
        try:
            return cls(mode=d["mode"], layer=d.get("layer"), position=d.get("position"), alpha=d.get("alpha"),
                       vector_path=_path(where, "vector_path", d.get("vector_path")),
                       gate=GateSpec.from_dict(gate, f"{where}.gate") if gate else None, vector=d.get("vector"),
                       policy_variant=policy_variant, model_dir=model_dir)
        except SpecError as e:
            raise SpecError(str(e).replace("steering:", f"{where}:", 1)) from None

    @classmethod
    def from_record(cls, record: Mapping) -> SteeringSpec:
        """The spec of a steer record (``artifacts["steering"]``), with its steered policy
        (``artifacts["base_variant"]``, ``artifacts["model_dir"]``). Paths are kept as recorded
        (see :meth:`located`)."""
        arts = record.get("artifacts") or {}
        where = f"record of variant {record.get('variant')!r}: artifacts.steering"
        d = arts.get("steering")
        if not d:
            raise SpecError(f"record of variant {record.get('variant')!r} has no artifacts.steering")
        return cls.from_dict(d, policy_variant=arts.get(POLICY_KEY), model_dir=arts.get("model_dir"), where=where)

    # ------------------------------------------------------------------ writing

    def to_dict(self) -> dict:
        """``artifacts["steering"]`` exactly as records hold it (no in-memory vectors, no policy)."""
        out = {"mode": self.mode, "layer": self.layer, "position": self.position, "alpha": self.alpha,
               "vector_path": self.vector_path}
        if self.gate is not None:
            out["gate"] = self.gate.to_dict()
        return out

    def to_artifacts(self) -> dict:
        """The record artifacts this spec owns: the steered policy and ``steering``."""
        return {POLICY_KEY: self.policy_variant, "model_dir": self.model_dir, "steering": self.to_dict()}

    # ------------------------------------------------------------------ properties

    @property
    def gated(self) -> bool:
        return self.gate is not None

    @property
    def needs_whole_sequences(self) -> bool:
        """Each prompt and its response must go through one forward pass (no prefix KV cache): a gated
        spec reads the prompt to decide its steering, so cached prefixes cannot be continued."""
        return self.gated

    def located(self, folder: str | Path) -> SteeringSpec:
        """The same spec with every vector file found: the recorded path, or the same file name in
        ``folder`` (the record's run dir) when runs moved. Raises FileNotFoundError otherwise."""
        gate = self.gate
        if gate is not None and gate.vector is None:
            gate = replace(gate, vector_path=_locate(gate.vector_path, Path(folder)))
        path = self.vector_path if self.vector is not None else _locate(self.vector_path, Path(folder))
        return replace(self, vector_path=path, gate=gate)
