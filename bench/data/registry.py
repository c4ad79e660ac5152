"""Dataset registry: names (with aliases) -> sources; ``load`` returns validated rows + identity.

    from bench.data import load
    ds = load("embedded-pairs", "train", cfg.data)      # ds.rows, ds.identity
    run.datasets["preferences/train"] = ds.identity      # into the stage's record

A *source* (one module per dataset in ``bench/data/``) says where rows come from (a hub id at a
pinned revision, or the project's files) and how one upstream row becomes a row of one of the
schemas in :mod:`bench.data.schema`. ``load`` then applies the same rules to every source:

- **Local override.** ``data.local_files[name] = path`` reads a local JSONL (``.jsonl``,
  ``.jsonl.gz``, a JSON array in ``.json``), CSV or parquet file in the upstream schema instead of
  the hub (offline runs, tests). A path containing ``{split}`` is one file per upstream split
  (``data/pku/{split}.jsonl``); a path without it is one file holding all rows, and the splits are
  then carved from it by prompt hash (below).
- **Splits** ``train``, ``validation``, ``test`` (and ``all``: every row, no split). Where the
  upstream has all three (the embedded data) they are used as they are; where it has train and test
  only (PKU-SafeRLHF, hh-rlhf), validation is the 5% of upstream-train prompts whose hash falls in
  the first bucket; where it has one split (AdvBench, HarmBench, XSTest, AlpacaEval) or a single
  local file is given, the three splits are prompt-hash buckets with the source's fractions. Hash
  buckets are deterministic and disjoint by prompt by construction.
- **Bad rows.** Every row is validated; with ``on_invalid: error`` the first bad row raises
  :class:`DataError` naming file, line and field; with ``skip`` bad rows are dropped and counted
  in ``identity["skipped"]`` (by field, with the first messages), never silently. (A row that cannot
  be parsed has no prompt to hash, so in a hash-split file it is reported in every split.)
- **Duplicates across splits.** A train row whose prompt also occurs in validation or test, or a
  validation row whose prompt occurs in test, is a bad row (``field 'prompt'``): the held-out split
  keeps it, the earlier split loses it (under ``skip``).
- **Caps.** ``max_train`` caps the train split, ``max_eval`` validation and test: the first N valid
  rows, so a capped run is a deterministic prefix of the full one.
- **Identity.** hub id + config + revision, or file paths + content sha256; split rule, row counts,
  skipped and filtered counts, and a sha256 of the returned rows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

from bench.config import REPO_ROOT, DataSection
from bench.data.schema import VALIDATORS, DataError, prompt_key

SPLITS = ("train", "validation", "test", "all")
ROLES = ("preferences", "harmful", "benign", "borderline", "helpfulness")
ROLE_SCHEMAS = {
    "preferences": ("pku", "chosen_rejected"),
    "harmful": ("labelled_prompt",),
    "benign": ("labelled_prompt",),
    "borderline": ("labelled_prompt",),
    "helpfulness": ("helpfulness",),
}
# Validation carved out of upstream train (sources with train + test only).
VALIDATION_CARVE = 0.05
SPLIT_SALT = "bench-split-v1"
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class LoadedDataset:
    """Validated rows of one split and the identity that goes into run records."""

    rows: list[dict]
    identity: dict
    schema: str
    # Where each row came from (``<file>:<line>``, ``<file>:item <n>``, ...), parallel to ``rows``:
    # kept beside the rows, not in them, so ``identity.rows_sha256`` hashes the data only. Checks made
    # after loading (the training stages' token lengths) name the row's file and line with it.
    wheres: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)


class Source:
    """One registered dataset. Subclasses set the class attributes and may override
    :meth:`hub_rows` (how the hub is read) and :meth:`convert` (upstream row -> schema row)."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    schema: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hub_id: ClassVar[str | None] = None
    hub_config: ClassVar[str | None] = None
    # Pinned hub revision. PINNED_VERIFIED says whether the sha was checked against the hub; where
    # it is False the pin is a placeholder to be replaced by a commit sha before a paper-scale run.
    revision: str | None = None
    revision_verified: ClassVar[bool] = False
    upstream_splits: ClassVar[tuple[str, ...]] = ("train",)
    split_policy: ClassVar[Literal["upstream", "carve_validation", "hash"]] = "hash"
    # train / validation / test fractions for prompt-hash splits
    hash_fractions: ClassVar[tuple[float, float, float]] = (0.3, 0.2, 0.5)

    # ---- where rows come from
    def default_local(self) -> str | None:
        """A path (may contain ``{split}``) used when no ``local_files`` override is given;
        None means the hub."""
        return None

    def hub_rows(self, upstream_split: str) -> list[dict]:
        """Raw rows of one upstream split from the hub, at the pinned revision."""
        import datasets  # slow import; only on the hub path

        ds = datasets.load_dataset(self.hub_id, self.hub_config, split=upstream_split, revision=self.revision)
        return to_rows(ds)

    def hub_where(self, upstream_split: str) -> str:
        cfg = f"/{self.hub_config}" if self.hub_config else ""
        return f"hub:{self.hub_id}{cfg}@{self.revision}[{upstream_split}]"

    # ---- what a row becomes
    def convert(self, raw: dict, where: str) -> dict | None:
        """Validated schema row, or None for a row this source leaves out by design (counted in
        ``identity['filtered']``). Raise DataError for a bad row."""
        return VALIDATORS[self.schema](raw, where)


