"""bench.eval.fastgen: the lean greedy loop returns ``model.generate``'s new tokens.

A tiny random Llama (2 layers, hidden 32, vocabulary 97, untied, weights at std 0.3 so
that its argmax depends on the context) and left-padded batches of different
lengths; every expectation is ``model.generate`` itself on the same inputs (nothing hard-coded).
The exact path is also compared logit by logit (a hook on ``lm_head`` records every forward's logits).

    nice .venv/bin/python -m pytest -q tests/test_fastgen.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.eval import fastgen

VOCAB, PAD = 97, 0


def _llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.3)  # large weights: the argmax follows the context, not one token forever
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(one_thread):
    return _llama()


def _batch(lengths, seed=1, prefix=()):
    """Left-padded (B, L) ids and mask: rows of the given lengths, each starting with ``prefix``."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.full((len(lengths), L), PAD, dtype=torch.long)
    mask = torch.zeros((len(lengths), L), dtype=torch.long)
    for r, n in enumerate(lengths):
        row = torch.randint(3, VOCAB, (n,), generator=g)
        row[:len(prefix)] = torch.tensor(prefix[:n], dtype=torch.long)
        ids[r, L - n:] = row
        mask[r, L - n:] = 1
    return ids, mask


def _generate(model, ids, mask, n, eos, pad=PAD):
    """generate's new tokens; ``eos=[]``: no end token (generate reads None as the config's)."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, eos_token_id=list(eos), use_cache=True)
    return out[:, ids.shape[1]:]


class _Logits:
    """Records every forward's logits (a hook on lm_head)."""

    def __init__(self, model):
        self.seen: list[torch.Tensor] = []
        self.handle = model.lm_head.register_forward_hook(lambda m, a, out: self.seen.append(out.detach().clone()))

    def take(self) -> list[torch.Tensor]:
        seen, self.seen = self.seen, []
        return seen

    def close(self):
        self.handle.remove()


def _eos_finishing_some_rows(tokens: torch.Tensor) -> int:
    """A token that some rows emit (early) and others never do: as EOS, it ends only part of the batch."""
    for t in range(tokens.shape[1]):
        for tok in tokens[:, t].tolist():
            rows = (tokens == tok).any(1)
            if 0 < int(rows.sum()) < tokens.shape[0] and tok != PAD:
                return tok
    raise AssertionError("no token ends only part of the batch: the test model is degenerate")


def test_pick_is_argmax_with_ties():
    g = torch.Generator().manual_seed(19)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randint(0, 3, (64, 1000), generator=g).to(dtype)  # many tied maxima per row
        x[5] = 2  # a whole row tied
        x[6, -1] = 5  # the maximum last
        assert torch.equal(fastgen.pick(x), x.float().argmax(-1))


def test_exact_path_gives_generates_logits_and_tokens_bit_for_bit(model):
    ids, mask = _batch([5, 11, 3, 8])
    rec = _Logits(model)
    try:
        want = _generate(model, ids, mask, 12, eos=[])
        ref = rec.take()
        got = fastgen.greedy_tokens(model, ids, mask, 12, eos_token_ids=[], pad_token_id=PAD)
        mine = rec.take()
    finally:
        rec.close()
    assert want.shape == got.shape == (4, 12)
    assert torch.equal(got, want)
    assert len(mine) == len(ref) == 12  # prefill + 11 steps: the last token needs no forward
    for a, b in zip(ref, mine):
        assert a.shape == b.shape and torch.equal(a, b)
    assert len({tuple(r) for r in got.tolist()}) > 1  # the rows differ: the model is not degenerate


def test_some_rows_end_early_and_are_padded(model):
    ids, mask = _batch([6, 9, 4, 9, 7, 2], seed=2)
    free = _generate(model, ids, mask, 16, eos=[])
    eos = _eos_finishing_some_rows(free)
    want = _generate(model, ids, mask, 16, eos=[eos])
    got = fastgen.greedy_tokens(model, ids, mask, 16, eos_token_ids=[eos], pad_token_id=PAD)
    assert torch.equal(got, want)
    ended = (want == eos).any(1)
    assert 0 < int(ended.sum()) < len(ended)  # the case under test: part of the batch ends
    for r in ended.nonzero().flatten().tolist():
        at = int((want[r] == eos).nonzero()[0])
        assert (got[r, at + 1:] == PAD).all()


