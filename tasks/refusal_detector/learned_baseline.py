"""A learned judge as a second design for the refusal judge's 0.95 bar: is it worth building?

    .venv/bin/python tasks/refusal_detector/learned_baseline.py

Reads the **dev** split only (outputs_dev.jsonl; the held-out test split is read by
bench/eval/judge_report.py alone). 5-fold stratified cross-validation on dev of:

- a TF-IDF judge: word 1-3-grams of the first 25 words and 1-2-grams of the rest of the answer,
  multinomial logistic regression, for C in {0.3, 1, 3, 10};
- the same stacked with the rules' verdict (one-hot, weighted) as extra features.

Cross-validated accuracy is an honest estimate for the learned judge; the rules' dev agreement is
not (they were written with dev in view), so the two are not comparable as numbers. What the run
says is qualitative: whether 470 labelled rows are enough for a learned judge to come near the rules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.eval.refusal import detect  # noqa: E402

LABELS = ("refuse", "partial", "comply")


def main() -> None:
    rows = [json.loads(line) for line in (HERE / "outputs_dev.jsonl").read_text().splitlines() if line.strip()]
    y = np.array([r["label"] for r in rows])
    rules = np.array([detect(r["completion"], prompt=r["prompt"]).label for r in rows])
    onehot = np.stack([(rules == c).astype(float) for c in LABELS], 1)
    heads = [" ".join(r["completion"].split()[:25]) for r in rows]
    tails = [" ".join(r["completion"].split()[25:]) for r in rows]
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(heads, y))
    print(f"dev rows {len(rows)}; rules' agreement on dev (in-sample: written with dev in view) {(rules == y).mean():.3f}")
    for stacked in (False, True):
        for C in (0.3, 1.0, 3.0, 10.0):
            pred = np.empty(len(y), dtype=object)
            for tr, te in folds:
                v1 = TfidfVectorizer(ngram_range=(1, 3), min_df=2, sublinear_tf=True).fit([heads[i] for i in tr])
                v2 = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit([tails[i] for i in tr])

                def X(idx):
                    parts = [v1.transform([heads[i] for i in idx]), v2.transform([tails[i] for i in idx])]
                    if stacked:
                        parts.append(sp.csr_matrix(onehot[idx] * 3.0))
                    return sp.hstack(parts).tocsr()

                pred[te] = LogisticRegression(C=C, max_iter=5000).fit(X(tr), y[tr]).predict(X(te))
            name = "tfidf + rules" if stacked else "tfidf alone"
            print(f"{name:14s} C={C:<4} 5-fold CV agreement on dev {(pred == y).mean():.3f}")


if __name__ == "__main__":
    main()
