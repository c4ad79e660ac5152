"""    .venv/bin/python tasks/steer_gate/probe.py runs/default/sft/model   (docs/experiments.md#steer-gate-cast)

How well does the SFT policy's own prompt-end activation separate harmful from borderline-safe prompts
on the validation split (unseen triggers)? Per layer: diff-of-means (train harmful - train benign, as the
steering gate) AUROC, and a logistic probe on train harmful vs benign+borderline; TPR at FPR<=.10 on val."""
import sys, torch, numpy as np
import os; sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from bench.config import load_config
from bench.eval.inputs import refusal_sets
from bench.models import load_pretrained
from bench.steer.directions import activations
from bench.steer.gate import auroc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
torch.set_num_threads(1)
cfg = load_config('default')
model_dir = sys.argv[1]
tr, _ = refusal_sets(cfg, 'train', capped=False)
va, _ = refusal_sets(cfg, 'validation', capped=False)
print({k: len(v) for k, v in tr.items()}, {k: len(v) for k, v in va.items()})
model, tok = load_pretrained(model_dir, cfg.model)
def acts(rows, cap=200):
    return activations(model, tok, [r['prompt'] for r in rows[:cap]], cfg.model.system_prompt, positions=1, position_index=0)
H, B, D = acts(tr['refusal_harmful']), acts(tr['over_refusal_benign']), acts(tr['over_refusal_borderline'])
vH, vB, vD = acts(va['refusal_harmful']), acts(va['over_refusal_benign']), acts(va['over_refusal_borderline'])
out = {}
for l in range(1, H.shape[1]):
    u = H[:, l].mean(0) - B[:, l].mean(0); u = u / u.norm()
    out[l] = (auroc(vH[:, l] @ u, vD[:, l] @ u), auroc(vH[:, l] @ u, vB[:, l] @ u))
best = max(out, key=lambda k: out[k][0])
print('diff-of-means: best layer', best, 'val AUROC harmful>borderline %.3f, harmful>benign %.3f' % out[best])
def tpr_at(pos, neg, fpr):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]; s = np.r_[pos, neg]
    f, t, _ = roc_curve(y, s); return float(t[f <= fpr].max())
for l in sorted({best, 16, 20, 24, 28}):
    X = torch.cat([H[:, l], B[:, l], D[:, l]]).numpy(); y = np.r_[np.ones(len(H)), np.zeros(len(B) + len(D))]
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(X, y)
    sH, sD, sB = (clf.decision_function(v[:, l].numpy()) for v in (vH, vD, vB))
    print(f'probe layer {l}: val AUROC harmful>borderline {roc_auc_score(np.r_[np.ones(len(sH)), np.zeros(len(sD))], np.r_[sH, sD]):.3f}; '
          f'TPR at borderline FPR<=.10: {tpr_at(sH, sD, .10):.2f}; TPR at benign FPR<=.05: {tpr_at(sH, sB, .05):.2f}')
print('--- diff-of-means harmful vs (benign + borderline) train, per layer: val AUROC harm>border, harm>benign, TPR@border FPR<=.10, TPR@benign FPR<=.05')
for l in range(8, H.shape[1]):
    u = H[:, l].mean(0) - torch.cat([B[:, l], D[:, l]]).mean(0); u = u / u.norm()
    sH, sD, sB = ((v[:, l] @ u).numpy() for v in (vH, vD, vB))
    print(l, round(auroc(torch.tensor(sH), torch.tensor(sD)), 3), round(auroc(torch.tensor(sH), torch.tensor(sB)), 3),
          round(tpr_at(sH, sD, .10), 2), round(tpr_at(sH, sB, .05), 2))
