"""Stage `base`: prepare the profile's base policy and record what it is.

    make base PROFILE=default     # == bench base --profile default

Builds (once) and verifies the plain HF folder (see bench.models), loads it with plain
transformers, and records its content hashes, parameter count and a greedy answer to a fixed
sanity question, so a broken conversion shows up in the record rather than in a later stage.
"""

from __future__ import annotations

from bench import chat
from bench.config import ProfileConfig
from bench.models import load_base, prepare_base
from bench.runs import is_done, stage_run
from bench.stats import scalar_metric

SANITY_QUESTION = "What is the capital of France?"
SECTIONS = ("profile", "model")


def greedy_answer(model, tok, question: str, system_prompt: str | None, max_new_tokens: int = 32) -> str:
    import torch

    text = chat.format_prompt(tok, question, system_prompt)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def config_hash(cfg: ProfileConfig) -> str:
    """The hash the base record carries."""
    return cfg.section_hash(*SECTIONS)


def run_base(cfg: ProfileConfig, force: bool = False) -> dict:
    chash = config_hash(cfg)
    folder, manifest = prepare_base(cfg)
    if not force and is_done(cfg, "base", chash):
        print(f"base: up to date ({folder})")
        return {"folder": str(folder)}
    with stage_run(cfg, variant="base", stage="base", sections=SECTIONS) as run:
        model, tok = load_base(cfg)
        answer = greedy_answer(model, tok, SANITY_QUESTION, cfg.model.system_prompt)
        run.log.info("sanity answer: %r", answer)
        run.metrics["param_count"] = scalar_metric(sum(p.numel() for p in model.parameters()))
        run.artifacts = {"model_dir": str(folder), "manifest": manifest}
        run.extra = {"sanity_question": SANITY_QUESTION, "sanity_answer": answer}
        print(f"base: {folder}\n  Q: {SANITY_QUESTION}\n  A: {answer}")
    return {"folder": str(folder), "answer": answer}
