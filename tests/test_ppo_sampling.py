"""PPO's rank-invariant pieces (issue 24): the keyed sampler and the token-normalised update.

What one PPO step computes must not depend on how its rows are split into ranks, chunks or
micro-batches: the keyed Gumbel-max sampler (``bench.train.rollout.keyed_sampler``) draws a row's
tokens from noise keyed by (row key, position), and ``bench.train.ppo_update.ppo_update`` weights
each micro-batch's loss by its token count. The two-process check of the whole recipe is
``tests/test_multirank.py::test_ppo_two_ranks_give_the_records_of_one``; these are its pieces on one
process. Run: ``python -m pytest tests/test_ppo_sampling.py -q``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from bench.config import LoraSection, PPOSection
from bench.train.rollout import PolicyWithValueHead, keyed_sampler, row_key, sample_responses

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is the capital of France?",
           "Write a haiku about rain.", "Explain photosynthesis briefly in two sentences, please."]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def base(smoke_cfg, smoke_base):
    from bench.models import load_base

    model, tok = load_base(smoke_cfg)
    return model.eval(), tok


def test_keyed_sampler_draws_from_the_tempered_softmax():
    """argmax(z / T + Gumbel) over many keys: each token's frequency is softmax(z / T)'s, within 4
    standard errors; the same key and position give the same token, another position another draw."""
    z = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    T, n = 0.7, 6000
    choose = keyed_sampler([row_key(0, 3, i) for i in range(n)], T)
    tokens = choose(z.expand(n, -1), 0, torch.arange(n))
    p = torch.softmax(z / T, -1)
    freq = torch.bincount(tokens, minlength=len(z)).double() / n
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4 * se + 1e-9).all(), (freq, p)
    again = choose(z.expand(n, -1), 0, torch.arange(n))
    assert torch.equal(tokens, again)
    later = choose(z.expand(n, -1), 1, torch.arange(n))
    assert (later != tokens).float().mean() > 0.2  # a new position is a new draw
    with pytest.raises(ValueError, match="temperature"):
        keyed_sampler([1], 0.0)


def test_a_rows_samples_do_not_depend_on_its_batch(base):
    """The rows a rank samples (a slice of the global batch, in chunks of any size) get the tokens
    the whole batch in one process gets: keys follow the global row, never the chunk or the rank."""
    model, tok = base
    keys = [row_key(1, 0, i) for i in range(len(PROMPTS))]
    args = (None, 12, 1.0)
    eos = [tok.eos_token_id]
    whole = sample_responses(model, tok, PROMPTS, *args, 8, eos, keys)
    for rows, chunk in ((slice(0, 2), 2), (slice(2, 5), 1), (slice(2, 5), 3)):
        part = sample_responses(model, tok, PROMPTS, *args, chunk, eos, keys, rows)
        assert part.prompt_len == whole.prompt_len  # padded to the global batch's width
        for i, r in enumerate(range(len(PROMPTS))[rows]):
            n = int(whole.mask[r].sum())
            assert part.responses[i, :n].tolist() == whole.responses[r, :n].tolist(), (rows, chunk, r)
            assert part.texts[i] == whole.texts[r]
    other = sample_responses(model, tok, PROMPTS, *args, 8, eos, [row_key(2, 0, i) for i in range(len(PROMPTS))])
    assert other.texts != whole.texts  # another seed, other samples


def test_recipe_logprobs_are_those_the_sampler_drew_from(base):
    """The recipe's forward (left padding, temperature) gives the logits the keyed sampler saw at
    every step of the decode loop, so the PPO ratio of the first mini-batch starts at 1."""
    from bench.eval.fastgen import greedy_tokens
    from bench.losses import sequence_logprobs

    model, tok = base
    module = PolicyWithValueHead(model, model.config.hidden_size).eval()
    texts = [PROMPTS[0], PROMPTS[4]]
    T = 0.7
    seen = []
    sampler = keyed_sampler([row_key(0, 0, 0), row_key(0, 0, 1)], T)

    def choose(logits, t, rows):
        seen.append(logits.float() / T)
        return sampler(logits, t, rows)

    s = sample_responses(model, tok, texts, None, 6, T, 2, [tok.eos_token_id], [0, 1])  # layout and masks
    enc_ids, enc_attn = s.input_ids[:, :s.prompt_len], s.attention_mask[:, :s.prompt_len]
    resp = greedy_tokens(model, enc_ids, enc_attn, 6, [tok.eos_token_id], tok.pad_token_id, choose=choose)
    mask = torch.ones_like(resp)  # positions after an EOS too: their logits were computed alike
    ids = torch.cat([enc_ids, resp], 1)
    with torch.no_grad():
        logits, _ = module(ids, torch.cat([enc_attn, mask], 1), s.prompt_len, temperature=T)
    expected = sequence_logprobs(torch.stack(seen, 1), resp, mask.float())
    torch.testing.assert_close(sequence_logprobs(logits, resp, mask.float()), expected, atol=1e-4, rtol=1e-4)


def _update(model, section: PPOSection, batch: dict) -> dict[str, torch.Tensor]:
    """One ppo_update of a fresh LoRA policy copy on ``batch``; its trainable parameters after."""
    from bench.train import ppo_models
    from bench.train.ppo_backends import TorchBackend
    from bench.train.ppo_update import ppo_update

    torch.manual_seed(0)
    policy = ppo_models.setup_trainable(copy.deepcopy(model), section)
    module = PolicyWithValueHead(policy, model.config.hidden_size)
    backend = TorchBackend(module, section)
    stats = ppo_update(backend, batch["s"], batch["exp"], batch["adv"], batch["returns"], section, 0, 0)
    params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    return params | {"_stats": torch.tensor([stats["policy_loss"], stats["value_loss"], stats["clip_frac"]])}


def test_update_does_not_depend_on_the_micro_batch_split(base):
    """Token-count normalisation: the same mini-batch in one micro-batch of 4 rows or in 4 of one
    row (responses of 1 to 6 tokens) gives the same optimiser step, and the same token-weighted
    statistics (a mean of per-micro-batch means would weight the 1-token row's tokens 6x)."""
    from bench.train.rollout import assemble, experience

    model, tok = base
    section = PPOSection(rollout_prompts=4, mini_batch_size=4, batch_size=4, ppo_epochs=1, learning_rate=1e-2,
                         critic_learning_rate=1e-2, trainable="lora", max_grad_norm=1e9,
                         lora=LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    s = sample_responses(model, tok, PROMPTS[:4], None, 6, 1.0, 4, [tok.eos_token_id], [0, 1, 2, 3])
    responses = torch.randint(10, 200, (4, 6), generator=g)
    for r, n in enumerate((1, 6, 3, 2)):  # an EOS ends each response after n tokens
        responses[r, n - 1:] = tok.eos_token_id
    s = assemble(s.prompts, s.input_ids[:, :s.prompt_len], s.attention_mask[:, :s.prompt_len], responses,
                 [tok.eos_token_id], tok)
    assert s.mask.sum(1).tolist() == [1, 6, 3, 2]
    from bench.config import PPOVariant

    exp = experience(PolicyWithValueHead(model, model.config.hidden_size).eval(), model, s,
                     PPOVariant(regulariser="none"), section)
    batch = {"s": s, "exp": exp, "adv": torch.randn(4, 6, generator=g), "returns": torch.randn(4, 6, 1, generator=g)}
    one = _update(model, section, batch)
    four = _update(model, dataclasses.replace(section, batch_size=1), batch)
    assert one.keys() == four.keys()
    for k in one:
        torch.testing.assert_close(four[k], one[k], atol=2e-6, rtol=1e-4, msg=k)
    moved = [k for k in one if k != "_stats" and "lora" in k and not torch.equal(one[k], _lora_init(model, section)[k])]
    assert moved  # the step did move the adapters


def _lora_init(model, section):
    from bench.train import ppo_models

    torch.manual_seed(0)
    policy = ppo_models.setup_trainable(copy.deepcopy(model), section)
    module = PolicyWithValueHead(policy, model.config.hidden_size)
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