_REGISTRY: dict[str, type[Source]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator: register a :class:`Source` under ``name`` and ``aliases`` (case-insensitive)."""

    def deco(cls: type[Source]) -> type[Source]:
        for key in (name, *aliases):
            k = key.lower()
            if k in _ALIASES and _ALIASES[k] != name:
                raise ValueError(f"dataset name '{key}' already registered for '{_ALIASES[k]}'")
            _ALIASES[k] = name
        cls.name = name
        cls.aliases = tuple(aliases)
        _REGISTRY[name] = cls
        return cls

    return deco


def known_names() -> list[str]:
    return sorted(_REGISTRY)


def get_source(name: str) -> Source:
    """The source registered as ``name`` (or an alias). ``name@rev`` overrides the pinned hub
    revision (e.g. ``pku-saferlhf@v0``). Unknown names fail with the list of known names."""
    base, _, rev = name.partition("@")
    canon = _ALIASES.get(base.strip().lower())
    if canon is None:
        listing = "; ".join(
            f"{n} (aliases: {', '.join(_REGISTRY[n].aliases)})" if _REGISTRY[n].aliases else n for n in known_names())
        raise DataError("data registry", None, f"unknown dataset '{name}'. Known datasets: {listing}")
    src = _REGISTRY[canon]()
    if rev:
        if src.hub_id is None:
            raise DataError("data registry", None, f"dataset '{canon}' is not on the hub; '@{rev}' makes no sense")
        src.revision = rev
    return src


# --------------------------------------------------------------------------- reading


def to_rows(ds: Any) -> list[dict]:
    """A ``datasets.Dataset`` (or any iterable of mappings) -> list of plain dicts."""
    if hasattr(ds, "to_list"):
        return ds.to_list()
    return [dict(r) for r in ds]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_row)`` for a local file; ``raw_row`` is a :class:`DataError` for a line
    that cannot be parsed (so ``on_invalid: skip`` can count it)."""
    shown = _display(path)
    if not path.exists():
        raise DataError(shown, None, "file not found (check data.local_files in the profile)")
    name = path.name.lower()
    if name.endswith(".csv"):
        yield from _read_csv(path, shown)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{shown}:{i}", row
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{shown}:{e.lineno}", None, f"malformed JSON: {e.msg} (column {e.colno})") from None
            for i, row in enumerate(items, start=1):
                yield f"{shown}:item {i}", row
            return
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue  # a blank line holds no row
            where = f"{shown}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(where, None, f"malformed JSON line: {e.msg} (column {e.colno})")
                continue
            if not isinstance(row, dict):
                yield where, DataError(where, None, f"expected a JSON object per line, got {type(row).__name__}")
                continue
            yield where, row
    else:
        raise DataError(shown, None, "unsupported file type (use .jsonl, .jsonl.gz, .json, .csv or .parquet)")


def _read_csv(path: Path, shown: str) -> Iterator[tuple[str, Any]]:
    # newline="" lets the csv module handle CRLF and line breaks inside quoted cells; utf-8-sig
    # drops a BOM. The line reported is the (1-based) line where the record starts.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DataError(f"{shown}:1", None, "empty CSV file (no header)")
        prev_end = reader.line_num
        for row in reader:
            where = f"{shown}:{prev_end + 1}"
            prev_end = reader.line_num
            if None in row:
                yield where, DataError(where, None, f"{len(row[None])} more cell(s) than the header's "
                                                    f"{len(reader.fieldnames)} columns")
                continue
            # line breaks inside quoted cells keep the file's CRLF; normalise them to \n
            yield where, {k: v.replace("\r\n", "\n") if isinstance(v, str) else v for k, v in row.items()}


# --------------------------------------------------------------------------- splitting


def hash_unit(key: str) -> float:
    """Deterministic number in [0, 1) from a prompt key (same prompt -> same bucket)."""
    return int(hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).hexdigest()[:13], 16) / 16**13


