"""Helpfulness through lm-evaluation-harness: the project's own tasks via ``include_path``.

    bench eval --profile default            # runs the profile's ``eval.lm_eval_tasks`` per variant
    lm_eval --model hf --model_args pretrained=<dir> --include_path tasks/helpfulness --tasks helpful_mc

``tasks/helpfulness/*.yaml`` are declarative lm-eval tasks (versioned in ``metadata.version``) over
JSONL files the project authored (``tasks/helpfulness/data/``; see the README there):

- ``helpful_mc``: 4-way multiple choice, scored by log-likelihood (``acc``, ``acc_norm``);
- ``helpful_gen``: short-answer greedy generation, exact match against accepted answers.

The YAMLs name their data by a path relative to the repository root, which is what ``lm_eval`` run
from the root needs. ``datasets`` resolves relative ``data_files`` against the working directory,
so :func:`materialise_tasks` writes copies with absolute paths into a temporary folder and that
folder is the ``include_path``: the battery works from any working directory.

The model is handed to lm-eval as an instantiated ``HFLM`` built from the already loaded model and
tokenizer (one load per variant; a steered variant is scored inside its steering context, which is
what lm-eval's ``steered`` adapter would do). A *gated* steered variant (``steer-gated``) is not: its
gate was fitted at the end of the chat template's assistant header, which lm-eval's untemplated
requests do not have, so inside the gated hooks it would read each request's last token (for a
multiple-choice request, the end of the choice). Its model is handed over unsteered, as
:class:`bench.eval.lm_eval_gate.GatedHFLM`, which decides the gate once per document, on the
document's context formatted as generation formats a prompt, and scores the document's requests
under plain ablation or unsteered (``gate=`` of :func:`run_lm_eval`; per-task counts of ablated and
kept documents in the record). The requests themselves stay untemplated for every variant
(docs/experiments.md, ``lm-eval-chat-template``). Task names that are not in ``tasks/helpfulness``
(standard tasks of paper-scale profiles) are looked up in lm-eval's own task index as well.

Rates (``acc``, ``acc_norm``, ``exact_match``) are turned into the suite's metric format with a
Wilson interval on ``n`` = the number of evaluated documents; other metrics use lm-eval's stderr.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

import yaml

from bench.config import REPO_ROOT
from bench.stats import Z95, rate_metric

TASKS_DIR = REPO_ROOT / "tasks" / "helpfulness"
# lm-eval metrics that are a mean of 0/1 scores: reported as rates with a Wilson interval.
RATE_METRICS = ("acc", "acc_norm", "exact_match", "f1_binary")
# How a gated variant's lm-eval decides its gate (in its eval record's hash): per document, on the context
# as the chat user message, at the assistant header's end (bench.eval.lm_eval_gate).
LM_EVAL_GATE = "per-document chat read-out v1"


def local_tasks(tasks_dir: Path = TASKS_DIR) -> dict[str, Path]:
    """``{task name: yaml path}`` for the project's own lm-eval tasks."""
    out = {}
    for path in sorted(tasks_dir.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg, dict) and "task" in cfg:
            out[str(cfg["task"])] = path
    return out


def _data_files(cfg: dict) -> dict:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        return {"train": files}
    return dict(files or {})


def _resolve(path: str, yaml_dir: Path) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (REPO_ROOT, yaml_dir):
        if (base / p).exists():
            return (base / p).resolve()
    return (REPO_ROOT / p).resolve()


def task_fingerprint(names: list[str], tasks_dir: Path = TASKS_DIR) -> dict[str, dict]:
    """sha256 of each local task's YAML and data files, and its declared version (goes into the
    eval record and its hash, so editing a task re-scores). Non-local tasks: lm-eval's version."""
    local = local_tasks(tasks_dir)
    out: dict[str, dict] = {}
    for name in sorted(names):
        if name not in local:
            out[name] = {"source": "lm-eval builtin"}
            continue
        path = local[name]
        cfg = yaml.safe_load(path.read_text())
        files = {k: _resolve(v, path.parent) for k, v in sorted(_data_files(cfg).items())}
        out[name] = {
            "source": str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
            "version": (cfg.get("metadata") or {}).get("version"),
            "yaml_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "data_sha256": {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()},
        }
    return out


