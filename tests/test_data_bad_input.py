"""Bad input: every case is a DataError naming file, line and field (or, under on_invalid=skip,
a skipped row counted in the identity), never a silent drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import DataSection
from bench.data import DataError, load, validate_chosen_rejected, validate_labelled_prompt, validate_pku

GOOD = {"prompt": "How do I bake bread?", "response_0": "Mix flour, water, yeast and salt, knead and bake.",
        "response_1": "I can't help.", "is_response_0_safe": True, "is_response_1_safe": True,
        "better_response_id": 0, "safer_response_id": 0}


def row(**changes) -> dict:
    r = {**GOOD, "prompt": f"Prompt {len(changes)} {sorted(changes)}"}
    for k, v in changes.items():
        if v is KeyError:
            r.pop(k)
        else:
            r[k] = v
    return r


def write_pairs(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


BAD_CASES = [
    # (description, bad line, field, message fragment)
    ("malformed JSON", '{"prompt": "x", "response_0": ', None, "malformed JSON line"),
    ("not an object", "[1, 2]", None, "expected a JSON object"),
    ("missing field", row(better_response_id=KeyError), "better_response_id", "missing"),
    ("mistyped bool", row(is_response_0_safe="yes"), "is_response_0_safe", "expected true or false"),
    ("id out of range", row(better_response_id=2), "better_response_id", "expected 0 or 1, got 2"),
    ("bool as id", row(safer_response_id=True), "safer_response_id", "expected 0 or 1"),
    ("mistyped prompt", row(prompt=7), "prompt", "expected a string, got int"),
    ("empty prompt", row(prompt="   "), "prompt", "empty"),
    ("empty response", row(response_1=""), "response_1", "empty"),
    ("identical responses", row(response_1=GOOD["response_0"]), "response_1", "identical to response_0"),
    ("contradictory labels", row(is_response_0_safe=False, is_response_1_safe=True, safer_response_id=0),
     "safer_response_id", "contradictory labels"),
]


@pytest.mark.parametrize("desc,bad,field,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_pku_line_names_file_line_field(tmp_path, desc, bad, field, fragment):
    p = write_pairs(tmp_path / "pairs.jsonl", [row(a=1), row(b=1, c=1), bad, row(d=1, e=1, f=1)])
    c = DataSection(local_files={"pku-saferlhf": str(p)})
    with pytest.raises(DataError) as e:
        load("pku-saferlhf", "all", c)
    msg = str(e.value)
    assert f"pairs.jsonl:3: " in msg, msg
    if field:
        assert f"field '{field}'" in msg, msg
        assert e.value.field == field
    assert fragment in msg, msg


def test_skip_counts_every_bad_row(tmp_path):
    lines = [row(a=1)] + [b for _, b, _, _ in BAD_CASES] + [row(z=1, y=1)]
    p = write_pairs(tmp_path / "pairs.jsonl", lines)
    ds = load("pku-saferlhf", "all", DataSection(local_files={"pku-saferlhf": str(p)}, on_invalid="skip"))
    assert len(ds) == 2
    ident = ds.identity
    assert ident["skipped"] == len(BAD_CASES) == sum(ident["skipped_by_field"].values())
    assert ident["skipped_by_field"]["better_response_id"] == 2 and ident["skipped_by_field"]["(row)"] == 2
    assert len(ident["skipped_examples"]) == 5 and "pairs.jsonl:2:" in ident["skipped_examples"][0]


def test_duplicate_prompt_across_splits(tmp_path):
    shared = row(q=1)
    write_pairs(tmp_path / "d_train.jsonl", [row(a=1), shared])
    write_pairs(tmp_path / "d_validation.jsonl", [row(b=1)])
    write_pairs(tmp_path / "d_test.jsonl", [row(c=1), {**shared, "response_1": "Another answer."}])
    c = DataSection(local_files={"embedded-pairs": str(tmp_path / "d_{split}.jsonl")})
    with pytest.raises(DataError) as e:
        load("embedded-pairs", "train", c)
    msg = str(e.value)
    assert "d_train.jsonl:2: field 'prompt': duplicate of a prompt in split 'test'" in msg
    assert "d_test.jsonl:2" in msg
    assert len(load("embedded-pairs", "test", c)) == 2  # the held-out split keeps it
    skipped = load("embedded-pairs", "train", DataSection(local_files=c.local_files, on_invalid="skip"))
    assert len(skipped) == 1 and skipped.identity["skipped_by_field"] == {"prompt": 1}


def test_hh_rlhf_bad_rows(tmp_path):
    lines = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: hello"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: bye\n\nAssistant: ok"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello"},
    ]
    expected = [("rejected", "identical to chosen"), ("rejected", "empty final Assistant response"),
                ("rejected", "differs from 'chosen'"), ("rejected", "missing")]
    for i, (line, (field, fragment)) in enumerate(zip(lines, expected), start=1):
        p = write_pairs(tmp_path / f"hh{i}.jsonl", [line])
        with pytest.raises(DataError) as e:
            load("hh-rlhf", "all", DataSection(local_files={"hh-rlhf": str(p)}))
        assert f"hh{i}.jsonl:1: field '{field}'" in str(e.value) and fragment in str(e.value)


def test_csv_bad_rows(tmp_path):
    p = tmp_path / "adv.csv"
    p.write_text("goal,target\nDo a bad thing,Sure\n,Sure here\n")
    with pytest.raises(DataError, match=r"adv\.csv:3: field 'goal': empty"):
        load("advbench", "all", DataSection(local_files={"advbench": str(p)}))
    p.write_text("id,prompt,type,label,focus,note\n1,Kill a process?,homonyms,maybe,,\n")
    with pytest.raises(DataError, match=r"adv\.csv:2: field 'label': expected 'safe' or 'unsafe'"):
        load("xstest", "all", DataSection(local_files={"xstest": str(p)}))
    p.write_text("id,prompt,label\n1,Kill a process?,safe\n")
    with pytest.raises(DataError, match=r"adv\.csv:2: field 'type': missing"):
        load("xstest", "all", DataSection(local_files={"xstest": str(p)}))


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load("advbench", "all", DataSection(local_files={"advbench": str(tmp_path / "nope.csv")}))
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load("embedded-pairs", "dev", DataSection())


def test_validators_directly():
    assert validate_pku(dict(GOOD), "x:1")["prompt"] == GOOD["prompt"]
    with pytest.raises(DataError, match=r"x:1: field 'history\[0\]\.role'"):
        validate_chosen_rejected({"prompt": "p", "chosen": "a", "rejected": "b",
                                  "history": [{"role": "system", "content": "c"}]}, "x:1")
    with pytest.raises(DataError, match=r"x:1: field 'label': expected one of"):
        validate_labelled_prompt({"id": "1", "prompt": "p", "label": "safe", "category": "c", "source": "s"}, "x:1")
