"""Chat formatting: the one place where prompts become model input text.

Every stage (training pairs, refusal generations, steering activations, lm-eval requests) builds
prompts here, so the system prompt and the generation prompt are identical wherever a model is
trained or scored. ``system_prompt=None`` keeps the chat template's own default.
"""

from __future__ import annotations


def messages(user: str, system_prompt: str | None = None, history: list[dict] | None = None) -> list[dict]:
    """Chat messages for one user turn, optionally after earlier turns (multi-turn hh-rlhf)."""
    msgs: list[dict] = []
    if system_prompt is not None:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.extend(history or [])
    msgs.append({"role": "user", "content": user})
    return msgs


def format_prompt(tokenizer, user: str, system_prompt: str | None = None, history: list[dict] | None = None) -> str:
    """Prompt text ending where the assistant's answer starts (the generation prompt)."""
    return tokenizer.apply_chat_template(
        messages(user, system_prompt, history), tokenize=False, add_generation_prompt=True)


def format_response(tokenizer, response: str) -> str:
    """Response text as the template closes an assistant turn (answer + end-of-turn token)."""
    eot = tokenizer.eos_token or ""
    return response + eot
