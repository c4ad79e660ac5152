"""A test helper: how many times a bf16 model's fp32 weights are cast to bf16 while a call runs."""

from __future__ import annotations

from typing import Callable

import torch


def weight_casts(model, call: Callable[[], object]) -> int:
    """fp32 -> bf16 casts of tensors shaped like one of ``model``'s 2-D weights while ``call()`` runs
    (counted at the dispatcher with a ``TorchDispatchMode``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = {tuple(w.shape) for w in model.parameters() if w.dim() == 2}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16 \
                    and args[0].dtype == torch.float32 and tuple(args[0].shape) in shapes:
                Count.n += 1
            return func(*args, **kwargs)

    with Count():
        call()
    return Count.n
