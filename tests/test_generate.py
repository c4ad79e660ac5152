"""bench.eval.generate: ``generate_greedy`` (fastgen's exact loop inside) returns what the plain
``model.generate`` call on the same batches returns, in fp32 and in the project's bf16.

A random Llama with the smoke profile's tokenizer (SmolLM2's vocabulary and chat template), weights
at std 0.3 so that its greedy tokens follow the context; 7 prompts in batches of 3 (length-sorted,
left-padded); an end token that some rows emit and others never do. The expectation is
``generate_greedy`` with its decode step swapped back to ``model.generate`` (nothing hard-coded).

    nice .venv/bin/python -m pytest -q tests/test_generate.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.eval import generate as gen
from cast_count import weight_casts

PROMPTS = ["hi", "What is the capital of France?", "Tell me a story about a dragon and a knight, please.",
           "2+2?", "How do I bake bread at home without yeast?", "ok", "Name three colours."]
SETTINGS = gen.GenerationSettings(max_new_tokens=10, batch_size=3)


@pytest.fixture(scope="module")
def model_tok(smoke_base, one_thread):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smoke_base)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval(), tok


def _old_decode(model, input_ids, attention_mask, max_new_tokens, eos, pad_token_id, exact=True):
    """generate_greedy's decode step before fastgen: the plain generate call."""
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_token_id, use_cache=True)
    return out[:, input_ids.shape[1]:]


def _both(model, tok, monkeypatch) -> tuple[list[str], list[str]]:
    new = gen.generate_greedy(model, tok, PROMPTS, None, SETTINGS)
    with monkeypatch.context() as m:
        m.setattr(gen, "greedy_tokens", _old_decode)
        old = gen.generate_greedy(model, tok, PROMPTS, None, SETTINGS)
    return new, old


def _with_an_end_token_some_rows_emit(model, tok, monkeypatch):
    """A copy whose generation config ends rows on a token that some rows emit (after their first)
    and others never do."""
    from bench.eval.fastgen import greedy_tokens

    seen: list[torch.Tensor] = []
    with monkeypatch.context() as m:
        m.setattr(gen, "greedy_tokens", lambda *a, **k: seen.append(greedy_tokens(*a, **k)) or seen[-1])
        gen.generate_greedy(model, tok, PROMPTS, None, SETTINGS)
    rows = [r for batch in seen for r in batch.tolist()]
    for r in rows:
        for t in r[1:4]:
            if 0 < sum(t in x for x in rows) < len(rows) and t not in tok.all_special_ids:
                m = copy.deepcopy(model)
                m.generation_config.eos_token_id = t
                return m
    raise AssertionError("no token ends only part of the rows: the test model is degenerate")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generate_greedy_equals_plain_generate(model_tok, monkeypatch, precision):
    from bench.precision import for_precision

    model, tok = model_tok
    m = _with_an_end_token_some_rows_emit(model, tok, monkeypatch)
    if precision == "bf16":
        m = for_precision(m, "bf16")  # fp32 head, bf16 autocast per forward; generate_greedy adds the outer context
    new, old = _both(m, tok, monkeypatch)
    assert new == old
    assert len(set(new)) > 3 and all(new)  # varied, non-empty responses: the comparison means something
    full, _ = _both(model, tok, monkeypatch)
    assert any(len(a) < len(b) for a, b in zip(new, full))  # the end token cut some responses short


def test_generate_greedy_with_steering_equals_plain_generate(model_tok, monkeypatch):
    from bench.steer import hooks

    model, tok = model_tok
    direction = torch.randn(32, generator=torch.Generator().manual_seed(3))
    with hooks.steering(model, direction, mode="ablate"):
        new, old = _both(model, tok, monkeypatch)
    assert new == old
    assert new != gen.generate_greedy(model, tok, PROMPTS, None, SETTINGS)  # the ablation changed them


def test_batches_are_length_sorted_and_left_padded(model_tok):
    _, tok = model_tok
    side = tok.padding_side
    got = list(gen.left_padded_batches(tok, PROMPTS, 3))
    assert [len(idx) for idx, _ in got] == [3, 3, 1]
    lens = [int(enc["attention_mask"][j].sum()) for _, enc in got for j in range(enc["attention_mask"].shape[0])]
    assert lens == sorted(lens, reverse=True)
    for _, enc in got:
        assert (enc["attention_mask"][:, -1] == 1).all()  # padding on the left
    assert tok.padding_side == side  # restored


ANSWERS = ["Paris.", "Yes", "A dragon.", "4", "Use soda.", "ok", "Red, blue, green."]


def _autocast_linears(model) -> int:
    """The weights autocast casts: those of plain ``nn.Linear`` layers (not the fp32 heads of
    ``bench.precision.FP32Linear``, not the embedding, which is looked up, not multiplied)."""
    return sum(1 for m in model.modules() if type(m) is torch.nn.Linear)


def test_batch_loops_cast_the_weights_once_per_call(model_tok):
    """generate_greedy and the battery's help log-probs run several batches of a bf16 model inside one
    generation_autocast: each weight is cast once per call, not per batch."""
    from bench.eval.steps import response_logprobs
    from bench.precision import for_precision

    model, tok = model_tok
    m16 = for_precision(copy.deepcopy(model), "bf16")
    frozen = list(m16.parameters())
    for w in frozen:
        w.requires_grad_(False)  # as the battery loads it: frozen weights (autocast caches none by itself)
    assert -(-len(PROMPTS) // SETTINGS.batch_size) >= 3  # batches per call
    once = _autocast_linears(m16)
    gen_casts = weight_casts(m16, lambda: gen.generate_greedy(m16, tok, PROMPTS, None, SETTINGS))
    assert gen_casts == once  # each decoder weight once, whatever the batch count (per batch: 3x)
    lp_casts = weight_casts(m16, lambda: response_logprobs(m16, tok, PROMPTS, ANSWERS, None, 3, 64))
    assert lp_casts == once
    assert not any(w.requires_grad for w in frozen)


def test_score_texts_casts_the_weights_once_per_call(model_tok):
    from transformers import LlamaForSequenceClassification

    from bench.precision import for_precision
    from bench.score_model import score_texts

    model, tok = model_tok
    cfg = copy.deepcopy(model.config)
    cfg.num_labels = 1
    torch.manual_seed(0)
    rm = for_precision(LlamaForSequenceClassification(cfg).eval(), "bf16")
    for w in rm.parameters():
        w.requires_grad_(False)
    casts = weight_casts(rm, lambda: score_texts(rm, tok, PROMPTS, ANSWERS, None, batch_size=3))
    assert casts == _autocast_linears(rm)  # 3 batches, each decoder weight cast once
