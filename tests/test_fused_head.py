"""bench.train.fused_head: TRL's fused LM head scores only labelled positions on the CPU, with the
same numbers, and is left alone when the head itself is trained."""

from __future__ import annotations

import pytest
import torch

trl_utils = pytest.importorskip("trl.trainer.utils")

from bench.train.fused_head import compact_fused_head  # noqa: E402

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what TRL's DPOTrainer asks for


def _model(train_head: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    for name, p in model.named_parameters():  # the top block trains, as `trainable: top_layers`
        p.requires_grad_(name.startswith("model.layers.1.") or (train_head and "embed_tokens" in name))
    trl_utils.add_fused_lm_head(model, outputs=OUTPUTS)
    return model


def _batch():
    """Two rows: a prompt whose labels are -100, a completion, right padding (-100) on the shorter."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[1, 9:] = -100  # padding
    return ids, attn, labels


@pytest.fixture
def rows_seen(monkeypatch):
    """The row count of every call into TRL's chunked log-prob function, with the vocabulary cut into
    three chunks (as SmolLM2's 49,152 is into two) so the online log-sum-exp folds across chunks."""
    seen: list[int] = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            seen.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 40)
    return seen


def _run(model, compact: bool):
    """Per-token outputs and the trained weights' gradients of ``-sum log p`` over labelled positions."""
    ids, attn, labels = _batch()
    model.zero_grad()
    if compact:
        with compact_fused_head(model) as on:
            assert on
            out = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    else:
        out = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    (-out.log_probs.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: getattr(out, k).detach() for k in OUTPUTS}, grads


def test_the_switch_exists_in_this_trl():
    # compact_fused_head falls back to TRL's default when the switch is gone; this test is what says so
    assert callable(getattr(trl_utils, "_use_triton", None))
    assert trl_utils._use_triton(torch.device("cpu")) is False  # else the CPU already compacts, and this module is moot


def test_cpu_scores_only_labelled_rows_with_the_same_numbers(rows_seen):
    model = _model()
    _, _, labels = _batch()
    full_out, full_grads = _run(model, compact=False)
    compact_out, compact_grads = _run(model, compact=True)
    labelled = int((labels[:, 1:] != -100).sum())
    assert rows_seen == [2 * 11, labelled]  # every shifted position, then the labelled ones only
    assert labelled < 2 * 11
    for k in OUTPUTS:
        assert torch.equal(full_out[k], compact_out[k]), k
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for n in full_grads:
        assert torch.equal(full_grads[n], compact_grads[n]), n
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored


def test_trained_head_is_left_to_trl(rows_seen):
    model = _model(train_head=True)
    with compact_fused_head(model) as on:
        assert on is False
        assert trl_utils._use_triton(torch.device("cpu")) is False
        ids, attn, labels = _batch()
        model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
    assert rows_seen == [2 * 11]


def test_restored_on_error():
    model = _model()
    original = trl_utils._use_triton
    with pytest.raises(RuntimeError, match="boom"):
        with compact_fused_head(model):
            assert trl_utils._use_triton(torch.device("cpu")) is True
            raise RuntimeError("boom")
    assert trl_utils._use_triton is original


def test_train_resumable_runs_the_trainer_compact(tmp_path, monkeypatch):
    from transformers.trainer_utils import TrainOutput

    from bench.train import hf_trainer

    model = _model()
    seen = []

    class Trainer:
        def __init__(self):
            self.model = model

        def train(self, resume_from_checkpoint=None):
            seen.append(trl_utils._use_triton(torch.device("cpu")))
            return TrainOutput(global_step=1, training_loss=0.0, metrics={})

    hf_trainer.train_resumable(Trainer(), tmp_path / "ckpt", "t", "hash")
    assert seen == [True]
    assert trl_utils._use_triton(torch.device("cpu")) is False