def test_all_rows_ending_stops_early(model):
    ids, mask = _batch([4, 7, 5], seed=3)
    free = _generate(model, ids, mask, 10, eos=[])
    eos = sorted(set(free[:, 1].tolist()))  # every row emits one of these at step 1 (or before)
    want = _generate(model, ids, mask, 10, eos=eos)
    got = fastgen.greedy_tokens(model, ids, mask, 10, eos_token_ids=eos, pad_token_id=PAD)
    assert want.shape[1] <= 2 and torch.equal(got, want)


def test_one_new_token_no_padding_and_int_eos(model):
    ids, mask = _batch([6, 3, 9], seed=4)
    for n in (1, 2):
        assert torch.equal(fastgen.greedy_tokens(model, ids, mask, n, 2, PAD), _generate(model, ids, mask, n, eos=[2]))
    full = torch.ones((2, 7), dtype=torch.long)  # no padding: generate drops the mask, so does the loop
    ids2 = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    assert torch.equal(fastgen.greedy_tokens(model, ids2, full, 5, [], PAD), _generate(model, ids2, full, 5, eos=[]))
    assert fastgen.greedy_tokens(model, ids2, full, 0, [], PAD).shape == (2, 0)


def test_eos_none_means_the_generation_configs(model):
    ids, mask = _batch([5, 8], seed=6)
    free = _generate(model, ids, mask, 12, eos=[])
    eos = int(free[0, 3])
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = eos
    with torch.no_grad():
        want = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    assert torch.equal(fastgen.greedy_tokens(m, ids, mask, 12, None, PAD), want[:, ids.shape[1]:])


def test_forward_hook_on_a_decoder_layer_applies(model):
    ids, mask = _batch([5, 10, 7], seed=7)
    plain = fastgen.greedy_tokens(model, ids, mask, 10, [], PAD)
    vec = torch.randn(32, generator=torch.Generator().manual_seed(8)) * 4.0

    def add(module, args, output):  # activation addition after block 0, as bench.steer.hooks does
        return (output[0] + vec, *output[1:]) if isinstance(output, tuple) else output + vec

    h = model.model.layers[0].register_forward_hook(add)
    try:
        want = _generate(model, ids, mask, 10, eos=[])
        got = fastgen.greedy_tokens(model, ids, mask, 10, [], PAD)
        fast = fastgen.greedy_tokens(model, ids, mask, 10, [], PAD, exact=False)
    finally:
        h.remove()
    assert not torch.equal(want, plain)  # the hook changes the generations
    assert torch.equal(got, want) and torch.equal(fast, want)


def test_steering_ablation_hooks_apply(model):
    from bench.steer import hooks

    ids, mask = _batch([6, 9, 4], seed=9)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(10))
    with hooks.steering(model, direction, mode="ablate"):
        want = _generate(model, ids, mask, 8, eos=[])
        got = fastgen.greedy_tokens(model, ids, mask, 8, [], PAD)
    assert torch.equal(got, want)
    assert not torch.equal(want, fastgen.greedy_tokens(model, ids, mask, 8, [], PAD))


def _both_under(m, ids, mask, context):
    """generate's and fastgen's tokens (8 new, no end token) and the logits of each forward, under ``context``."""
    rec = _Logits(m)
    try:
        with context:
            want = _generate(m, ids, mask, 8, eos=[])
            ref = rec.take()
            got = fastgen.greedy_tokens(m, ids, mask, 8, [], PAD)
            mine = rec.take()
    finally:
        rec.close()
    return want, ref, got, mine


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_exact_under_bf16_autocast(model, attn):
    """Under autocast the cache keeps keys in bf16 (attention casts them to bf16 anyway): the logits
    stay bit-identical to generate's, with either attention implementation."""
    m = copy.deepcopy(model)
    m.config._attn_implementation = attn
    ids, mask = _batch([5, 9, 3], seed=11)
    want, ref, got, mine = _both_under(m, ids, mask, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(got, want)
    assert len(ref) == len(mine) == 8 and all(torch.equal(a, b) for a, b in zip(ref, mine))
    assert ref[0].dtype == torch.bfloat16  # autocast did run


def test_project_bf16_model_runs_the_lean_loop(model):
    """A model bench.precision made bf16 (fp32 head, autocast per forward) inside generation_autocast."""
    from bench.precision import for_precision, generation_autocast

    m = for_precision(copy.deepcopy(model), "bf16")
    assert fastgen.unsupported_reason(m) is None  # the wrapped forward keeps its signature
    ids, mask = _batch([7, 4, 10], seed=18)
    want, ref, got, mine = _both_under(m, ids, mask, generation_autocast(m))
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(ref, mine)) and len(ref) == len(mine) == 8
    with torch.no_grad():
        assert not torch.equal(m(input_ids=ids).logits, model(input_ids=ids).logits)  # bf16 did run


