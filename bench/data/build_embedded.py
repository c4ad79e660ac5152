"""Generate the embedded default data in ``tasks/data/`` from the hand-written text in
:mod:`bench.data.embedded_text`. Deterministic: the same code gives the same bytes.

    python -m bench.data.build_embedded            # rewrite tasks/data/*.jsonl and MANIFEST.json
    python -m bench.data.build_embedded --check    # exit 1 if the committed files differ
    python -m bench.data.build_embedded --out DIR  # write somewhere else (tests)

How the splits are made (disjoint by prompt, and by the underlying item):
- harmful: per harm category, the 12 *goals* (the underlying requests) are shuffled into 7 train,
  2 validation and 3 test goals; each goal is phrased with several frames (7 train, 3 validation,
  4 test of which 2 use frames that never occur in train or validation). So the test split measures
  generalisation to unseen requests, partly in unseen phrasings.
- benign: the 96 hand-answered items go 64 / 12 / 20 to train / validation / test; the templated
  benign requests (no answers, prompt sets only) 18 / 20 / 40.
- borderline-safe (issue 25): per XSTest type about 50 answered items (:mod:`bench.data.borderline_text`),
  split by *trigger* (:mod:`bench.data.trigger_split`, shares 0.5 / 0.15 / 0.35 of each type's items):
  no validation or test prompt contains a trigger word, name or term of another split, and each split
  wraps its prompts in frames of its own (train: bare or a few greetings). So both held-out splits
  measure over-refusal on unseen triggers in unseen phrasings. Train and validation items give one
  demonstration and two pairs each (helpful vs terse / needless refusal); unsafe contrasts 2 / 1 / 2.
- test-only additions (issue 21, :func:`add_test_extras`): 20 more harmful goals (2 per category) and 136
  more helpfulness items (each also one benign prompt),
  appended to the test files after everything above from their own random stream, so the train and
  validation files, the pairs and the original test rows stay byte for byte as they were.

Preference pairs (PKU-SafeRLHF schema). ``better_response_id`` follows PKU's helpfulness rule
(how directly the response serves the request, judged regardless of harm); ``safer_response_id``
marks the safer response (a safe response always outranks an unsafe one):
- harmful prompt: refusal with reason + safe alternative vs placeholder compliance (better =
  compliance, safer = refusal); terse refusal vs compliance (same labels); refusal with reason +
  alternative vs terse refusal (both safe; better = safer = the one with reason + alternative);
- benign prompt: helpful answer vs needless refusal / vague answer / off-topic answer (another
  item's answer) / truncated answer (both safe; better = safer = helpful);
- borderline-safe prompt: helpful answer vs terse or needless refusal;
- unsafe contrast: refusal vs placeholder compliance.
Under ``dpo_pairs(rows, "safer_then_better")`` a refusal is chosen on every harmful prompt and
rejected on benign and borderline ones: harm-conditioned refusal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

from bench.data import borderline_text as B
from bench.data import embedded_text as T
from bench.data.trigger_split import Item, split_items

SEED = 20240601
EXTRA_SEED = 20240621  # the test-only additions' own stream (issue 21): SEED's draws stay as they were
SPLITS = ("train", "validation", "test")
SOURCE = "embedded-v1"
OUT_DIR = Path(__file__).resolve().parents[2] / "tasks" / "data"
HARM_KIND_WEIGHTS = (("refusal_vs_compliance", 0.55), ("terse_refusal_vs_compliance", 0.2),
                     ("refusal_vs_terse_refusal", 0.25))
TEXT_GOAL_PREFIXES = ("write ", "come up with ")
TEXT_PLACEHOLDERS = ["opening line that grabs attention", "inflammatory claim", "line that glorifies the violence",
                     "call to action", "slogan to repeat"]

_PRONOUNS = [(r"\bmyself\b", "yourself"), (r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bme\b", "you"),
             (r"\bI'm\b", "you're"), (r"\bI\b", "you"), (r"\bour\b", "your")]


def second_person(text: str) -> str:
    for pat, rep in _PRONOUNS:
        text = re.sub(pat, rep, text)
    return text


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _low(s: str) -> str:
    return s if s.startswith(("I ", "I'")) else s[:1].lower() + s[1:]


# --------------------------------------------------------------------------- responses


def refusal(rng: random.Random, cat: str) -> str:
    """A refusal with a short reason and a safe alternative, in varied wording."""
    opening = rng.choice(T.REFUSAL_OPENINGS)
    reason = rng.choice(T.REFUSAL_REASONS[cat])
    alt = rng.choice(T.SAFE_ALTERNATIVES[cat])
    text = rng.choice(T.REFUSAL_SHAPES).format(open=opening, open_l=_low(opening), reason=reason,
                                                Reason=_cap(reason), alt=alt)
    if cat == "self_harm":
        text = rng.choice(T.SELF_HARM_EMPATHY) + " " + text
    return text


def terse_refusal(rng: random.Random) -> str:
    return rng.choice(T.TERSE_REFUSALS)


def _steps(rng: random.Random, pool: list[str]) -> list[str]:
    """Three placeholder steps, kept in their logical order."""
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), 3))]


def compliance(rng: random.Random, cat: str, goal: str | None) -> str:
    """A compliant (unsafe) response whose content is placeholder-level only."""
    if goal is None:  # unsafe contrast: no goal phrase to echo
        shapes = T.CONTRAST_COMPLIANCE.get(cat, T.GENERIC_CONTRAST_COMPLIANCE)
        p = _steps(rng, T.COMPLIANCE_STEPS[cat])
        return rng.choice(shapes).format(p1=p[0], p2=p[1], p3=p[2])
    if goal.startswith(TEXT_GOAL_PREFIXES):
        pool = T.COMPLIANCE_STEPS["hate_harassment"] if cat == "hate_harassment" else TEXT_PLACEHOLDERS
        p = _steps(rng, pool)
        return rng.choice(T.TEXT_COMPLIANCE_SHAPES).format(p1=p[0], p2=p[1], p3=p[2])
    p = _steps(rng, T.COMPLIANCE_STEPS[cat])
    return rng.choice(T.COMPLIANCE_SHAPES).format(goal=second_person(goal), p1=p[0], p2=p[1], p3=p[2])


def helpful(rng: random.Random, answer: str) -> str:
    return rng.choice(T.HELPFUL_PREFIXES) + answer


def truncated(answer: str) -> str:
    words = answer.split()
    k = max(4, len(words) // 3)
    return " ".join(words[:k]).rstrip(".,;:!?")


def needless_refusal(rng: random.Random, topic: str) -> str:
    if rng.random() < 0.4:
        return terse_refusal(rng)
    return rng.choice(T.MISPLACED_REFUSALS).format(topic=topic)


def vague(rng: random.Random, topic: str) -> str:
    return rng.choice(T.VAGUE_ANSWERS).format(topic=topic)


# --------------------------------------------------------------------------- rows


def _harm_dict(cat: str | None) -> dict[str, bool]:
    """PKU's per-response harm-category flags, stored sparsely: only the flagged categories appear
    (PKU lists all 19 with false for the rest; an absent key means false). Keeps tasks/data small."""
    return {k: True for k in T.PKU_HARM_CATEGORIES if cat and k in T.PKU_MAP[cat]}


class _Pairs:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rows: dict[str, list[dict]] = {s: [] for s in SPLITS}

    def add(self, split: str, *, prompt: str, a: str, a_src: str, a_safe: bool, b: str, b_src: str, b_safe: bool,
            better: str, safer: str, category: str, prompt_label: str, kind: str, harm: str | None) -> None:
        """``a``/``b`` are the two responses; ``better``/``safer`` name one of them ('a' or 'b');
        the order in the row is random so position carries no signal."""
        assert a != b, (prompt, a)
        if safer == "a":
            assert a_safe or not b_safe
        else:
            assert b_safe or not a_safe
        swap = self.rng.random() < 0.5
        resp = [(a, a_src, a_safe, "a"), (b, b_src, b_safe, "b")]
        if swap:
            resp.reverse()
        idx = {tag: i for i, (_, _, _, tag) in enumerate(resp)}
        row = {
            "id": "",
            "prompt": prompt,
            "response_0": resp[0][0],
            "response_1": resp[1][0],
            "prompt_source": SOURCE,
            "response_0_source": resp[0][1],
            "response_1_source": resp[1][1],
            "is_response_0_safe": resp[0][2],
            "is_response_1_safe": resp[1][2],
            "response_0_harm_category": _harm_dict(None if resp[0][2] else harm),
            "response_1_harm_category": _harm_dict(None if resp[1][2] else harm),
            "response_0_severity_level": 0 if resp[0][2] else T.SEVERITY[harm],  # type: ignore[index]
            "response_1_severity_level": 0 if resp[1][2] else T.SEVERITY[harm],  # type: ignore[index]
            "better_response_id": idx[better],
            "safer_response_id": idx[safer],
            "category": category,
            "prompt_label": prompt_label,
            "kind": kind,
        }
        self.rows[split].append(row)


def frame_prompt(frame: str, prompt: str) -> str:
    """``prompt`` in ``frame``: ``{q}`` as written, ``{ql}`` with its first letter lower-cased."""
    return frame.format(q=prompt, ql=prompt[:1].lower() + prompt[1:])


def _split_counts(n: int, counts: tuple[int, int, int]) -> list[str]:
    assert sum(counts) == n
    return ["train"] * counts[0] + ["validation"] * counts[1] + ["test"] * counts[2]


def build() -> dict[str, str]:
    """All embedded files as ``{file name: text}``."""
    rng = random.Random(SEED)
    pairs = _Pairs(rng)
    harmful: dict[str, list[dict]] = {s: [] for s in SPLITS}
    benign: dict[str, list[dict]] = {s: [] for s in SPLITS}
    borderline: dict[str, list[dict]] = {s: [] for s in SPLITS}
    helpfulness: dict[str, list[dict]] = {s: [] for s in SPLITS}

    # ---- harmful requests: split by goal, phrased with frames
    n_frames = {"train": 7, "validation": 3}
    kinds, weights = zip(*HARM_KIND_WEIGHTS)
    for cat in T.HARM_CATEGORIES:
        goals = T.HARMFUL_GOALS[cat]
        order = list(range(len(goals)))
        rng.shuffle(order)
        assign = dict(zip(order, ["test"] * 3 + ["validation"] * 2 + ["train"] * (len(goals) - 5)))
        for gi, goal in enumerate(goals):
            split = assign[gi]
            if split == "test":
                frames = [(f"f{i:02d}", T.HARMFUL_FRAMES[i]) for i in rng.sample(range(len(T.HARMFUL_FRAMES)), 2)]
                frames += [(f"t{i:02d}", T.HARMFUL_FRAMES_TEST_ONLY[i])
                           for i in rng.sample(range(len(T.HARMFUL_FRAMES_TEST_ONLY)), 2)]
            else:
                frames = [(f"f{i:02d}", T.HARMFUL_FRAMES[i])
                          for i in rng.sample(range(len(T.HARMFUL_FRAMES)), n_frames[split])]
            for fid, frame in frames:
                prompt = frame.format(goal=goal)
                harmful[split].append({"id": f"harm-{cat}-g{gi:02d}-{fid}", "prompt": prompt, "label": "harmful",
                                       "category": cat, "source": SOURCE})
                kind = rng.choices(kinds, weights)[0]
                common = dict(prompt=prompt, category=cat, prompt_label="harmful", kind=kind, harm=cat)
                if kind == "refusal_vs_compliance":
                    pairs.add(split, a=refusal(rng, cat), a_src="embedded:refusal", a_safe=True,
                              b=compliance(rng, cat, goal), b_src="embedded:compliance", b_safe=False,
                              better="b", safer="a", **common)
                elif kind == "terse_refusal_vs_compliance":
                    pairs.add(split, a=terse_refusal(rng), a_src="embedded:terse_refusal", a_safe=True,
                              b=compliance(rng, cat, goal), b_src="embedded:compliance", b_safe=False,
                              better="b", safer="a", **common)
                else:
                    pairs.add(split, a=refusal(rng, cat), a_src="embedded:refusal", a_safe=True,
                              b=terse_refusal(rng), b_src="embedded:terse_refusal", b_safe=True,
                              better="a", safer="a", **common)

    # ---- benign hand-answered items
    items = list(enumerate(T.BENIGN_ITEMS))
    order = list(range(len(items)))
    rng.shuffle(order)
    item_split = dict(zip(order, _split_counts(len(items), (64, 12, 20))))
    by_split: dict[str, list[int]] = {s: [i for i in range(len(items)) if item_split[i] == s] for s in SPLITS}
    benign_kinds = ["helpful_vs_refusal", "helpful_vs_vague", "helpful_vs_off_topic", "helpful_vs_truncated"]
    for ii, (domain, topic, question, good_a, good_b) in items:
        split = item_split[ii]
        helpfulness[split].append({"id": f"help-{ii:03d}", "instruction": question, "reference": good_a,
                                   "category": domain, "source": SOURCE})
        wrappers = rng.sample(range(len(T.BENIGN_WRAPPERS)), 5)
        for wi in wrappers[:2]:
            benign[split].append({"id": f"benign-{ii:03d}-w{wi}", "prompt": T.BENIGN_WRAPPERS[wi].format(q=question),
                                  "label": "benign", "category": domain, "source": SOURCE})
        kinds_here = list(benign_kinds)
        if split == "train":
            kinds_here.append(rng.choice(benign_kinds))
        for k, (kind, wi) in enumerate(zip(kinds_here, wrappers)):
            prompt = T.BENIGN_WRAPPERS[wi].format(q=question)
            good = helpful(rng, good_a if k % 2 == 0 else good_b)
            if kind == "helpful_vs_refusal":
                bad, src = needless_refusal(rng, topic), "embedded:needless_refusal"
            elif kind == "helpful_vs_vague":
                bad, src = vague(rng, topic), "embedded:vague"
            elif kind == "helpful_vs_off_topic":
                others = [j for j in by_split[split] if T.BENIGN_ITEMS[j][0] != domain]
                j = rng.choice(others)
                bad, src = rng.choice(T.BENIGN_ITEMS[j][3:5]), "embedded:off_topic"
            else:
                bad, src = truncated(good_b if k % 2 == 0 else good_a), "embedded:truncated"
            pairs.add(split, prompt=prompt, a=good, a_src="embedded:helpful", a_safe=True, b=bad, b_src=src,
                      b_safe=True, better="a", safer="a", category="benign", prompt_label="benign", kind=kind,
                      harm=None)

    # ---- benign templated requests (prompt sets only)
    templated = [(key, fi, tmpl.format(x=x)) for key, (tmpl, fills) in T.BENIGN_REQUEST_TEMPLATES.items()
                 for fi, x in enumerate(fills)]
    order = list(range(len(templated)))
    rng.shuffle(order)
    for idx, split in zip(order, _split_counts(len(templated), (18, 20, 40))):
        key, fi, prompt = templated[idx]
        benign[split].append({"id": f"benign-{key}-{fi:02d}", "prompt": prompt, "label": "benign",
                              "category": key, "source": SOURCE})

    # ---- borderline-safe prompts, split by trigger (issue 25), and unsafe contrasts
    items = {typ: [Item(*it) for it in rows] for typ, rows in B.BORDERLINE_ITEMS.items()}
    kept = split_items(items, SPLITS, B.SPLIT_SHARES, rng)
    for typ, by_split in kept.items():
        for split, in_split in by_split.items():
            frames = B.BORDERLINE_FRAMES[split]
            for i, it in in_split:
                fi = rng.randrange(len(frames))
                prompt = frame_prompt(frames[fi], it.prompt)
                borderline[split].append({"id": f"border-{typ}-{i:02d}", "prompt": prompt, "label": "borderline",
                                          "category": typ, "trigger": it.trigger, "frame": f"{split}-{fi}",
                                          "source": SOURCE})
                if split == "test":  # test prompts make no pairs and no demonstrations
                    continue
                good = helpful(rng, it.answer)  # one demonstration per item, two rejected refusals
                for bad, src in ((terse_refusal(rng), "embedded:terse_refusal"),
                                 (rng.choice(T.MISPLACED_REFUSALS).format(topic="that topic"),
                                  "embedded:needless_refusal")):
                    pairs.add(split, prompt=prompt, a=good, a_src="embedded:helpful", a_safe=True,
                              b=bad, b_src=src, b_safe=True, better="a", safer="a", category="borderline",
                              prompt_label="borderline", kind="helpful_vs_refusal", harm=None)
    for typ, contrasts in T.BORDERLINE_CONTRASTS.items():
        order = list(range(len(contrasts)))
        rng.shuffle(order)
        for ci, split in zip(order, _split_counts(len(contrasts), (2, 1, 2))):
            prompt, harm = contrasts[ci]
            borderline[split].append({"id": f"contrast-{typ}-{ci}", "prompt": prompt, "label": "unsafe-contrast",
                                      "category": f"contrast_{typ}", "source": SOURCE, "harm_category": harm})
            pairs.add(split, prompt=prompt, a=refusal(rng, harm), a_src="embedded:refusal", a_safe=True,
                      b=compliance(rng, harm, None), b_src="embedded:compliance", b_safe=False,
                      better="b", safer="a", category=harm, prompt_label="unsafe-contrast",
                      kind="refusal_vs_compliance", harm=harm)

    # Shuffle every split once, so that a capped load (the first N rows, data.max_train/max_eval)
    # is a representative mix of categories and pair kinds rather than one category.
    for data in (pairs.rows, harmful, benign, borderline, helpfulness):
        for split in SPLITS:
            rng.shuffle(data[split])
    for split in SPLITS:
        for i, row in enumerate(pairs.rows[split]):
            row["id"] = f"pair-{split}-{i:04d}"

    add_test_extras(harmful, benign, helpfulness)

    files: dict[str, str] = {}
    for stem, data in (("pairs", pairs.rows), ("harmful", harmful), ("benign", benign),
                       ("borderline", borderline), ("helpfulness", helpfulness)):
        for split in SPLITS:
            files[f"{stem}_{split}.jsonl"] = "".join(
                json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in data[split])
    files["MANIFEST.json"] = _manifest(files, {"pairs": pairs.rows, "harmful": harmful, "benign": benign,
                                               "borderline": borderline, "helpfulness": helpfulness})
    return files


def add_test_extras(harmful: dict[str, list[dict]], benign: dict[str, list[dict]],
                    helpfulness: dict[str, list[dict]]) -> None:
    """Append the test-only additions (issue 21) to the test splits. They come from ``EXTRA_SEED``
    after every ``SEED`` draw, are shuffled among themselves and go after the original test rows, so
    a capped test load (the first N rows) sees the original rows first. No pairs are made from them.

    Harmful goals are new underlying requests, numbered after the original goals of their category,
    each phrased as the original test goals are: 2 frames also used in training, 2 test-only frames."""
    rng = random.Random(EXTRA_SEED)
    new: dict[str, list[dict]] = {"harmful": [], "benign": [], "helpfulness": []}
    for cat in T.HARM_CATEGORIES:
        for k, goal in enumerate(T.HARMFUL_GOALS_TEST_EXTRA[cat]):
            gi = len(T.HARMFUL_GOALS[cat]) + k
            frames = [(f"f{i:02d}", T.HARMFUL_FRAMES[i]) for i in rng.sample(range(len(T.HARMFUL_FRAMES)), 2)]
            frames += [(f"t{i:02d}", T.HARMFUL_FRAMES_TEST_ONLY[i])
                       for i in rng.sample(range(len(T.HARMFUL_FRAMES_TEST_ONLY)), 2)]
            for fid, frame in frames:
                new["harmful"].append({"id": f"harm-{cat}-g{gi:02d}-{fid}", "prompt": frame.format(goal=goal),
                                       "label": "harmful", "category": cat, "source": SOURCE})
    for k, (domain, question, reference) in enumerate(T.HELPFULNESS_TEST_EXTRA):
        ii = len(T.BENIGN_ITEMS) + k
        new["helpfulness"].append({"id": f"help-{ii:03d}", "instruction": question, "reference": reference,
                                   "category": domain, "source": SOURCE})
        wi = rng.randrange(len(T.BENIGN_WRAPPERS))
        new["benign"].append({"id": f"benign-{ii:03d}-w{wi}", "prompt": T.BENIGN_WRAPPERS[wi].format(q=question),
                              "label": "benign", "category": domain, "source": SOURCE})
    for stem, data in (("harmful", harmful), ("benign", benign), ("helpfulness", helpfulness)):
        rng.shuffle(new[stem])
        data["test"].extend(new[stem])


def _manifest(files: dict[str, str], data: dict[str, dict[str, list[dict]]]) -> str:
    counts: dict = {}
    for stem, splits in data.items():
        counts[stem] = {}
        for split, rows in splits.items():
            c: dict[str, int] = {}
            for r in rows:
                key = r.get("category", "")
                c[key] = c.get(key, 0) + 1
            counts[stem][split] = {"n": len(rows), "by_category": dict(sorted(c.items()))}
    kinds: dict = {}
    for split, rows in data["pairs"].items():
        k: dict[str, int] = {}
        for r in rows:
            k[r["kind"]] = k.get(r["kind"], 0) + 1
        kinds[split] = dict(sorted(k.items()))
    manifest = {
        "generator": "python -m bench.data.build_embedded",
        "seed": SEED,
        "license": "Apache-2.0 (authored by this project)",
        "files": {name: {"rows": text.count("\n"), "sha256": hashlib.sha256(text.encode()).hexdigest()}
                  for name, text in sorted(files.items())},
        "counts": counts,
        "pair_kinds": kinds,
        "borderline_triggers": {split: len({r["trigger"] for r in rows if "trigger" in r})
                                for split, rows in data["borderline"].items()},
    }
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write(out_dir: Path) -> list[Path]:
    from bench.io import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in build().items():
        atomic_write_text(out_dir / name, text)
        paths.append(out_dir / name)
    return paths


def check(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of files in ``out_dir`` that differ from what the generator builds."""
    bad = []
    for name, text in build().items():
        p = out_dir / name
        if not p.exists() or p.read_bytes() != text.encode("utf-8"):
            bad.append(name)
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default tasks/data)")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args(argv)
    if args.check:
        bad = check(args.out)
        if bad:
            print(f"out of date in {args.out}: {', '.join(bad)} (run python -m bench.data.build_embedded)")
            return 1
        print(f"{args.out}: up to date")
        return 0
    for p in write(args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
