"""A third design for the refusal judge's 0.95 bar: a linear probe on a frozen chat model's activations.

    OMP_NUM_THREADS=1 .venv/bin/python tasks/refusal_detector/probe_baseline.py   # ~8 min on one core
    .venv/bin/python tasks/refusal_detector/probe_baseline.py --grid     # + the layer / pooling / C grid (~25 min)

The rules (``bench.eval.refusal``) read wording; a fresh labelled batch brings wording they have not
seen (judge 2.2.0: 0.982 on the rows it was tuned on, 0.883 and 0.906 on two batches it was not).
This script asks whether a model's reading of the answer does better with the labels we have: it
runs SmolLM2-135M-Instruct (the default profile's base model, built by ``make setup``) over the
chat-formatted (prompt, answer), takes the hidden states after block 18 of 30 (the last token, the
mean over the answer's tokens and the mean over its first 16 tokens), and fits a multinomial logistic
regression (standardised features, C = 0.1) on the tuning rows (outputs_dev, outputs_dev2,
labelled.jsonl: 1,380). Layer, pooling and C were chosen by 5-fold cross-validation on the tuning
rows only (``--grid``); the held-out splits (outputs_test, outputs_test3) are scored once. "+ rules"
appends the rules' verdict (one-hot) to the features.

Measured 2026-12-05 (docs/experiments.md#refusal-judge-v2): held-out agreement test / test3: rules
0.883 / 0.906, probe 0.924 / 0.924, probe + rules 0.930 / 0.924 (this script, OMP_NUM_THREADS=1; an exploratory run
with the same settings gave 0.927 / 0.921: bf16 forward passes differ in the last bits between runs). Learning curve on test3 (probe, half /
three quarters / all of the tuning rows, then + test): 0.912 / 0.918 / 0.921 / 0.927. The probe is
2-4 points better than the rules on outputs neither has seen, and still short of 0.95; more labels
move it by under a point per 350 rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.eval import judge_report, refusal  # noqa: E402

LABELS = ("refuse", "partial", "comply")
TUNING = ("outputs_dev", "outputs_dev2", "labelled")
HELD_OUT = ("outputs_test", "outputs_test3")
LAYERS = (6, 12, 18, 24, 30)  # hidden_states indices (after block n)
CHOSEN = (18, "all", 0.1)  # layer, pooling, C: best 5-fold CV on the tuning rows (0.938)
MAX_TOKENS = 384


def model_dir() -> Path:
    folder = HERE.parents[1] / ".cache" / "bench" / "models" / "smollm2-135m-instruct"
    if not (folder / "config.json").exists():
        raise SystemExit(f"{folder}: no converted SmolLM2 model; run `make setup` first")
    return folder


def features(rows: list[dict], tok, model) -> np.ndarray:
    """(rows, layers, 3 * hidden): last token, answer mean, first-16-answer-tokens mean per layer."""
    out = []
    for r in rows:
        msgs = [{"role": "user", "content": r.get("prompt") or ""}, {"role": "assistant", "content": r["completion"]}]
        ids = tok.apply_chat_template(msgs, tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
        ids = ids[:, :MAX_TOKENS]
        start = len(tok.apply_chat_template(msgs[:1], tokenize=True, add_generation_prompt=True))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            hs = model(ids, output_hidden_states=True).hidden_states
        per_layer = []
        for layer in LAYERS:
            h = hs[layer][0].float()
            answer = h[min(start, h.shape[0] - 1):]
            per_layer.append(torch.cat([h[-1], answer.mean(0), answer[:16].mean(0)]).numpy())
        out.append(np.stack(per_layer))
    return np.stack(out)


def select(x: np.ndarray, layer: int, pooling: str) -> np.ndarray:
    block = x[:, LAYERS.index(layer)]
    width = block.shape[1] // 3
    return block if pooling == "all" else block[:, {"last": 0, "mean": 1, "head": 2}[pooling] * width:][:, :width]


def probe(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", action="store_true", help="also run the cross-validated layer / pooling / C grid")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    folder = model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    data = {}
    for name in TUNING + HELD_OUT:
        rows = judge_report.load_labelled(HERE / f"{name}.jsonl")
        t = time.time()
        x = features(rows, tok, model)
        y = np.array([LABELS.index(r["label"]) for r in rows])
        rules = np.array([LABELS.index(d.label) for d in
                          refusal.detect_many((r["completion"] for r in rows), (r.get("prompt") for r in rows))])
        data[name] = (x, y, rules)
        print(f"{name}: {len(rows)} rows, features in {time.time() - t:.0f} s", flush=True)
    x_t = np.concatenate([data[n][0] for n in TUNING])
    y_t = np.concatenate([data[n][1] for n in TUNING])
    r_t = np.concatenate([data[n][2] for n in TUNING])
    if args.grid:
        folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x_t, y_t))
        for layer in LAYERS:
            for pooling in ("last", "mean", "head", "all"):
                for c in (0.01, 0.1, 1.0):
                    f = select(x_t, layer, pooling)
                    acc = np.mean([(probe(c).fit(f[a], y_t[a]).predict(f[b]) == y_t[b]).mean() for a, b in folds])
                    print(f"grid layer {layer} pooling {pooling} C {c}: 5-fold CV on tuning rows {acc:.3f}", flush=True)
    layer, pooling, c = CHOSEN
    onehot = np.eye(3) * 3.0
    for stacked in (False, True):
        def design(x, rules):
            f = select(x, layer, pooling)
            return np.hstack([f, onehot[rules]]) if stacked else f
        fitted = probe(c).fit(design(x_t, r_t), y_t)
        for name in HELD_OUT:
            x, y, rules = data[name]
            agree = (fitted.predict(design(x, rules)) == y).mean()
            print(f"{'probe + rules' if stacked else 'probe':13s} {name}: agreement {agree:.3f} "
                  f"(rules {(rules == y).mean():.3f}, n {len(y)})")
    print(json.dumps({"chosen": {"layer": layer, "pooling": pooling, "C": c}}))


if __name__ == "__main__":
    main()