def _min_top2_gap(logits: list[torch.Tensor]) -> float:
    top = torch.cat([x[:, -1].float() for x in logits]).topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def test_shared_prefix_and_compaction_give_the_same_tokens(model):
    """exact=False: the prefix is computed once (one row), finished rows leave the batch. Its numbers
    may differ from generate's in the last bits; with every top-2 logit gap far above that, the tokens
    must be the same."""
    prefix = (7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
    ids, mask = _batch([14, 18, 12, 16, 11, 13], seed=12, prefix=prefix)
    free = _generate(model, ids, mask, 14, eos=[])
    eos = _eos_finishing_some_rows(free)
    rec = _Logits(model)
    shapes: list[tuple[int, int]] = []
    h = model.model.layers[0].register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[:2])))
    try:
        want = _generate(model, ids, mask, 14, eos=[eos])
        gap = _min_top2_gap(rec.take())
        shapes.clear()
        got = fastgen.greedy_tokens(model, ids, mask, 14, [eos], PAD, exact=False)
    finally:
        h.remove()
        rec.close()
    assert gap > 1e-3  # far from a tie: the approximate path cannot flip a token here
    assert torch.equal(got, want)
    L, P = ids.shape[1], len(prefix)
    assert shapes[0] == (1, P) and shapes[1] == (6, L - P)  # the prefix once, then only the suffixes
    steps = [b for b, n in shapes[2:]]
    assert steps == sorted(steps, reverse=True) and steps[-1] < 6  # finished rows left the batch
    ended_before_last = int(((want == eos).cumsum(1) > 0)[:, :-1].any(1).sum())
    assert ended_before_last >= 2


def test_whole_model_hooks_keep_the_batch_whole(model):
    """A hook on the whole model (the gated steering's pre-hook reads each row's full prompt) sees
    generate's calls: exact=False then uses neither the shared prefix nor compaction."""
    prefix = tuple(range(20, 30))
    ids, mask = _batch([13, 15, 12], seed=13, prefix=prefix)
    free = _generate(model, ids, mask, 10, eos=[])
    eos = _eos_finishing_some_rows(free)
    calls: list[tuple[int, int]] = []
    h = model.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        got = fastgen.greedy_tokens(model, ids, mask, 10, [eos], PAD, exact=False)
        n_fast = len(calls)
        want = _generate(model, ids, mask, 10, eos=[eos])
    finally:
        h.remove()
    assert torch.equal(got, want)
    assert calls[:n_fast] == calls[n_fast:] == [ids.shape] + [(3, 1)] * (n_fast - 1)


def test_gated_steering_runs_through_the_lean_loop(model):
    """The project's gated ablation (a whole-model pre-hook plus per-row layer hooks) gives generate's tokens."""
    from bench.steer import hooks

    ids, mask = _batch([9, 12, 10], seed=14)
    g = torch.Generator().manual_seed(15)
    spec = {"mode": "ablate", "vector": torch.randn(32, generator=g),
            "gate": {"layer": 2, "threshold": 0.0, "header": [5], "vector": torch.randn(32, generator=g)}}
    with hooks.steering(model, spec):
        want = _generate(model, ids, mask, 8, eos=[])
        got = fastgen.greedy_tokens(model, ids, mask, 8, [], PAD)
        fast = fastgen.greedy_tokens(model, ids, mask, 8, [], PAD, exact=False)
    assert torch.equal(got, want) and torch.equal(fast, want)


