"""Score models: the one class behind the reward model (RM) and the cost model (CM).

A score model is a causal-LM backbone with a scalar head on the last non-padding token: exactly
transformers' ``LlamaForSequenceClassification`` with ``num_labels=1`` (``...ForSequenceClassification``
for other architectures), so a saved RM or CM loads with plain
``AutoModelForSequenceClassification.from_pretrained`` and TRL's ``RewardTrainer`` trains it.

The backbone starts from the profile's policy (base or SFT). ``backbone_layers: N`` keeps only the
first N blocks: a scalar judgement of short responses needs far less depth than generation, and on
CPU this makes training and scoring several times faster. The kept blocks are the policy's own, so
the head reads features the policy computes too.

Scores are computed on exactly the text the policy sees and produces: ``bench.chat.format_prompt``
followed by the response and the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import chat
from bench.config import ModelSection, ScoreModelSection
from bench.models import ModelError, torch_dtype
from bench.precision import for_precision, generation_autocast
from bench.tensors import longest_first_batches, pad_right


def build_score_model(policy_dir: Path, section: ScoreModelSection, model_cfg: ModelSection, seed: int):
    """A fresh score model (random head, fixed seed) on the policy's (possibly truncated) backbone."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # The head reads the last non-pad token; with pad == EOS that would skip the end-of-turn
        # token, so a distinct pad (SmolLM2: <|endoftext|>) lets the head see the whole turn.
        tok.pad_token = tok.unk_token if tok.unk_token not in (None, tok.eos_token) else tok.eos_token
    config = AutoConfig.from_pretrained(policy_dir, num_labels=1, trust_remote_code=model_cfg.trust_remote_code)
    config.pad_token_id = tok.pad_token_id  # the head reads the last non-pad token
    n_layers = config.num_hidden_layers
    if section.backbone_layers:
        if section.backbone_layers > n_layers:
            raise ModelError(f"backbone_layers={section.backbone_layers} but the policy has {n_layers} layers")
        config.num_hidden_layers = section.backbone_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: section.backbone_layers]
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        policy_dir, config=config, dtype=torch_dtype(model_cfg.dtype), use_safetensors=True,
        attn_implementation=model_cfg.attn_implementation, trust_remote_code=model_cfg.trust_remote_code)
    return for_precision(model, model_cfg.precision), tok


def load_score_model(path: Path, model_cfg: ModelSection):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: no score model here (run the reward/cost stage: `make reward` / `make cost`)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch_dtype(model_cfg.dtype), use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code)
    model.eval()
    return for_precision(model, model_cfg.precision), tok


def encode(tok, prompt: str, response: str, system_prompt: str | None, history: list[dict] | None = None) -> list[int]:
    text = chat.format_prompt(tok, prompt, system_prompt, history) + chat.format_response(tok, response)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def score_texts(model, tok, prompts: list[str], responses: list[str], system_prompt: str | None,
                batch_size: int = 16, max_length: int = 512, histories: list[list[dict]] | None = None,
                desc: str = "score") -> list[float]:
    """Scalar scores of (prompt, response) pairs, in input order; responses longer than the room
    left by the prompt are cut (the prompt never is)."""
    ids = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq = encode(tok, p, r, system_prompt, histories[i] if histories else None)
        ids.append(seq[:max_length])
    out = [0.0] * len(ids)
    with generation_autocast(model):  # bf16 models: one cast of the weights per call, not per batch
        for idx in tqdm(longest_first_batches([len(x) for x in ids], batch_size), desc=desc, leave=False, disable=None):
            x, m = pad_right([ids[i] for i in idx], tok.pad_token_id)  # (B, L) right padded
            logits = model(input_ids=x.to(model.device), attention_mask=m.to(model.device)).logits  # (B, 1)
            for j, i in enumerate(idx):
                out[i] = float(logits[j, 0])
    return out
