"""Forward-pass scan of every refusal-direction candidate, as in Arditi et al. (2024) / refusal_direction.

Part of ``make steer`` (``bench steer --profile P``): :func:`bench.steer.directions.select_direction`
calls :func:`scan_candidates` on the validation prompts, filters with :func:`filter_reason` and, with
``steer.selection: scan``, picks the surviving candidate with the lowest bypass score (with
``generation`` the scan is recorded and plotted but does not choose). No generation inside the scan:
one forward pass per prompt batch and intervention, reading the next-token distribution at the first
answer position, or (``steer.scan_tokens`` > 1) at the first few positions of teacher-forced answers
(the policy's own, generated once, unsteered, before the scan).

Scores per candidate ``(layer, position)`` with direction ``r`` (the raw difference of means):

- ``bypass``: mean :func:`refusal_score` of the harmful validation prompts with ``r`` ablated
  from every residual write (lower: ablation removes refusal better).
- ``induce``: mean :func:`refusal_score` of the harmless (benign) validation prompts with ``r``
  added (``alpha * r``) at the candidate's layer (higher: addition induces refusal).
- ``kl``: mean :func:`next_token_kl` between the unsteered and the ablated next-token distributions
  on the harmless validation prompts: the side effect of ablation on text it should leave alone.

Refusal tokens
    refusal_direction scores refusal by the probability of the model's typical refusal openers at the
    first answer token (Llama-3 / Gemma: ``"I"``; Qwen: ``"I"``, ``"As"``). We take the *first token*
    of each opener in ``steer.refusal_openers`` (default :data:`DEFAULT_REFUSAL_OPENERS`) as the
    tokenizer splits it at the start of the assistant turn; for SmolLM2 that is ``I``, ``As``,
    ``Sorry`` and ``Unfortunately``. ``I`` also opens compliant answers (``I'd be happy to``), so the
    unsteered scores are recorded next to the steered ones: the scan reads differences, not levels.

Several answer tokens (``steer.scan_tokens`` > 1; :class:`OpenerReadout`)
    When the policy's refusals and compliances share their first token (the default SFT policy: "I
    understand why you might ask, but I can't ..." vs "I'd be happy to ..."), the first-token score
    cannot see refusal and the next-token KL cannot see a compliant opener turning into a refusal
    ("Happy to help. I can't do that"). The scan then reads ``k`` answer tokens: refusal is the
    log-odds that the answer starts with one of the policy's own refusal openers (the first ``k``
    tokens of its unsteered greedy refusals on the harmful validation prompts, teacher-forced), and
    the KL is the mean per-token KL over the first ``k`` tokens of its own unsteered answers to the
    harmless validation prompts. ``k = 1`` with the openers' first tokens is the reference's score.

Filter (refusal_direction's ``filter_fn``; :func:`filter_reason`)
    a candidate is discarded when a score is not finite, when its layer is in the last
    ``prune_layer_fraction`` of the model (hidden-state index ``l >= int(n_layers * (1 - fraction))``,
    the same cut as the reference's ``resid_pre`` layer index), when it is beyond ``skip_last_layers``,
    when ``kl > max_kl``, or when ``induce <= 0`` (addition does not make refusal tokens more likely
    than not). The reason is recorded per candidate.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from bench.precision import generation_autocast
from bench.steer.settings import REFUSAL_OPENERS as DEFAULT_REFUSAL_OPENERS  # the steer section's default (one owner)
from bench.tensors import position_ids

# --------------------------------------------------------------------------- pure functions


def refusal_score(logits: torch.Tensor, refusal_ids: Sequence[int], eps: float = 1e-8) -> torch.Tensor:
    """Log-odds of the refusal tokens at one position (refusal_direction's ``refusal_score``).

    ``logits``: ``(B, V)`` next-token logits. With ``p = softmax(logits)`` and ``R`` the refusal tokens,
    ``P_R = sum_{t in R} p_t`` and ``score = log(P_R + eps) - log(1 - P_R + eps)``; float64, ``(B,)``.
    """
    if not len(refusal_ids):
        raise ValueError("refusal_score: no refusal tokens")
    p = torch.softmax(logits.to(torch.float64), dim=-1)  # (B, V)
    pr = p[:, list(refusal_ids)].sum(dim=-1)  # (B,)
    return torch.log(pr + eps) - torch.log(1.0 - pr + eps)


def next_token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q) = sum_v P_v (log P_v - log Q_v)`` per row of ``(B, V)`` logits, with
    ``P = softmax(logits_p)`` (unsteered) and ``Q = softmax(logits_q)`` (steered); float64, ``(B,)``.
    Computed with log-softmax (exact; no epsilon), so it is 0 for equal rows and >= 0 always."""
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"next_token_kl: shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    lp = torch.log_softmax(logits_p.to(torch.float64), dim=-1)
    lq = torch.log_softmax(logits_q.to(torch.float64), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1).clamp(min=0.0)


def pruned_from(num_layers: int, prune_layer_fraction: float) -> int:
    """First hidden-state index in the pruned tail: ``int(n_layers * (1 - fraction))`` (the reference's
    cut; ``fraction = 0`` prunes nothing, i.e. returns ``n_layers + 1``)."""
    if not 0.0 <= prune_layer_fraction < 1.0:
        raise ValueError(f"prune_layer_fraction must be in [0, 1), got {prune_layer_fraction}")
    return num_layers + 1 if prune_layer_fraction == 0 else int(num_layers * (1.0 - prune_layer_fraction))


def filter_reason(cand: dict, num_layers: int, *, prune_layer_fraction: float = 0.2, skip_last_layers: int = 0,
                  max_kl: float | None = 0.1, min_induce: float | None = 0.0) -> str | None:
    """Why ``cand`` (``{"layer", "bypass", "induce", "kl"}``) is discarded, or None if it is kept.
    Order: non-finite score, pruned layer, ``skip_last_layers``, KL above ``max_kl``,
    ``induce <= min_induce``. ``None`` bounds switch a test off."""
    vals = [cand.get(k) for k in ("bypass", "induce", "kl")]
    if any(v is None or not math.isfinite(v) for v in vals):
        return "nan"
    if cand["layer"] >= pruned_from(num_layers, prune_layer_fraction):
        return "pruned"
    if cand["layer"] > num_layers - skip_last_layers:
        return "skip_last_layers"
    if max_kl is not None and cand["kl"] > max_kl:
        return "kl"
    if min_induce is not None and cand["induce"] <= min_induce:
        return "induce"
    return None


def choice_pool(cands: list[dict]) -> tuple[list[dict], str | None]:
    """The candidates the choice is made among: those with ``filtered is None``; when none survives, the
    least-filtered tier (not pruned and within the KL bound, then not pruned, then any finite), with a
    note saying so."""
    finite = [c for c in cands if c.get("filtered") != "nan"]
    if not finite:
        raise ValueError("every candidate has a non-finite score")
    tiers = [("", lambda c: c["filtered"] is None),
             ("no candidate passed every filter; chosen among unpruned candidates within the KL bound",
              lambda c: c["filtered"] in (None, "induce")),
             ("no unpruned candidate is within the KL bound; chosen among unpruned candidates",
              lambda c: c["filtered"] in (None, "induce", "kl")),
             ("every candidate is pruned; chosen among all", lambda c: True)]
    for note, ok in tiers:
        pool = [c for c in finite if ok(c)]
        if pool:
            return pool, (note or None)
    raise AssertionError("unreachable")


def choose(cands: list[dict]) -> tuple[dict, str | None]:
    """The candidate with the lowest bypass in :func:`choice_pool` (ties: lower layer, then position)."""
    pool, note = choice_pool(cands)
    return min(pool, key=lambda c: (c["bypass"], c["layer"], c["position"])), note


# --------------------------------------------------------------------------- model side


def refusal_token_ids(tok, openers: Sequence[str] = DEFAULT_REFUSAL_OPENERS) -> tuple[list[int], list[str]]:
    """First token of each opener (deduplicated, in order) and its text."""
    ids: list[int] = []
    for o in openers:
        enc = tok(o, add_special_tokens=False)["input_ids"]
        if enc and enc[0] not in ids:
            ids.append(int(enc[0]))
    if not ids:
        raise ValueError(f"refusal_token_ids: no tokens from {list(openers)!r}")
    return ids, [tok.decode([i]) for i in ids]


def encode_batches(tok, texts: Sequence[str], batch_size: int) -> list[dict]:
    """Left-padded batches of already formatted prompts with ``position_ids`` from the attention mask."""
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
            enc["position_ids"] = position_ids(enc["attention_mask"])  # (B, L)
            out.append(dict(enc))
        return out
    finally:
        tok.padding_side = old


@torch.no_grad()
def last_logits(model, batches: list[dict]) -> torch.Tensor:
    """Next-token logits at the last prompt token, ``(N, V)`` float32 (only that position is projected)."""
    rows = []
    for enc in batches:
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out = model(**enc, use_cache=False, logits_to_keep=1)
        rows.append(out.logits[:, -1, :].float().cpu())
    return torch.cat(rows)


# --------------------------------------------------------------------------- several answer tokens


def prefix_free(seqs: Sequence[Sequence[int]]) -> list[list[int]]:
    """Distinct non-empty sequences, in order, dropping any that extends another one in the set: the
    events "the answer starts with s" are then disjoint, so their probabilities add up to at most 1."""
    uniq: list[tuple[int, ...]] = []
    for s in seqs:
        t = tuple(int(x) for x in s)
        if t and t not in uniq:
            uniq.append(t)
    return [list(t) for t in uniq if not any(o != t and t[:len(o)] == o for o in uniq)]


def own_openers(tok, answers: Sequence[str], refused: Sequence[bool], tokens: int, max_openers: int) -> list[list[int]]:
    """The policy's own refusal openers: the first ``tokens`` tokens of each answer the judge calls a
    refusal (tokenized as the answer starts the assistant turn), the ``max_openers`` most frequent
    (ties: first seen), made :func:`prefix_free`."""
    if tokens < 1 or max_openers < 1:
        raise ValueError(f"own_openers: tokens and max_openers must be >= 1, got {tokens}, {max_openers}")
    counts: dict[tuple[int, ...], int] = {}
    for a, r in zip(answers, refused, strict=True):
        ids = tuple(tok(a, add_special_tokens=False)["input_ids"][:tokens]) if r else ()
        if ids:
            counts[ids] = counts.get(ids, 0) + 1
    top = sorted(counts, key=lambda k: -counts[k])[:max_openers]  # sorted is stable: ties keep first-seen order
    return prefix_free(top)


def openers_score(logps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Log-odds that the answer starts with one of ``R`` prefix-free openers, from ``logps`` ``(B, R)`` =
    ``log P(opener_r | prompt)`` (teacher-forced sums over the opener's tokens): ``P_R = sum_r exp(logps_r)``
    and ``score = log(P_R + eps) - log(1 - P_R + eps)``, float64 ``(B,)``. With one-token openers this is
    :func:`refusal_score`."""
    pr = torch.exp(logps.to(torch.float64)).sum(dim=-1).clamp(max=1.0)
    return torch.log(pr + eps) - torch.log(1.0 - pr + eps)


def encode_continuations(tok, texts: Sequence[str], conts: Sequence[Sequence[int]], batch_size: int) -> list[dict]:
    """Left-padded batches of ``prompt + continuation`` token rows (formatted prompts, continuation token
    ids, each non-empty), with ``position_ids`` from the mask and ``cont_len`` ``(B,)``."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(texts), batch_size):
        rows, lens = [], []
        for t, c in zip(texts[i:i + batch_size], conts[i:i + batch_size], strict=True):
            if not len(c):
                raise ValueError("encode_continuations: an empty continuation")
            rows.append(tok(t, add_special_tokens=False)["input_ids"] + [int(x) for x in c])
            lens.append(len(c))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attn[j, width - len(r):] = 1
        out.append({"input_ids": ids, "attention_mask": attn, "position_ids": position_ids(attn),
                    "cont_len": torch.tensor(lens, dtype=torch.long)})
    return out


@torch.no_grad()
def continuation_logprobs(model, batches: list[dict]) -> list[torch.Tensor]:
    """Per row, the log-softmax next-token distributions that predict its continuation tokens,
    ``(m_i, V)`` float32 (row ``i``'s ``m_i`` continuation tokens; position ``j`` is conditioned on
    the prompt and continuation tokens ``< j``, i.e. teacher forcing)."""
    rows: list[torch.Tensor] = []
    for enc in batches:
        lens = enc["cont_len"]
        m = int(lens.max())
        inp = {k: v.to(model.device) for k, v in enc.items() if k != "cont_len"}
        logits = model(**inp, use_cache=False, logits_to_keep=m + 1).logits[:, :-1, :]  # (B, m, V)
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        rows += [lp[j, m - int(lens[j]):] for j in range(lp.shape[0])]
    return rows


@torch.no_grad()
def opener_logprobs(model, batches: list[dict], openers: Sequence[Sequence[int]]) -> torch.Tensor:
    """``log P(opener_r | prompt)`` for every prompt of ``batches`` (:func:`encode_batches`) and opener,
    ``(N, R)`` float64, teacher-forced: one pass over the prompts fills a KV cache, which is repeated
    for the ``R`` openers and continued by all of them in one pass (the openers right-padded; a padded
    tail cannot affect earlier positions). Equal to scoring each ``prompt + opener`` row alone."""
    R, m = len(openers), max(len(o) for o in openers)
    cont = torch.zeros((R, m), dtype=torch.long)
    cmask = torch.zeros((R, m), dtype=torch.long)
    for r, o in enumerate(openers):
        cont[r, :len(o)] = torch.as_tensor(list(o), dtype=torch.long)
        cmask[r, :len(o)] = 1
    lens = cmask.sum(dim=1)  # (R,)
    out = []
    for enc in batches:
        enc = {k: v.to(model.device) for k, v in enc.items()}
        B = enc["input_ids"].shape[0]
        first = model(**enc, use_cache=True, logits_to_keep=1)
        lp0 = torch.log_softmax(first.logits[:, -1, :].float(), dim=-1).cpu()  # (B, V): each opener's first token
        total = lp0[:, cont[:, 0]].to(torch.float64)  # (B, R)
        if m > 1:
            past = first.past_key_values
            past.batch_repeat_interleave(R)  # row b * R + r
            ids = cont.repeat(B, 1).to(model.device)  # (B*R, m)
            attn = torch.cat([enc["attention_mask"].repeat_interleave(R, dim=0), cmask.repeat(B, 1).to(model.device)], dim=1)
            pos = enc["position_ids"][:, -1:].repeat_interleave(R, dim=0) + 1 + torch.arange(m, device=model.device)
            logits = model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos[:, :-1],
                           past_key_values=past, use_cache=True).logits  # (B*R, m-1, V): predicts tokens 1..m-1
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            tok_lp = lp.gather(2, cont.repeat(B, 1)[:, 1:, None]).squeeze(2).to(torch.float64)  # (B*R, m-1)
            keep = (torch.arange(1, m)[None, :] < lens.repeat(B)[:, None])  # the opener's own tokens
            total = total + (tok_lp * keep).sum(dim=1).view(B, R)
        out.append(total)
    return torch.cat(out)


def mean_token_kl(p: Sequence[torch.Tensor], q: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per row, the mean over its positions of ``KL(P_j || Q_j)`` (log-prob rows ``(m_i, V)``), float64."""
    return torch.stack([next_token_kl(a, b).mean() for a, b in zip(p, q, strict=True)])


class FirstTokenReadout:
    """refusal_direction's read-out: the refusal tokens' log-odds and the next-token distribution at
    the first answer position (one forward pass per prompt batch, no answer tokens)."""

    kind = "first_token"
    unsteered_refusal: dict | None = None  # set by build_readout when it generated the policy's answers

    def __init__(self, tok, texts_harmful: Sequence[str], texts_harmless: Sequence[str], refusal_ids: Sequence[int],
                 batch_size: int):
        self.ids = list(refusal_ids)
        self.batches = {"harmful": encode_batches(tok, texts_harmful, batch_size),
                        "harmless": encode_batches(tok, texts_harmless, batch_size)}

    def refusal(self, model, which: str) -> torch.Tensor:
        return refusal_score(last_logits(model, self.batches[which]), self.ids)

    def harmless(self, model) -> list[torch.Tensor]:
        return list(torch.log_softmax(last_logits(model, self.batches["harmless"]), dim=-1)[:, None, :])

    def info(self) -> dict:
        return {"readout": self.kind}


class OpenerReadout:
    """A read-out over several answer tokens, in the policy's own words (issue 22: this policy's refusals
    and compliances share their first token, so a first-token score cannot tell them apart).

    - refusal score of a prompt: :func:`openers_score` of the policy's own refusal openers
      (:func:`own_openers`, from its unsteered greedy answers to the harmful validation prompts), each
      teacher-forced after the prompt: the log-odds that the answer starts with one of them;
    - harmless distributions: at each of the first ``tokens`` tokens of the policy's own unsteered
      greedy answer to each harmless prompt (teacher-forced), so the KL is the mean per-token KL over
      the start of the answer it would have given, not only its first token.
    """

    kind = "openers"
    unsteered_refusal: dict | None = None  # set by build_readout: the refusal rates of the answers it used

    def __init__(self, tok, texts_harmful: Sequence[str], texts_harmless: Sequence[str], openers: Sequence[Sequence[int]],
                 harmless_answers: Sequence[Sequence[int]], batch_size: int):
        if not openers:
            raise ValueError("OpenerReadout: no refusal openers")
        self.openers = [list(o) for o in openers]
        self.answers = [list(a) for a in harmless_answers]
        self.batches = {"harmful": encode_batches(tok, texts_harmful, batch_size),
                        "harmless": encode_batches(tok, texts_harmless, batch_size)}
        self.kl_batches = encode_continuations(tok, list(texts_harmless), self.answers, batch_size)
        self.tok = tok

    def refusal(self, model, which: str) -> torch.Tensor:
        return openers_score(opener_logprobs(model, self.batches[which], self.openers))

    def harmless(self, model) -> list[torch.Tensor]:
        return continuation_logprobs(model, self.kl_batches)

    def info(self) -> dict:
        return {"readout": self.kind, "openers": [self.tok.decode(o) for o in self.openers],
                "kl_answer_tokens": max(len(a) for a in self.answers)}


def build_readout(tok, val_harmful: Sequence[str], val_benign: Sequence[str], texts_harmful: Sequence[str],
                  texts_harmless: Sequence[str], *, tokens: int, batch_size: int,
                  refusal_openers: Sequence[str] = DEFAULT_REFUSAL_OPENERS, max_openers: int = 4,
                  own_answers: Callable[[list[str]], tuple[list[str], list[bool]]] | None = None):
    """The scan's read-out (``steer.scan_tokens``): ``tokens == 1`` is refusal_direction's
    :class:`FirstTokenReadout` on the first tokens of ``refusal_openers``; ``tokens > 1`` an
    :class:`OpenerReadout` over the first ``tokens`` tokens of the policy's own unsteered greedy answers
    (``own_answers(prompts) -> (answers, judged refusal)``). Falls back to the first-token read-out, with
    a note, when the policy refuses none of the harmful validation prompts. Returns ``(readout, note)``; with
    ``tokens > 1`` the readout's ``unsteered_refusal`` holds the judged refusal rates of those answers
    (``own_answers`` must generate as selection's ``refusal_rate`` does: it is selection's baseline)."""
    ids, _ = refusal_token_ids(tok, refusal_openers)
    if tokens < 1:
        raise ValueError(f"scan tokens must be >= 1, got {tokens}")
    if tokens == 1:
        return FirstTokenReadout(tok, texts_harmful, texts_harmless, ids, batch_size), None
    if own_answers is None:
        raise ValueError("a read-out over several answer tokens needs the policy's own answers (own_answers)")
    ans_h, ref_h = own_answers(list(val_harmful))
    ans_b, ref_b = own_answers(list(val_benign))
    # the unsteered refusal rates these answers give: selection's baseline need not generate them again
    rates = {"refusal_harmful": sum(ref_h) / max(len(ref_h), 1), "refusal_benign": sum(ref_b) / max(len(ref_b), 1)}
    openers = own_openers(tok, ans_h, ref_h, tokens, max_openers)
    if not openers:
        note = (f"the policy refused none of the {len(ans_h)} harmful validation prompts: no refusal openers of "
                f"its own; the scan fell back to the first-token read-out")
        readout = FirstTokenReadout(tok, texts_harmful, texts_harmless, ids, batch_size)
    else:
        end = tok.eos_token_id
        answers = [tok(a, add_special_tokens=False)["input_ids"][:tokens] or [end] for a in ans_b]  # empty: it stopped
        readout, note = OpenerReadout(tok, texts_harmful, texts_harmless, openers, answers, batch_size), None
    readout.unsteered_refusal = rates
    return readout, note


def scan_candidates(model, directions: torch.Tensor, cands: list[dict], readout, *, positions: int,
                    add_alpha: float, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Fill ``bypass``, ``induce`` and ``kl`` into each of ``cands`` (``{"layer", "position"}``,
    position a negative offset) and return the unsteered baselines. ``readout``: a
    :class:`FirstTokenReadout` (the reference's) or an :class:`OpenerReadout` over the validation prompts."""
    from bench.steer.hooks import steering

    was_training = model.training
    model.eval()
    try:
        with generation_autocast(model):  # bf16 models: one cast of the weights for the whole scan, not per forward
            base_d = readout.harmless(model)
            baseline = {"refusal_score_harmful": float(readout.refusal(model, "harmful").mean()),
                        "refusal_score_harmless": float(readout.refusal(model, "harmless").mean())}
            for i, c in enumerate(cands):
                r = directions[c["layer"], positions + c["position"]].to(torch.float32)  # offset -> index
                with steering(model, r, mode="ablate"):
                    c["bypass"] = float(readout.refusal(model, "harmful").mean())
                    abl_d = readout.harmless(model)
                with steering(model, r, mode="add", layer=c["layer"], alpha=add_alpha):
                    c["induce"] = float(readout.refusal(model, "harmless").mean())
                c["kl"] = float(mean_token_kl(base_d, abl_d).mean())
                if (i + 1) % 10 == 0 or i + 1 == len(cands):
                    progress(f"  scan {i + 1}/{len(cands)}")
    finally:
        model.train(was_training)
    return baseline


@torch.no_grad()
def harmless_kl(model, readout, steer_ctx: Callable) -> float:
    """Mean KL on the read-out's harmless rows (per token, then per prompt) between the unsteered model
    and the model inside ``steer_ctx()`` (a context manager factory, e.g. ``lambda: steering(model, spec)``)."""
    with generation_autocast(model):  # one cast of the weights for both passes
        base = readout.harmless(model)
        with steer_ctx():
            steered = readout.harmless(model)
    return float(mean_token_kl(base, steered).mean())


# --------------------------------------------------------------------------- plot


def plot_scan(cands: list[dict], baseline: dict, path, *, max_kl: float | None, title: str = ""):
    """Three panels (bypass, induce, KL) against layer, one line per position; filtered-out candidates
    as hollow markers, kept ones filled, the chosen one starred; unsteered baselines dashed, the
    KL bound dotted (KL on a log axis), the pruned layers shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import save_png

    positions = sorted({c["position"] for c in cands})
    pruned = [c["layer"] for c in cands if c.get("filtered") in ("pruned", "skip_last_layers")]
    panels = [("bypass", "bypass: refusal score, harmful, ablated (lower better)", baseline.get("refusal_score_harmful")),
              ("induce", "induce: refusal score, harmless, added (> 0 kept)", baseline.get("refusal_score_harmless")),
              ("kl", "KL(unsteered || ablated), harmless next token", None)]
    def val(c: dict, key: str) -> float:
        v = c.get(key)
        v = math.nan if v is None else float(v)
        return max(v, 1e-6) if key == "kl" else v  # KL on a log axis

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, name, base) in zip(axes, panels):
        for j, p in enumerate(positions):
            cs = sorted((c for c in cands if c["position"] == p), key=lambda c: c["layer"])
            color = f"C{j}"
            ax.plot([c["layer"] for c in cs], [val(c, key) for c in cs], color=color, lw=1.2, label=f"position {p}")
            kept = [c for c in cs if c.get("filtered") is None]
            ax.scatter([c["layer"] for c in kept], [val(c, key) for c in kept], color=color, s=14, zorder=3)
            out = [c for c in cs if c.get("filtered") is not None]
            ax.scatter([c["layer"] for c in out], [val(c, key) for c in out], facecolors="none",
                       edgecolors=color, s=14, zorder=3)
        for c in cands:
            if c.get("chosen"):
                ax.scatter([c["layer"]], [val(c, key)], marker="*", s=160, color="black", zorder=4, label="chosen")
        if base is not None:
            ax.axhline(base, color="gray", ls="--", lw=1, label="unsteered")
        if key == "kl" and max_kl is not None:
            ax.axhline(max_kl, color="red", ls=":", lw=1, label="KL bound")
            ax.set_yscale("log")
        if key == "induce":
            ax.axhline(0.0, color="red", ls=":", lw=1)
        if pruned:
            ax.axvspan(min(pruned) - 0.5, max(pruned) + 0.5, color="gray", alpha=0.12, lw=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("layer (hidden-state index)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[0].legend(handles, labels, fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path, dpi=100, legend=False)