def hash_split(key: str, fractions: tuple[float, float, float]) -> str:
    u = hash_unit(key)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


@dataclass
class _Part:
    """Raw rows of one upstream split (or file) with the filter that selects this split's rows."""

    upstream: str
    rows: list[tuple[str, Any]]
    files: list[dict] = field(default_factory=list)


def _upstream_rows(src: Source, upstream: str, local: str | None) -> _Part:
    if local is None:
        raw = src.hub_rows(upstream)
        base = src.hub_where(upstream)
        return _Part(upstream, [(f"{base}:{i}", r) for i, r in enumerate(raw, start=1)])
    path = Path(local.replace("{split}", upstream))
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    rows = list(read_file(path))
    return _Part(upstream, rows, [{"path": _display(path), "sha256": sha256_file(path)}])


def _local_path(src: Source, cfg_data: DataSection) -> tuple[str | None, str]:
    for key, path in (cfg_data.local_files or {}).items():
        try:
            if get_source(key).name == src.name:
                return path, "local"
        except DataError:
            continue
    default = src.default_local()
    if default is not None:
        return default, "embedded"
    return None, "hub"


def _plan(src: Source, split: str, local: str | None) -> tuple[list[str], Callable[[str, str], bool], str]:
    """Upstream splits to read, a predicate (upstream split, prompt key) -> row belongs to
    ``split``, and a description of the rule for the identity."""
    single_file = local is not None and "{split}" not in local
    if split == "all":
        ups = ["(file)"] if single_file else list(src.upstream_splits)
        return ups, lambda u, k: True, "all rows"
    fr = src.hash_fractions
    policy = "hash" if single_file else src.split_policy
    if policy == "hash":
        ups = ["(file)"] if single_file else list(src.upstream_splits)
        rule = f"prompt-hash buckets train/validation/test = {fr[0]}/{fr[1]}/{round(1 - fr[0] - fr[1], 6)}"
        return ups, (lambda u, k: hash_split(k, fr) == split), rule
    if policy == "upstream":
        return [split], lambda u, k: True, f"upstream split '{split}'"
    # carve_validation
    if split == "test":
        return ["test"], lambda u, k: True, "upstream split 'test'"
    if split == "validation":
        return ["train"], (lambda u, k: hash_unit(k) < VALIDATION_CARVE), \
            f"upstream 'train' prompts with hash < {VALIDATION_CARVE}"
    return ["train"], (lambda u, k: hash_unit(k) >= VALIDATION_CARVE), \
        f"upstream 'train' prompts with hash >= {VALIDATION_CARVE}"


def _read_split(src: Source, split: str, local: str | None) -> tuple[list[tuple[str, Any]], list[dict], str]:
    ups, keep, rule = _plan(src, split, local)
    out: list[tuple[str, Any]] = []
    files: list[dict] = []
    for up in ups:
        part = _upstream_rows(src, "" if up == "(file)" else up, local)
        files.extend(f for f in part.files if f not in files)
        for where, raw in part.rows:
            if isinstance(raw, DataError):
                out.append((where, raw))  # parse errors belong to every split of the file
                continue
            key = _raw_key(src, raw)
            if key is None or keep(up, key):
                out.append((where, raw))
    return out, files, rule


def _raw_key(src: Source, raw: dict) -> str | None:
    """Prompt key of a raw row for splitting; None when it cannot be converted (it is then
    reported by validation)."""
    try:
        row = src.convert(raw, "(split)")
    except DataError:
        return None
    if row is None:
        return None
    return prompt_key(row)