def materialise_tasks(dest: Path, names: list[str], tasks_dir: Path = TASKS_DIR) -> list[str]:
    """Write the named local tasks into ``dest`` with absolute ``data_files``; returns the names
    that are local (the others must come from lm-eval's built-in index)."""
    local = local_tasks(tasks_dir)
    written = []
    for name in names:
        if name not in local:
            continue
        path = local[name]
        cfg = yaml.safe_load(path.read_text())
        files = _data_files(cfg)
        if files:
            for split, f in files.items():
                p = _resolve(f, path.parent)
                if not p.exists():
                    raise FileNotFoundError(f"{path}: data file {f} not found (resolved to {p})")
                files[split] = str(p)
            cfg.setdefault("dataset_kwargs", {})["data_files"] = files
        (dest / path.name).write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        written.append(name)
    return written


def _metric(name: str, value: float, stderr, n: int) -> dict:
    base = name.split(",")[0]
    if base in RATE_METRICS and n and 0.0 <= value <= 1.0:
        m = rate_metric(round(value * n), n)
        m["value"] = float(value)
        return m
    if isinstance(stderr, (int, float)) and math.isfinite(stderr):
        return {"value": float(value), "ci_low": value - Z95 * stderr, "ci_high": value + Z95 * stderr, "n": n}
    return {"value": float(value), "ci_low": None, "ci_high": None, "n": n}


def results_to_metrics(results: dict) -> dict[str, dict]:
    """lm-eval's ``results`` dict -> ``{"lm_eval/<task>/<metric>": {value, ci_low, ci_high, n}}``.
    The filter name is dropped when it is lm-eval's ``none`` or the task has one filter."""
    out: dict[str, dict] = {}
    n_samples = results.get("n-samples") or {}
    for task, res in sorted((results.get("results") or {}).items()):
        n = int((n_samples.get(task) or {}).get("effective") or 0)
        keys = [k for k in res if "," in k and "_stderr," not in k]
        filters = {k.split(",", 1)[1] for k in keys}
        for key in sorted(keys):
            metric, filt = key.split(",", 1)
            value = res[key]
            if not isinstance(value, (int, float)):
                continue
            stderr = res.get(f"{metric}_stderr,{filt}")
            name = f"lm_eval/{task}/{metric}" if (filt == "none" or len(filters) == 1) else f"lm_eval/{task}/{metric}@{filt}"
            out[name] = _metric(metric, float(value), stderr, n)
    return out


def run_lm_eval(model, tok, tasks: list[str], limit: int = 0, batch_size: int = 8, max_length: int | None = None,
                seed: int = 0, gate=None, system_prompt: str | None = None) -> tuple[dict[str, dict], dict]:
    """Score a loaded causal LM on lm-eval ``tasks``. Returns (metrics, info for the record).

    ``gate``: a gated :class:`~bench.steer.spec.SteeringSpec` (steer-gated's) to apply per document
    (:class:`bench.eval.lm_eval_gate.GatedHFLM`; ``model`` must then be unsteered, and ``system_prompt``
    is the one generation formats prompts with); ``info["gate"]`` then counts, per task, the documents
    ablated and kept."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        return {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-lm-eval-") as tmp:
        local = materialise_tasks(Path(tmp), tasks)
        builtin = [t for t in tasks if t not in local]
        tm = TaskManager(include_path=tmp, include_defaults=bool(builtin))
        kwargs = dict(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length,
                      device=str(model.device))
        if gate is None:
            lm = HFLM(**kwargs)
        else:
            from bench.eval.lm_eval_gate import GatedHFLM

            lm = GatedHFLM(spec=gate, system_prompt=system_prompt, gate_batch_size=batch_size, **kwargs)
        res = simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit or None,
                              log_samples=False, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0,
                              verbosity="WARNING")
    if res is None:  # non-zero rank in a distributed run
        return {}, {}
    info = {"versions": {k: v for k, v in sorted((res.get("versions") or {}).items())},
            "n_samples": {k: v for k, v in sorted((res.get("n-samples") or {}).items())},
            "limit": limit or None, "tasks": task_fingerprint(list(tasks))}
    if gate is not None:
        info["gate"] = lm.gate_counts()
    return results_to_metrics(res), info
