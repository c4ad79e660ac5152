"""lm-eval for a gated steered variant (``steer-gated``): the gate decided once per document, where
generation decides it.

Why: the gate (:mod:`bench.steer.gate`) was fitted on the residual stream at the end of the chat
template's assistant header. lm-eval's requests carry no chat template, so the gated hooks of
:func:`bench.steer.hooks.steering` would read each request's last attended token instead: for a
``loglikelihood`` request the end of its *continuation* (so two choices of one multiple-choice question
could get different decisions), for ``generate_until`` the last context token. Neither is the position
the gate was fitted on. Applying the chat template to every request was measured and rejected
(docs/experiments.md, ``lm-eval-chat-template``: answers become sentences and exact match fails).

What, instead: :class:`GatedHFLM`, lm-eval's ``HFLM`` with its request methods wrapped. For each
request, the document's context (``request.args[0]``, the same string for every choice of a
multiple-choice question) is formatted as the chat user message and read by
:func:`bench.steer.hooks.gate_decisions` (the read-out generation uses, with the profile's system
prompt). The requests of the documents below the gate run under plain ablation of the same direction
(exactly steer-ablate's hooks), the others unsteered; for a gated addition (CAST) the two groups run
under the plain addition at ``gate.alpha_below`` and at the spec's ``alpha``. Each group goes through
HFLM's own method; the
results go back in the order lm-eval asked (HFLM returns each group in its input order, whatever it
reorders or groups inside). The model must be unsteered when it is handed over (the battery calls it
outside the variant's steering context). ``loglikelihood_rolling`` has no context to read: an error.

    bench eval --profile default --variant steer-gated    # the battery uses it for gated variants

:meth:`GatedHFLM.gate_counts` says, per task, how many documents were ablated and kept
(``extra["lm_eval"]["gate"]`` of the eval record).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

from lm_eval.models.huggingface import HFLM

from bench.steer.hooks import gate_decisions, steering
from bench.steer.spec import SteeringSpec


class GatedHFLM(HFLM):
    """``HFLM`` over an unsteered model that applies a gated ``spec`` one document at a time."""

    def __init__(self, pretrained, tokenizer, spec: SteeringSpec, system_prompt: str | None = None,
                 gate_batch_size: int = 16, **kwargs):
        if not isinstance(spec, SteeringSpec) or not spec.gated:
            raise ValueError("GatedHFLM needs a gated steering spec (steer-gated's)")
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        self.spec = spec
        # The ungated steering each side of the gate gets: below it steer-ablate's hooks (a gated ablation) or
        # the addition at alpha_below; at or above it nothing (ablation) or the addition at the spec's alpha.
        plain = dataclasses.replace(spec, gate=None)
        self.below = plain if spec.mode == "ablate" else dataclasses.replace(plain, alpha=spec.gate.alpha_below)
        self.above = None if spec.mode == "ablate" else plain
        self.system_prompt = system_prompt
        self.gate_batch_size = gate_batch_size
        self._decided: dict[str, bool] = {}  # context -> ablate
        self._docs: dict[str, dict] = {}  # task -> {doc id: ablate}

    # ------------------------------------------------------------------ the decision

    def decide(self, contexts: list[str]) -> list[bool]:
        """Whether each context's document is ablated; each distinct context is read once and kept."""
        new = [c for c in dict.fromkeys(contexts) if c not in self._decided]
        if new:
            rows = gate_decisions(self.model, self.tokenizer, self.spec, new, self.system_prompt, self.gate_batch_size)
            self._decided.update(zip(new, rows.tolist()))
        return [self._decided[c] for c in contexts]

    def gate_counts(self) -> dict[str, dict[str, int]]:
        """``{task: {"ablated": n, "kept": m}}`` over the documents scored so far."""
        return {task: {"ablated": sum(docs.values()), "kept": len(docs) - sum(docs.values())}
                for task, docs in sorted(self._docs.items())}

    def _by_decision(self, requests: list, run: Callable[[list], list]) -> list:
        ablate = self.decide([req.args[0] for req in requests])
        for req, a in zip(requests, ablate):
            doc = req.doc_id if req.doc_id is not None else req.args[0]
            self._docs.setdefault(str(req.task_name), {})[doc] = a
        out: list = [None] * len(requests)
        for flag in (True, False):
            idx = [i for i, a in enumerate(ablate) if a == flag]
            if not idx:
                continue
            side = self.below if flag else self.above
            with contextlib.nullcontext() if side is None else steering(self.model, side):
                res = run([requests[i] for i in idx])
            if len(res) != len(idx):
                raise RuntimeError(f"lm-eval returned {len(res)} results for {len(idx)} requests")
            for i, r in zip(idx, res):
                out[i] = r
        return out

    # ------------------------------------------------------------------ lm-eval's request types

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._by_decision(requests, lambda rs: HFLM.loglikelihood(self, rs, disable_tqdm=disable_tqdm))

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._by_decision(requests, lambda rs: HFLM.generate_until(self, rs, disable_tqdm=disable_tqdm))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("gated steering decides on a prompt, and loglikelihood_rolling requests have none: "
                                  "score perplexity tasks on the ungated variants")