def test_unsupported_models_go_to_generate(model):
    ids, mask = _batch([5, 8], seed=16)
    m = copy.deepcopy(model)
    m.generation_config.repetition_penalty = 1.5
    assert "repetition_penalty" in fastgen.unsupported_reason(m)
    assert fastgen.unsupported_reason(model) is None
    got = fastgen.greedy_tokens(m, ids, mask, 10, [], PAD)
    assert torch.equal(got, _generate(m, ids, mask, 10, eos=[]))  # with the penalty, as generate applies it

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "model_type" in fastgen.unsupported_reason(gpt)
    assert torch.equal(fastgen.greedy_tokens(gpt, ids, mask, 6, [], PAD), _generate(gpt, ids, mask, 6, eos=[]))


def test_lora_wrapper_runs_the_lean_loop(model):
    peft = pytest.importorskip("peft")

    m = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
    m.eval()
    assert fastgen.unsupported_reason(m) is None
    ids, mask = _batch([6, 10, 4], seed=17)
    want = _generate(m, ids, mask, 8, eos=[])
    assert not torch.equal(want, _generate(model, ids, mask, 8, eos=[]))  # the adapters matter
    assert torch.equal(fastgen.greedy_tokens(m, ids, mask, 8, [], PAD), want)


def _argmax(logits, t, rows):
    return logits.float().argmax(-1)


def test_choose_argmax_is_the_default(model):
    ids, mask = _batch([6, 9, 4, 9, 7, 2], seed=20)
    eos = _eos_finishing_some_rows(_generate(model, ids, mask, 12, eos=[]))
    want = fastgen.greedy_tokens(model, ids, mask, 12, [eos], PAD)
    assert torch.equal(fastgen.greedy_tokens(model, ids, mask, 12, [eos], PAD, choose=_argmax), want)
    assert torch.equal(want, _generate(model, ids, mask, 12, eos=[eos]))


def test_choose_sees_each_step_and_the_original_rows(model):
    ids, mask = _batch([5, 8, 3], seed=21)
    seen = []

    def record(logits, t, rows):
        seen.append((t, rows.tolist(), tuple(logits.shape)))
        return torch.full((len(rows),), 5, dtype=torch.long)  # a constant pick: choose decides the tokens

    got = fastgen.greedy_tokens(model, ids, mask, 7, [], PAD, choose=record)
    assert [s[0] for s in seen] == list(range(7))
    assert all(r == [0, 1, 2] and shape == (3, VOCAB) for _, r, shape in seen)
    assert torch.equal(got, torch.full((3, 7), 5))


@pytest.mark.parametrize("kind", ["gpt2", "penalty", "patched"])
def test_fallback_loop_honours_choose(model, monkeypatch, kind):
    """A model the lean loop refuses decodes by the plain loop when given ``choose`` (never by
    generate): argmax gives generate's tokens on the model's own logits, end tokens and padding alike."""
    ids, mask = _batch([6, 9, 4, 8], seed=22)
    m = copy.deepcopy(model)
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       initializer_range=0.3)).eval()
        want_model = m
    elif kind == "penalty":
        m.generation_config.repetition_penalty = 1.5  # generate would apply it; choose sees raw logits
        want_model = model
    else:
        monkeypatch.setattr(fastgen, "unsupported_reason", lambda mod: "patched for the test")
        want_model = model
    assert fastgen.unsupported_reason(m) is not None
    eos = _eos_finishing_some_rows(_generate(want_model, ids, mask, 12, eos=[]))
    want = _generate(want_model, ids, mask, 12, eos=[eos])
    monkeypatch.setattr(m, "generate", lambda *a, **k: pytest.fail("the fallback with choose called generate"))
    steps = []

    def choose(logits, t, rows):
        steps.append((t, rows.tolist()))
        return _argmax(logits, t, rows)

    got = fastgen.greedy_tokens(m, ids, mask, 12, [eos], PAD, choose=choose)
    assert torch.equal(got, want)
    assert [t for t, _ in steps] == list(range(got.shape[1])) and all(r == [0, 1, 2, 3] for _, r in steps)


def test_missing_mask_is_the_one_generate_infers(model):
    ids, mask = _batch([6, 3, 8], seed=23)
    with torch.no_grad():
        want = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=[])
    assert torch.equal(fastgen.greedy_tokens(model, ids, None, 6, [], PAD), want[:, ids.shape[1]:])
    assert torch.equal(fastgen.greedy_tokens(model, ids, None, 6, [], PAD), fastgen.greedy_tokens(model, ids, mask, 6, [], PAD))
