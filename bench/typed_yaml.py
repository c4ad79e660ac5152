"""Strict typed YAML: plain dicts (as ``yaml.safe_load`` gives them) checked against annotated
dataclasses, and ``a.b.c=value`` overrides.

- :func:`build` turns a dict into a dataclass, field by field: an unknown key, a missing required
  key or a value of the wrong type is a :class:`ConfigError` naming the dotted key, where it came
  from and the expected type (``Literal``, unions, ``list``/``dict`` and nested dataclasses are
  checked recursively; fields with ``metadata={"internal": True}`` are not read from the dict).
- :func:`parse_override` / :func:`apply_overrides`: command-line overrides with dotted paths, values
  parsed as YAML scalars (``true``, ``3``, ``1e-4`` get their natural types and are then type-checked
  like the file's values).
- :func:`yaml_problem`: a PyYAML error on one line.

Nothing here knows the profile's sections; :mod:`bench.config` declares them and loads profiles.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A profile or override is invalid; the message names file, key and expected type."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against type ``tp``; build nested dataclasses. Raise ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build(tp, value, key, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: keep X's precise message (e.g. an unknown nested key)
            return coerce(value, options[0], key, where)
        for arg in options:
            try:
                return coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {coerce(k, kt, key, where): coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [coerce(v, it, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is float:
        # YAML reads 1e-4 as a string (PyYAML follows YAML 1.1); accept numeric strings for floats.
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise bad
        return value
    raise ConfigError(f"{where}: key '{key}' has an unsupported type {tp!r} (a bug in bench.config)")


def build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    """``cls(**raw)`` with every field type-checked (:func:`coerce`). ``prefix`` is the dotted key of
    ``raw`` in messages ("" at the top), ``where`` the file (and overrides) they name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key '{key}' (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = coerce(raw[name], hints[name], key, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{key}' ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # A section's own checks (__post_init__) may not know which section they belong to (the
        # TrainSection checks read the same for sft, reward, cost, dpo and ppo): qualify them as
        # "<file>: <section>: <message>", the form the ppo checks already use.
        msg = str(e)
        if prefix and not (msg == prefix or msg.startswith((f"{prefix}:", f"{prefix}."))):
            msg = f"{prefix}: {msg}"
        raise ConfigError(f"{where}: {msg}") from None


def yaml_problem(e: yaml.YAMLError) -> str:
    """A PyYAML error on one line (its str() spans several, with a caret picture of the input):
    the problem and where it is (1-based line and column, as PyYAML prints them)."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' must look like section.key=value")
    path, _, value = text.partition("=")
    parts = path.strip().split(".")
    if not all(parts):
        raise ConfigError(f"command line: override '{text}' has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: override '{text}': value is not valid YAML ({yaml_problem(e)})") from None
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with each ``a.b.c=value`` override set (missing sections are created)."""
    raw = json.loads(json.dumps(raw))  # deep copy; the file's dict stays untouched
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"command line: override '{text}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw
