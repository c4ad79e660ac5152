"""Reference log-probabilities of DPO pairs, computed once and shared by every variant that needs them.

With ``precompute_ref_log_probs`` TRL's DPOTrainer runs the frozen reference over every training pair
before the first step (a full forward pass over the data: ~48 s of a ~180 s default-profile variant on
2 CPU cores). The DPO variants of a profile mostly train on the *same* pairs from the *same* starting
policy (dpo, ipo, dpo-js and dpo-sft differ only in the loss), so their reference log-probs are the
same numbers; recomputing them per variant is pure waste.

:func:`shared_ref_trainer` returns a DPOTrainer subclass whose precompute first looks in a cache folder,
keyed by everything the numbers depend on:

- the tokenized dataset's rows (prompt, chosen and rejected token ids: a change in pairs, chat template
  or truncation changes the key);
- TRL's own hash of the reference weights (``_precompute_model_hash``: the policy's state dict, or the
  separate reference model's);
- the settings of the forward pass: batch size (padding), ``ld_alpha``, ``max_length``, dtype.

A miss computes through TRL and writes the two columns atomically (a kill mid-write leaves no entry);
a hit attaches the stored columns with TRL's own feature types, so training sees exactly the values a
fresh precompute would give (tested: equal losses with and without the cache).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
KEY_VERSION = 1  # bump when what the key covers changes


def cache_key(rows: dict, model_hash: str, settings: dict) -> str:
    """sha256 of the tokenized rows (column -> values), the reference weights' hash and the forward
    settings; order of columns and settings does not matter."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": KEY_VERSION, "model": model_hash, "settings": settings}, sort_keys=True).encode())
    for name in sorted(rows):
        h.update(name.encode())
        h.update(json.dumps(rows[name], separators=(",", ":")).encode())
    return h.hexdigest()[:32]


def _write(path: Path, columns: dict, features: dict) -> None:
    import torch

    from bench.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"columns": {k: torch.tensor(list(v), dtype=torch.float64) for k, v in columns.items()},
                "features": features}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _read(path: Path) -> tuple[dict, dict] | None:
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or foreign file: recompute (the cache is only ever an optimisation)
        return None
    return blob["columns"], blob["features"]


def _shared_arrow_cache(dataset, cache_dir: Path):
    """Under several ranks, point TRL's precompute file at a folder every rank sees. TRL's rank 0
    writes the columns to ``dataset._get_cache_file_path(...)`` and every rank then reads that file;
    for an in-memory dataset (``Dataset.from_list``, as every recipe builds) that path is in a
    per-process temporary folder, so rank 1 failed with ``FileNotFoundError: .../hf_datasets-*/
    cache-*.arrow``. One process keeps TRL's own temporary file."""
    from bench.distributed import world_size

    if world_size() > 1:
        folder = cache_dir / "trl-arrow"
        folder.mkdir(parents=True, exist_ok=True)
        dataset._get_cache_file_path = lambda fingerprint: str(folder / f"cache-{fingerprint}.arrow")
    return dataset


def shared_ref_trainer(cache_dir: Path, log=None):
    """A ``trl.DPOTrainer`` subclass whose reference precompute is cached in ``cache_dir``."""
    from datasets import Dataset, Features, Value, concatenate_datasets
    from trl import DPOTrainer

    cache_dir = Path(cache_dir)

    class SharedRefDPOTrainer(DPOTrainer):
        def _ref_key(self, dataset, batch_size: int) -> str:
            rows = dataset.remove_columns([c for c in COLUMNS if c in dataset.column_names]).to_dict()
            settings = {"batch_size": int(batch_size), "ld_alpha": getattr(self, "ld_alpha", None),
                        "max_length": self.args.max_length, "dtype": str(next(self.model.parameters()).dtype)}
            return cache_key(rows, self._precompute_model_hash, settings)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            from bench.distributed import broadcast_from_main, main_process_writes

            # Rank 0 decides hit or miss for every rank: a miss runs TRL's precompute, a collective.
            path = cache_dir / broadcast_from_main(f"{self._ref_key(dataset, batch_size)}.pt")
            found = _read(path) if path.exists() else None
            hit = broadcast_from_main(found is not None and len(next(iter(found[0].values()))) == len(dataset))
            if hit:
                if found is None:
                    raise RuntimeError(f"{path}: rank 0 read this reference cache but this rank cannot")
                columns, features = found
                extra = Dataset.from_dict({k: v.tolist() for k, v in columns.items()},
                                          features=Features({k: Value(features[k]) for k in COLUMNS}))
                if log is not None:
                    log.info("reference log-probs for %s: cached (%s)", name, path.name)
                return concatenate_datasets([dataset, extra], axis=1)
            out = super()._precompute_ref_logps(_shared_arrow_cache(dataset, cache_dir), name, batch_size)
            with main_process_writes() as main:  # rank 0 writes (atomically) while the others wait
                if main:
                    _write(path, {k: out[k] for k in COLUMNS}, {k: out.features[k].dtype for k in COLUMNS})
                    if log is not None:
                        log.info("reference log-probs for %s: computed, cached as %s", name, path.name)
            return out

    return SharedRefDPOTrainer