def _later_splits(src: Source, split: str, local: str | None) -> list[str]:
    """Held-out splits whose prompts the given split must not contain."""
    single_file = local is not None and "{split}" not in local
    if split == "all" or single_file or src.split_policy == "hash":
        return []  # disjoint by construction
    if src.split_policy == "carve_validation":
        return ["test"] if split in ("train", "validation") else []
    order = list(src.upstream_splits)
    if split not in order:
        return []
    return order[order.index(split) + 1:]


# --------------------------------------------------------------------------- load


def load(name: str, split: str, cfg_data: DataSection) -> LoadedDataset:
    """Validated rows of ``split`` of dataset ``name`` and their identity (see module docstring)."""
    if split not in SPLITS:
        raise DataError(f"dataset '{name}'", "split", f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    src = get_source(name)
    local, origin = _local_path(src, cfg_data)
    raw_rows, files, rule = _read_split(src, split, local)

    held: dict[str, tuple[str, str]] = {}
    for other in _later_splits(src, split, local):
        other_rows, _, _ = _read_split(src, other, local)
        for where, raw in other_rows:
            if isinstance(raw, DataError):
                continue
            key = _raw_key(src, raw)
            if key is not None:
                held.setdefault(key, (other, where))

    rows: list[dict] = []
    wheres: list[str] = []
    skipped: dict[str, int] = {}
    examples: list[str] = []
    filtered = 0
    for where, raw in raw_rows:
        try:
            if isinstance(raw, DataError):
                raise raw
            row = src.convert(raw, where)
            if row is None:
                filtered += 1
                continue
            key = prompt_key(row)
            if key in held:
                other, other_where = held[key]
                raise DataError(where, "prompt", f"duplicate of a prompt in split '{other}' ({other_where})")
        except DataError as e:
            if cfg_data.on_invalid == "error":
                raise
            skipped[e.field or "(row)"] = skipped.get(e.field or "(row)", 0) + 1
            if len(examples) < 5:
                examples.append(str(e))
            continue
        rows.append(row)
        wheres.append(where)

    n_valid = len(rows)
    cap = cfg_data.max_train if split == "train" else cfg_data.max_eval if split in ("validation", "test") else 0
    if cap:
        rows, wheres = rows[:cap], wheres[:cap]
    identity: dict[str, Any] = {
        "name": src.name,
        "requested": name,
        "split": split,
        "schema": src.schema,
        "origin": origin,
        "split_rule": rule,
        "n": len(rows),
        "n_valid": n_valid,
        "skipped": sum(skipped.values()),
        "skipped_by_field": skipped,
        "skipped_examples": examples,
        "filtered": filtered,
        "cap": cap,
        "on_invalid": cfg_data.on_invalid,
        "rows_sha256": hashlib.sha256(
            json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest(),
    }
    if origin == "hub":
        identity.update(hub_id=src.hub_id, hub_config=src.hub_config, revision=src.revision,
                        revision_is_commit=bool(src.revision and _SHA_RE.match(src.revision)),
                        revision_verified=src.revision_verified)
    else:
        identity["files"] = files
    return LoadedDataset(rows=rows, identity=identity, schema=src.schema, wheres=wheres)


def load_role(cfg_data: DataSection, role: str, split: str) -> LoadedDataset:
    """Load the dataset a profile names for ``role`` (``preferences``, ``harmful``, ``benign``,
    ``borderline``, ``helpfulness``), checking that its schema fits the role."""
    if role not in ROLES:
        raise DataError("profile data section", role, f"unknown role (known: {', '.join(ROLES)})")
    name = getattr(cfg_data, role)
    src = get_source(name)
    if src.schema not in ROLE_SCHEMAS[role]:
        raise DataError("profile data section", role,
                        f"dataset '{name}' has schema '{src.schema}', role '{role}' needs {' or '.join(ROLE_SCHEMAS[role])}")
    return load(name, split, cfg_data)


def select_label(rows: list[dict], *labels: str) -> list[dict]:
    """Labelled prompts with one of ``labels`` (e.g. the safe borderline prompts of XSTest)."""
    return [r for r in rows if r.get("label") in labels]
