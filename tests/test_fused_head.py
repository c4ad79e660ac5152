"""bench.train.fused_head: TRL's fused LM head scores only labelled positions on the CPU, with the
same numbers, and is left alone when the head itself is trained; its tiles fold in row slices on the
CPU, with the same numbers, trained head or not."""

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


@pytest.fixture
def fold_rows(monkeypatch):
    """The row count of every tile TRL's torch folds see (forward and backward), spied on underneath
    whatever wraps them; the vocabulary cut into three chunks, as in ``rows_seen``."""
    import trl.kernels.chunked_logprob as kernels

    from bench.train.fused_head import FOLDS

    seen: dict[str, list[int]] = {name: [] for name in FOLDS}
    for name in FOLDS:
        real = getattr(kernels, name)

        def spy(tile, *args, _real=real, _name=name, **kwargs):
            seen[_name].append(tile.shape[0])
            return _real(tile, *args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 40)
    return seen


@pytest.mark.parametrize("train_head", [False, True])
def test_folds_run_in_row_slices_with_the_same_numbers(fold_rows, train_head):
    from bench.train.fused_head import row_sliced_folds

    model = _model(train_head=train_head)
    with row_sliced_folds(rows=1_000) as on:  # slices wider than any tile: TRL's own calls
        assert on
        whole_out, whole_grads = _run(model, compact=False)
    whole = {k: list(v) for k, v in fold_rows.items()}
    for v in fold_rows.values():
        v.clear()
    with row_sliced_folds(rows=4):
        sliced_out, sliced_grads = _run(model, compact=False)
    assert whole["_forward_tile"] == [22] * 3 and whole["_backward_tile"] == [22] * 3  # 22 rows, 3 chunks
    assert fold_rows["_forward_tile"] == [4, 4, 4, 4, 4, 2] * 3
    assert fold_rows["_backward_tile"] == [4, 4, 4, 4, 4, 2] * 3
    for k in OUTPUTS:
        assert torch.equal(whole_out[k], sliced_out[k]), k
    assert whole_grads.keys() == sliced_grads.keys() and any("layers.1." in n for n in whole_grads)
    assert any("embed_tokens" in n for n in whole_grads) is train_head
    for n in whole_grads:
        assert torch.equal(whole_grads[n], sliced_grads[n]), n


def test_compact_fused_head_slices_the_folds_of_a_trained_head_too(fold_rows):
    model = _model(train_head=True)
    with compact_fused_head(model) as on:
        assert on is False  # rows not compacted ...
        ids, attn, labels = _batch()
        out = model(input_ids=ids, attention_mask=attn, labels=labels, fused_lm_head=True)
        (-out.log_probs.sum()).backward()
    assert fold_rows["_forward_tile"] and max(fold_rows["_forward_tile"]) <= 8  # ... but folded 8 rows at a time
    assert fold_rows["_backward_tile"] and max(fold_rows["_backward_tile"]) <= 8


def test_folds_restored_on_error():
    import trl.kernels.chunked_logprob as kernels

    from bench.train.fused_head import FOLDS, row_sliced_folds

    originals = [getattr(kernels, name) for name in FOLDS]
    with pytest.raises(RuntimeError, match="boom"):
        with row_sliced_folds():
            assert [getattr(kernels, name) for name in FOLDS] != originals
            raise RuntimeError("boom")
    assert [getattr(kernels, name) for name in FOLDS] == originals


def test_sliced_fold_rows_says_what_runs():
    from bench.train.fused_head import row_sliced_folds, sliced_fold_rows

    assert sliced_fold_rows() is None
    with row_sliced_folds(rows=5):
        assert sliced_fold_rows() == 5
    assert sliced_fold_rows() is None
