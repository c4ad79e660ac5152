"""Preference metrics on hand-made log-probs, and the scorer against a manual forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from bench.eval.logprobs import PairLogprobs, encode_pair, score_pairs
from bench.eval.preference import preference_metrics


def test_metrics_on_hand_made_logprobs():
    pi = PairLogprobs(chosen=[-10.0, -20.0, -5.0], rejected=[-12.0, -15.0, -9.0],
                      chosen_tokens=[5, 10, 5], rejected_tokens=[4, 5, 3])
    ref = PairLogprobs(chosen=[-11.0, -18.0, -5.0], rejected=[-11.0, -16.0, -8.0],
                       chosen_tokens=[5, 10, 5], rejected_tokens=[4, 5, 3])
    m = preference_metrics(pi, ref)
    assert m["pref_acc_raw"]["value"] == pytest.approx(2 / 3) and m["pref_acc_raw"]["n"] == 3
    # implicit margins: (1) - (-1) = 2 > 0; (-2) - (1) = -3; (0) - (-1) = 1 > 0
    assert m["pref_acc_implicit"]["value"] == pytest.approx(2 / 3)
    assert m["logp_margin_sum"]["value"] == pytest.approx((2 - 5 + 4) / 3)
    per_tok = [(-10 / 5) - (-12 / 4), (-20 / 10) - (-15 / 5), (-5 / 5) - (-9 / 3)]
    assert m["logp_margin_per_token"]["value"] == pytest.approx(sum(per_tok) / 3)
    assert m["chosen_shift"]["value"] == pytest.approx((1 - 2 + 0) / 3)
    assert m["rejected_shift"]["value"] == pytest.approx((-1 + 1 - 1) / 3)
    assert 0 <= m["pref_acc_raw"]["ci_low"] < 2 / 3 < m["pref_acc_raw"]["ci_high"] <= 1


def test_metrics_without_reference_and_mismatch():
    pi = PairLogprobs([-1.0], [-2.0], [1], [1])
    m = preference_metrics(pi, None)
    assert "pref_acc_implicit" not in m and m["pref_acc_raw"]["value"] == 1.0
    with pytest.raises(ValueError, match="cover 2 pairs"):
        preference_metrics(pi, PairLogprobs([-1.0, 0.0], [-2.0, 0.0], [1, 1], [1, 1]))


PAIRS = [
    {"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for 9 minutes.", "rejected": "No."},
    {"prompt": "Say hi", "chosen": "Hi there!", "rejected": "I cannot help with that request, sorry about it."},
    {"prompt": "A much longer prompt about the history of the Roman empire and its roads", "chosen": "Roads.",
     "rejected": "They built many roads across Europe."},
]


def test_scorer_matches_manual_forward(smoke_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smoke_base)
    tok = AutoTokenizer.from_pretrained(smoke_base)
    got = score_pairs(model, tok, PAIRS, None, batch_size=4)
    for i, pair in enumerate(PAIRS):
        c_ids, r_ids, plen = encode_pair(tok, pair, None, 512)
        for ids, expected_sum, expected_n in ((c_ids, got.chosen[i], got.chosen_tokens[i]),
                                              (r_ids, got.rejected[i], got.rejected_tokens[i])):
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            manual = sum(logp[t - 1, ids[t]].item() for t in range(plen, len(ids)))
            assert expected_n == len(ids) - plen
            assert expected_sum == pytest.approx(manual, abs=1e-3)
    assert all(math.isfinite(x) for x in got.chosen + got.rejected)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_scorer_projects_only_the_response_positions(smoke_base, prefix_cache):
    """The output head sees one row per scored response token (no prompt, no padding, no last
    position), and the sums are those of full logits (``sequence_logprobs`` over every position)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.losses import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(smoke_base)
    tok = AutoTokenizer.from_pretrained(smoke_base)
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, inp, out: rows.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))
    try:
        got = score_pairs(model, tok, PAIRS, None, batch_size=4, prefix_cache=prefix_cache)
    finally:
        hook.remove()
    scored = sum(got.chosen_tokens) + sum(got.rejected_tokens)
    if prefix_cache:  # plus one row per prefix forward (the shared prefix, each batch's prompt stems)
        assert scored <= sum(rows) <= scored + 1 + len(PAIRS)
    else:  # full logits would add every prompt position, the padding and each sequence's last position
        assert sum(rows) == scored
    for i, pair in enumerate(PAIRS):
        c_ids, r_ids, plen = encode_pair(tok, pair, None, 512)
        for seq, expected in ((c_ids, got.chosen[i]), (r_ids, got.rejected[i])):
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits  # (1, L, V): every position
            mask = torch.zeros(1, len(seq) - 1, dtype=torch.bool)
            mask[0, plen - 1:] = True
            full = sequence_logprobs(logits[:, :-1], torch.tensor([seq[1:]]), mask).sum().item()
            assert expected == pytest.approx(full, abs=1e-4)


def test_bf16_scorer_casts_once_per_call_and_gives_the_same_numbers(smoke_base, monkeypatch):
    """A bf16 model is scored inside one ``generation_autocast`` (one cast of each weight per call);
    the numbers are bitwise those of casting at every forward (``_score_pairs``: the forwards' own
    autocast contexts only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.eval import logprobs
    from bench.precision import for_precision, generation_autocast

    tok = AutoTokenizer.from_pretrained(smoke_base)
    model = for_precision(AutoModelForCausalLM.from_pretrained(smoke_base), "bf16")
    entered = []
    monkeypatch.setattr(logprobs, "generation_autocast", lambda m: entered.append(m) or generation_autocast(m))
    once = score_pairs(model, tok, PAIRS, None, batch_size=4)
    assert entered == [model]
    with torch.no_grad():
        every = logprobs._score_pairs(model, tok, PAIRS, None, 4, 512, "score pairs", True)
    assert once.chosen == every.chosen and once.rejected == every.rejected  # bitwise
    fp32 = score_pairs(AutoModelForCausalLM.from_pretrained(smoke_base), tok, PAIRS, None, batch_size=4)
    assert once.chosen != fp32.chosen  # the bf16 side really ran in bf16


def test_response_logprobs_projects_only_the_response_positions(smoke_base):
    """The battery's own-answer log-probs: one head row per response token, sums those of full logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.eval.steps import response_logprobs

    model = AutoModelForCausalLM.from_pretrained(smoke_base)
    tok = AutoTokenizer.from_pretrained(smoke_base)
    prompts, answers = [p["prompt"] for p in PAIRS], [p["chosen"] for p in PAIRS]
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, inp, out: rows.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))
    try:
        sums, counts = response_logprobs(model, tok, prompts, answers, None, batch_size=2)
    finally:
        hook.remove()
    assert sum(rows) == sum(counts)
    for i, pair in enumerate(PAIRS):
        c_ids, _, plen = encode_pair(tok, pair, None, 512)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c_ids])).logits[0].float(), -1)
        assert counts[i] == len(c_ids) - plen
        assert sums[i] == pytest.approx(sum(logp[t - 1, c_ids[t]].item() for t in range(plen, len(c_ids))), abs=1e-4)
