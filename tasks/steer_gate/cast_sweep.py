"""Validation sweep for steer-gated's CAST strengths and quantile (docs/experiments.md#steer-gate-cast).

    BENCH_RUNS=runs .venv/bin/python tasks/steer_gate/cast_sweep.py -1,-2,-3   # after `bench steer`

Reads the steer stage's gate (record, gate.pt) and direction. Per validation prompt: the gate's read-out;
the answers under steer-add's addition and under each alpha_below (one full generation pass each); for each
quantile q, threshold = q-quantile of the validation harmful prompts' read-outs; the rates of the per-prompt
combination (what the hooks decide once per sequence), and how many benign answers degenerate into
repetition. Writes every generation to runs/default/cast_sweep.json. Validation only; never the test split."""
import sys, json, torch
import os; sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from bench.config import load_config
from bench.eval.inputs import refusal_sets
from bench.models import load_pretrained
from bench.eval.generate import GenerationSettings, generate_greedy
from bench.eval import refusal
from bench.steer.hooks import steering
from bench.steer.spec import SteeringSpec
from bench.steer.directions import activations
cfg = load_config('default')
R = os.path.join(os.environ.get('BENCH_RUNS', 'runs'), 'default')
rec = json.load(open(f'{R}/steer-gated/record.json'))
spec = SteeringSpec.from_record(rec)
va, _ = refusal_sets(cfg, 'validation', capped=False)
keys = [k for k in va if va[k]]
prompts = [r['prompt'] for k in keys for r in va[k]]
sets = [k for k in keys for r in va[k]]
model, tok = load_pretrained(spec.model_dir, cfg.model)
g = spec.gate

from bench.steer.hooks import load_vector, unit_vector
u = unit_vector(load_vector(g.vector_path))
acts = activations(model, tok, prompts, cfg.model.system_prompt, positions=1, position_index=0)[:, g.layer]
proj = (acts @ u).tolist()
harm_proj = torch.tensor([p for p, s in zip(proj, sets) if s == 'refusal_harmful'], dtype=torch.float64)
st = GenerationSettings(cfg.eval.max_new_tokens, cfg.eval.batch_size)
vec_spec = SteeringSpec(mode='add', layer=spec.layer, position=spec.position, alpha=spec.alpha, vector_path=spec.vector_path)
import dataclasses
outs = {}
with steering(model, vec_spec):
    outs['above'] = generate_greedy(model, tok, prompts, cfg.model.system_prompt, st)
for a in [float(x) for x in sys.argv[1].split(',')]:
    with steering(model, dataclasses.replace(vec_spec, alpha=a)):
        outs[a] = generate_greedy(model, tok, prompts, cfg.model.system_prompt, st)
outs['plain'] = generate_greedy(model, tok, prompts, cfg.model.system_prompt, st)
ref = {k: [d.is_refusal for d in refusal.detect_many(v, prompts)] for k, v in outs.items()}
def rates(flags):
    return {k.replace('refusal_', '').replace('over_', ''): round(sum(f for f, s in zip(flags, sets) if s == k) / sum(s == k for s in sets), 3) for k in keys}
print('alpha above', spec.alpha, 'layer', spec.layer, 'gate layer', g.layer, 'stage threshold', g.threshold)
for k in outs: print('all prompts', k, rates(ref[k]))
for q in [0.0, 0.02, 0.05, 0.10, 0.15, 0.20]:
    thr = float(torch.quantile(harm_proj, q))
    above = [p >= thr for p in proj]
    print(f'q {q:.2f} thr {thr:.2f} reads harmful:', rates(above))
    for a in [x for x in outs if isinstance(x, float)] + ['plain']:
        comb = [ra if ab else rb for ra, rb, ab in zip(ref['above'], ref[a], above)]
        print(f'   below {a}:', rates(comb))
def degenerate(t):  # a long answer with few distinct words: repetition
    w = t.split()
    return len(w) > 6 and len(set(w)) / len(w) < 0.4
benign = [i for i, s in enumerate(sets) if s == 'over_refusal_benign']
for k in outs: print('degenerate benign answers', k, sum(degenerate(outs[k][i]) for i in benign), 'of', len(benign))
json.dump({'prompts': prompts, 'sets': sets, 'proj': proj, **{str(k): v for k, v in outs.items()}}, open(os.path.join(R, 'cast_sweep.json'), 'w'))
