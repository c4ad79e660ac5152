"""Bad-input sweep (issue 11): every registered dataset loader against every kind of malformed row
that applies to its upstream format, and every config section against every kind of config error.

Data: each case writes a small file in the loader's upstream format (good rows from the loader
fixtures in ``tests/fixtures/data`` or the embedded files, one bad row in the middle) and checks

1. ``bench.data.load`` raises a DataError whose message names the file, the line (``item N`` for a
   JSON-array file, as the schema documents) and the field;
2. the stage that reads the file's data role (``sft`` for preferences, ``eval`` for prompt sets and
   helpfulness), run through the CLI over a run directory holding earlier outputs, stops with that
   one-line message (exit 2) and leaves every earlier file byte-identical.

Over-long sequences are not a loader check; the training stages check them, tested at the end.

Config: unknown key, wrong type, missing required key, out-of-range value (where ``__post_init__``
checks it), bad dotted override, unknown/unreadable profile; each message must name the file (or the
command line, for override syntax) and the key, for every section (nested ones included).

tests/test_data_bad_input.py and tests/test_config.py keep their single cases; the sweep repeats a
few of the loader-level ones (PKU) only as rows of the uniform table, where it adds the stage-level
check, and leaves out the config cases they already cover (an unknown profile name, a missing
model.source, a pinned hub revision, ...).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner
from test_data_bad_input import write_pairs  # JSONL writer: dicts as JSON, strings as raw lines
from test_data_loaders import FIX  # the upstream-schema loader fixtures

from bench.cli import main
from bench.config import CONFIG_DIR, REPO_ROOT, ConfigError, DataSection, load_config
from bench.data import DataError, known_names, load
from bench.data.registry import VALIDATION_CARVE, hash_unit
from bench.data.schema import prompt_key
from bench.io import atomic_write_json
from bench.records import SCHEMA_VERSION
from bench.runs import runs_root

EMBEDDED = REPO_ROOT / "tasks" / "data"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The CLI sets torch's thread count from the profile; give this process its own back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# =============================================================================== data: loaders


@dataclass(frozen=True)
class Bad:
    """One malformed row: ``edit`` turns a good upstream row into the bad one (a dict, or a raw line
    for unparsable input); ``drop_column`` instead removes a CSV column from the header (every row
    then lacks it, so the first data row is reported)."""

    field: str | None  # field the error must name (None: the row is not parsable, there is no field)
    fragment: str  # part of the message saying what is wrong
    edit: Callable[[dict], dict | str] | None = None
    drop_column: str | None = None


def set_(**kv) -> Callable[[dict], dict]:
    return lambda r: {**r, **kv}


def drop(key: str) -> Callable[[dict], dict]:
    return lambda r: {k: v for k, v in r.items() if k != key}


def _csv_line(cells: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


def _no_colon(r: dict) -> str:  # '{"prompt" "..."': a JSON syntax error on this very line
    return json.dumps(r).replace('": ', '" ', 1)


MALFORMED_JSON = Bad(None, "malformed JSON", edit=_no_colon)
MALFORMED_CSV = Bad(None, "more cell(s) than the header", edit=lambda r: _csv_line([*r.values(), "EXTRA"]))


def _hh(prompt: str, answer: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {answer}"


PKU_CASES = {
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("is_response_1_safe", "missing", drop("is_response_1_safe")),
    "wrong_type": Bad("better_response_id", "expected 0 or 1, got '1'", set_(better_response_id="1")),
    "empty_prompt": Bad("prompt", "empty", set_(prompt=" ")),
    "empty_response": Bad("response_0", "empty", set_(response_0="")),
    "identical_responses": Bad("response_1", "identical to response_0",
                               lambda r: {**r, "response_1": f"  {r['response_0']} "}),
    "contradictory_safety_labels": Bad("safer_response_id", "contradictory labels",
                                       set_(is_response_0_safe=False, is_response_1_safe=True, safer_response_id=0)),
}
HH_CASES = {
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("chosen", "missing", drop("chosen")),
    "wrong_type": Bad("rejected", "expected a transcript string, got list", set_(rejected=["Human: hi"])),
    "empty_prompt": Bad("chosen", "turn 1 (user) is empty", set_(chosen=_hh(" ", "Sure."), rejected=_hh(" ", "No."))),
    "empty_response": Bad("rejected", "empty final Assistant response", set_(chosen=_hh("Hi?", "Hello!"),
                                                                             rejected=_hh("Hi?", ""))),
    "identical_responses": Bad("rejected", "identical to chosen", lambda r: {**r, "rejected": r["chosen"]}),
}
LABELLED_CASES = {  # the embedded prompt sets (LabelledPrompt schema as the upstream)
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("category", "missing", drop("category")),
    "wrong_type": Bad("prompt", "expected a string, got list", set_(prompt=["How?"])),
    "empty_prompt": Bad("prompt", "empty", set_(prompt="")),
}
HELPFULNESS_CASES = {
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("reference", "missing", drop("reference")),
    "wrong_type": Bad("instruction", "expected a string, got int", set_(instruction=7)),
    "empty_prompt": Bad("instruction", "empty", set_(instruction="  ")),
    "empty_response": Bad("reference", "empty", set_(reference="")),
}
ALPACA_CASES = {  # AlpacaEval's JSON array: instruction, output, generator, dataset
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("output", "missing", drop("output")),
    "wrong_type": Bad("instruction", "expected a string, got int", set_(instruction=7)),
    "empty_prompt": Bad("instruction", "empty", set_(instruction="")),
    "empty_response": Bad("output", "empty", set_(output=" ")),
}
ALPACA_BENIGN_CASES = {  # the same file read as benign prompts: the output is not used
    "malformed_json": MALFORMED_JSON,
    "missing_field": Bad("instruction", "missing", drop("instruction")),
    "wrong_type": Bad("instruction", "expected a string, got list", set_(instruction=["x"])),
    "empty_prompt": Bad("instruction", "empty", set_(instruction="")),
}
# CSV cells are strings: no wrong-type case; a short row leaves the missing cells null.
ADVBENCH_CASES = {
    "malformed_csv": MALFORMED_CSV,
    "missing_field": Bad("goal", "missing", drop_column="goal"),
    "empty_prompt": Bad("goal", "empty", set_(goal="")),
}
HARMBENCH_CASES = {
    "malformed_csv": MALFORMED_CSV,
    "missing_field": Bad("SemanticCategory", "expected a string, got null",
                         lambda r: _csv_line([r["Behavior"], "standard"])),  # (copyright rows are filtered first)
    "empty_prompt": Bad("Behavior", "empty", set_(Behavior="")),
}
XSTEST_CASES = {
    "malformed_csv": MALFORMED_CSV,
    "missing_field": Bad("type", "expected a string, got null", lambda r: _csv_line([r["id"], r["prompt"]])),
    "empty_prompt": Bad("prompt", "empty", set_(prompt="")),
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()][:3]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    # single-line rows only, so line numbers are plain to compute (multi-line cells: test_data_loaders)
    return [r for r in rows if not any("\n" in v for v in r.values())][:3]


def _json(path: Path) -> list[dict]:
    return json.loads(path.read_text())[:3]


@dataclass(frozen=True)
class Loader:
    name: str  # registry name
    fmt: str  # jsonl | csv | json (a JSON array)
    role: str  # the profile data role it is configured for in the stage check
    source: Path  # good rows in the upstream schema
    cases: dict[str, Bad]
    crlf: bool = False

    def good_rows(self) -> list[dict]:
        return {"jsonl": _jsonl, "csv": _csv, "json": _json}[self.fmt](self.source)


LOADERS = {x.name: x for x in (
    Loader("pku-saferlhf", "jsonl", "preferences", FIX / "pku_saferlhf_train.jsonl", PKU_CASES),
    Loader("embedded-pairs", "jsonl", "preferences", EMBEDDED / "pairs_test.jsonl", PKU_CASES),
    Loader("hh-rlhf", "jsonl", "preferences", FIX / "hh_rlhf_train.jsonl", HH_CASES),
    Loader("hh-rlhf-harmless", "jsonl", "preferences", FIX / "hh_rlhf_train.jsonl", HH_CASES),
    Loader("hh-rlhf-helpful", "jsonl", "preferences", FIX / "hh_rlhf_train.jsonl", HH_CASES),
    Loader("advbench", "csv", "harmful", FIX / "advbench_harmful_behaviors.csv", ADVBENCH_CASES),
    Loader("harmbench", "csv", "harmful", FIX / "harmbench_behaviors_text_all.csv", HARMBENCH_CASES, crlf=True),
    Loader("embedded-harmful", "jsonl", "harmful", EMBEDDED / "harmful_test.jsonl", LABELLED_CASES),
    Loader("embedded-benign", "jsonl", "benign", EMBEDDED / "benign_test.jsonl", LABELLED_CASES),
    Loader("alpaca-eval-benign", "json", "benign", FIX / "alpaca_eval.json", ALPACA_BENIGN_CASES),
    Loader("xstest", "csv", "borderline", FIX / "xstest_prompts.csv", XSTEST_CASES),
    Loader("embedded-borderline", "jsonl", "borderline", EMBEDDED / "borderline_test.jsonl", LABELLED_CASES),
    Loader("alpaca-eval", "json", "helpfulness", FIX / "alpaca_eval.json", ALPACA_CASES),
    Loader("embedded-helpfulness", "jsonl", "helpfulness", EMBEDDED / "helpfulness_test.jsonl", HELPFULNESS_CASES),
)}
DATA_SWEEP = [(name, case) for name, loader in LOADERS.items() for case in loader.cases]
STAGE_FOR_ROLE = {"preferences": "sft", "harmful": "eval", "benign": "eval", "borderline": "eval", "helpfulness": "eval"}


def write_bad_file(loader: Loader, bad: Bad, folder: Path) -> tuple[Path, str]:
    """Good, good, BAD, good rows in the loader's format; returns the file and the location the
    error must name (``<file>:<line>`` or, for a row of a JSON array, ``<file>:item <n>``)."""
    good = loader.good_rows()
    assert len(good) == 3, f"{loader.source}: need three single-line fixture rows"
    items: list = [good[0], good[1], bad.edit(good[2]) if bad.edit else good[2], good[2]]
    path = folder / f"bad.{loader.fmt}"
    if loader.fmt == "jsonl":
        write_pairs(path, items)
        return path, f"{path}:3"
    if loader.fmt == "json":  # one item per line: "[" is line 1, item n is line n + 1
        path.write_text("[\n" + ",\n".join(x if isinstance(x, str) else json.dumps(x) for x in items) + "\n]\n")
        return path, f"{path}:4" if isinstance(items[2], str) else f"{path}:item 3"
    header = [c for c in good[0] if c != bad.drop_column]
    lines = [_csv_line(header)] + [x if isinstance(x, str) else _csv_line([x.get(c, "") for c in header]) for x in items]
    eol = "\r\n" if loader.crlf else "\n"
    path.write_bytes((eol.join(lines) + eol).encode())
    return path, f"{path}:2" if bad.drop_column else f"{path}:4"


def _fake_record(profile: str, variant: str, stage: str, model_dir: Path | None = None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "profile": profile, "variant": variant, "stage": stage,
            "config_hash": "0" * 16, "seed": 0, "metrics": {"x": {"value": 0.5, "ci_low": None, "ci_high": None, "n": 2}},
            "artifacts": {"model_dir": str(model_dir)} if model_dir else {}, "extra": {}, "datasets": {}}


def earlier_outputs(profile: str, base_model: Path) -> Path:
    """A run directory as an earlier (successful) pipeline left it: records, configs, logs, a model
    folder, an eval record with its generations and a stage marker. Their config hashes are stale,
    so every stage re-runs and reads its data."""
    root = runs_root() / profile
    for variant, stage in (("base", "base"), ("sft", "sft"), ("dpo", "dpo"), ("reward", "reward"), ("cost", "cost")):
        d = root / variant
        model = base_model if variant == "base" else d / "model"
        if variant != "base":
            model.mkdir(parents=True)
            (model / "config.json").write_text('{"model_type": "llama"}\n')
        atomic_write_json(d / "record.json", _fake_record(profile, variant, stage, model))
        (d / "config.yaml").write_text(f"profile: {{name: {profile}}}\n")
        (d / "log.txt").write_text(f"earlier {stage} run\n")
    ev = root / "eval" / "base"
    atomic_write_json(ev / "record.json", _fake_record(profile, "base", "eval"))
    (ev / "generations.jsonl").write_text('{"set": "refusal_harmful", "response": "No."}\n')
    atomic_write_json(root / "stages" / "sft.done", {"stage": "sft", "variants": {"sft": "0" * 16}})
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def changed_files(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Earlier files that are gone or differ; a log may grow, but what it held must stay."""
    out = []
    for name, data in before.items():
        now = after.get(name)
        ok = now is not None and (now.startswith(data) if name.endswith("log.txt") else now == data)
        if not ok:
            out.append(name)
    new_records = [n for n in after if n not in before and n.endswith(("record.json", ".done"))]
    return out + new_records


def test_sweep_covers_every_registered_loader():
    assert sorted(LOADERS) == known_names()


@pytest.mark.parametrize("name,case", DATA_SWEEP, ids=[f"{n}-{c}" for n, c in DATA_SWEEP])
def test_bad_row_names_file_line_field_and_leaves_earlier_outputs(name, case, tmp_path, smoke_base):
    loader, bad = LOADERS[name], LOADERS[name].cases[case]
    path, where = write_bad_file(loader, bad, tmp_path)

    # 1. the loader: one DataError naming file, line and field
    with pytest.raises(DataError) as e:
        load(name, "all", DataSection(local_files={name: str(path)}))
    msg = str(e.value)
    assert msg.startswith(f"{where}: "), msg
    assert e.value.field == bad.field, msg
    if bad.field:
        assert f"field '{bad.field}'" in msg, msg
    assert bad.fragment in msg, msg

    # 2. the stage reading that role, through the CLI, over earlier outputs: one line, nothing touched
    profile = f"sweep-{name}-{case}"
    root = earlier_outputs(profile, smoke_base)
    before = snapshot(root)
    assert {"sft/record.json", "sft/model/config.json", "eval/base/generations.jsonl", "stages/sft.done"} <= set(before)
    stage = STAGE_FOR_ROLE[loader.role]
    r = CliRunner().invoke(main, [stage, "--profile", "smoke", f"profile.name={profile}", f"data.{loader.role}={name}",
                                  "data.local_files=" + json.dumps({name: str(path)})])
    assert r.exit_code == 2, (r.output, r.exception)
    assert f"error: {msg}" in r.output and "Traceback" not in r.output, r.output
    assert changed_files(before, snapshot(root)) == []


# =============================================================================== data: over-long rows

# The loaders do not know token lengths; each training stage checks its own max_length (sft, dpo,
# reward, cost; ppo skips prompts that do not fit and counts them, eval truncates).
OVERLONG_STAGES = ("sft", "dpo", "reward", "cost")
LONG_PROMPT = "How do I bake sourdough bread at home?"


def _overlong_files(folder: Path) -> tuple[Path, str]:
    rows = [json.loads(x) for x in (FIX / "pku_saferlhf_train.jsonl").read_text().splitlines()]
    # both responses safe and response_1 the better one: the long response is every stage's chosen
    long = {**rows[0], "prompt": LONG_PROMPT, "response_1": "Mix, knead, rest and bake. " * 250,
            "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 1, "safer_response_id": 1}
    train = write_pairs(folder / "pku_train.jsonl", [rows[0], rows[1], long, *rows[2:]])
    (folder / "pku_test.jsonl").write_bytes((FIX / "pku_saferlhf_test.jsonl").read_bytes())
    return folder / "pku_{split}.jsonl", f"{train}:3"


@dataclass
class OverlongRun:
    where: str
    output: str
    exit_code: int
    changed: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def overlong(tmp_path_factory, smoke_base):
    """``overlong(stage)``: the stage run once (through the CLI) on a PKU file whose line 3 is far
    over max_length, over a run directory with earlier outputs."""
    done: dict[str, OverlongRun] = {}

    def get(stage: str) -> OverlongRun:
        if stage not in done:
            folder = tmp_path_factory.mktemp(f"overlong-{stage}")
            pattern, where = _overlong_files(folder)
            assert hash_unit(prompt_key({"prompt": LONG_PROMPT})) >= VALIDATION_CARVE  # the row is in train
            profile = f"sweep-overlong-{stage}"
            root = earlier_outputs(profile, smoke_base)
            before = snapshot(root)
            r = CliRunner().invoke(main, [stage, "--profile", "smoke", f"profile.name={profile}",
                                          "data.preferences=pku-saferlhf", "dpo.variants={dpo: {loss_type: [sigmoid]}}",
                                          "data.local_files=" + json.dumps({"pku-saferlhf": str(pattern)})])
            done[stage] = OverlongRun(where, r.output, r.exit_code, changed_files(before, snapshot(root)))
        return done[stage]

    return get


@pytest.mark.parametrize("stage", OVERLONG_STAGES)
def test_overlong_row_is_a_one_line_error(stage, overlong):
    run = overlong(stage)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert re.search(r"^error: .*over (\w+\.)?max_length=256", run.output, re.M), run.output


@pytest.mark.parametrize("stage", OVERLONG_STAGES)
def test_overlong_row_error_names_file_line_field(stage, overlong):
    """The over-long check names the row's file and line and the response field (not '<dataset>:train'
    and 'pair N'): LoadedDataset.wheres carries each row's location into the derived pairs."""
    run = overlong(stage)
    assert f"error: {run.where}: field '" in run.output, run.output


@pytest.mark.parametrize("stage", OVERLONG_STAGES)
def test_overlong_row_leaves_earlier_outputs(stage, overlong):
    """A stage that fails inside stage_run (the over-long check) leaves the earlier record.json and its
    config.yaml as they were: stage_run writes config.yaml only on success, beside the record."""
    run = overlong(stage)
    assert run.exit_code == 2
    assert run.changed == []


# =============================================================================== config

SMOKE = CONFIG_DIR / "smoke.yaml"
SMOKE_SHOWN = "configs/smoke.yaml"

# Every section (and nested section) of a profile, with a key of it and a value of the wrong type.
SECTIONS = {
    "profile": ("cpu_threads", "two"),
    "model": ("trust_remote_code", "yes"),
    "model.micro": ("hidden_size", 6.5),
    "data": ("max_train", "all"),
    "sft": ("batch_size", "four"),
    "reward": ("learning_rate", "fast"),
    "reward.lora": ("r", [4]),
    "cost": ("sign_weight", {"x": 1}),
    "dpo": ("beta", "high"),
    "dpo.variants.dpo": ("loss_type", "sigmoid"),
    "ppo": ("rollout_prompts", "x"),
    "ppo.variants.ppo-kl": ("lagrangian", "on"),
    "steer": ("n_train", 1.5),
    "eval": ("lm_eval_tasks", "arc_easy"),
}
# A key of each top-level section that configs/smoke.yaml sets (to override into, and through).
SET_IN_SMOKE = {"profile": "seed", "model": "dtype", "data": "max_train", "sft": "batch_size", "reward": "learning_rate",
                "cost": "sign_weight", "dpo": "beta", "ppo": "rollout_prompts", "steer": "n_train", "eval": "max_new_tokens"}
TRAIN_SECTIONS = ("sft", "reward", "cost", "dpo", "ppo")


_DROP = object()  # remove the key


def _set_path(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DROP:
        node.pop(last)
    else:
        node[last] = value


def write_profile(tmp_path: Path, changes: dict) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    for dotted, value in changes.items():
        _set_path(raw, dotted, value)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def body_after(msg: str, where: str) -> str:
    """The message must start with its source (file, plus overrides); the rest must name the key on
    its own (the override text echoed in the prefix does not count)."""
    assert msg.startswith(f"{where}: "), msg
    return msg[len(where) + 2:]


def names_key(body: str, section: str, key: str) -> bool:
    """The dotted key (``reward.learning_rate``), or the section as the message's subject and the key
    (``ppo: rollout_prompts (3) must be ...``)."""
    return f"{section}.{key}" in body or (body.startswith(f"{section}: ") and re.search(rf"\b{re.escape(key)}\b", body))


# ---- unknown key, wrong type: in the file and as an override, for every section

def _file_case(tmp_path, changes):
    path = write_profile(tmp_path, changes)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    return str(e.value), str(path)


def _override_case(overrides):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides)
    return str(e.value), f"{SMOKE_SHOWN} (with overrides {' '.join(overrides)})"


@pytest.mark.parametrize("via", ["file", "override"])
@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_names_file_and_key(section, via, tmp_path):
    key = f"{section}.no_such_key"
    msg, where = (_file_case(tmp_path, {key: 1}) if via == "file" else _override_case([f"{key}=1"]))
    assert body_after(msg, where).startswith(f"unknown key '{key}'"), msg


@pytest.mark.parametrize("via", ["file", "override"])
@pytest.mark.parametrize("section", list(SECTIONS))
def test_wrong_type_names_file_key_and_expected_type(section, via, tmp_path):
    key, value = SECTIONS[section]
    dotted = f"{section}.{key}"
    msg, where = (_file_case(tmp_path, {dotted: value}) if via == "file"
                  else _override_case([f"{dotted}={json.dumps(value)}"]))  # JSON is YAML: "yes" stays a string
    body = body_after(msg, where)
    assert body.startswith(f"key '{dotted}' expects "), msg
    assert repr(value) in body, msg


def test_section_of_wrong_type(tmp_path):
    msg, where = _file_case(tmp_path, {"reward": 5})
    assert body_after(msg, where) == "key 'reward' expects ScoreModelSection, got int 5"


# ---- missing required keys (model.source is in test_config)

@pytest.mark.parametrize("key", ["profile.name", "profile", "model"])
def test_missing_required_key_names_file_and_key(key, tmp_path):
    msg, where = _file_case(tmp_path, {key: _DROP})
    assert body_after(msg, where).startswith(f"missing required key '{key}'"), msg


# ---- out-of-range values that __post_init__ checks

# (section, changes in that section, key the message must name, expected fragment). The TrainSection
# checks (learning_rate, batch_size/grad_accum, top_layers, deepspeed) read the same for every training
# section: the message must say which one (bench.typed_yaml.build qualifies them with the section).
RANGE = [
    *(pytest.param(s, ch, key, frag, id=f"{s}-{key}")
      for s in TRAIN_SECTIONS
      for ch, key, frag in (({"learning_rate": 0}, "learning_rate", "must be > 0"),
                            ({"batch_size": 0}, "batch_size", "must be >= 1"),
                            ({"grad_accum": 0}, "grad_accum", "must be >= 1"),
                            ({"trainable": "top_layers", "top_layers": 0}, "top_layers", "must be >= 1"),
                            ({"deepspeed": "/etc/hostname"}, "deepspeed", "must be a path inside the project"))),
    pytest.param("ppo", {"rollout_prompts": 3}, "rollout_prompts", "must be a multiple of", id="ppo-rollout_prompts"),
    pytest.param("ppo", {"grad_accum": 2}, "grad_accum", "is not used", id="ppo-grad_accum-2"),
    pytest.param("ppo", {"lambda_init": 0}, "lambda_init", "need 0 < lambda_init", id="ppo-lambda_init"),
    pytest.param("ppo", {"lambda_init": 20.0}, "lambda_max", "lambda_init <= lambda_max", id="ppo-lambda_max"),
    pytest.param("ppo", {"temperature": 0}, "temperature", "temperature must be > 0", id="ppo-temperature"),
    pytest.param("ppo", {"ppo_epochs": 0}, "ppo_epochs", "ppo_epochs >= 1", id="ppo-ppo_epochs"),
    pytest.param("ppo", {"save_steps": 0}, "save_steps", "save_steps >= 1", id="ppo-save_steps"),
    pytest.param("ppo", {"max_new_tokens": 256}, "max_new_tokens", "must be < max_length", id="ppo-max_new_tokens"),
    pytest.param("ppo", {"variants": {}}, "variants", "variants is empty", id="ppo-variants"),
    pytest.param("model", {"source": "hub"}, "revision", "pinned revision", id="model-hub-revision"),
    pytest.param("model", {"chat_template": "../outside.jinja"}, "chat_template", "must be a path inside the project",
                 id="model-chat_template"),
]


@pytest.mark.parametrize("section,changes,key,fragment", RANGE)
def test_out_of_range_value_names_file_and_key(section, changes, key, fragment, tmp_path):
    msg, where = _file_case(tmp_path, {f"{section}.{k}": v for k, v in changes.items()})
    body = body_after(msg, where)
    assert fragment in body, msg
    assert names_key(body, section, key), msg


# ---- bad dotted overrides (syntax): the command line is the source

BAD_OVERRIDE_FORMS = {
    "no_equals": ("{s}.{k}", "must look like section.key=value"),
    "empty_key_part": ("{s}..{k}=1", "has an empty key"),
    "invalid_yaml_value": ("{s}.{k}=[1", "value is not valid YAML"),
    "into_a_scalar": ("{s}.{k}.deeper=1", "'{k}' is not a section"),
}


@pytest.mark.parametrize("form", list(BAD_OVERRIDE_FORMS))
@pytest.mark.parametrize("section", list(SET_IN_SMOKE))
def test_bad_override_names_the_override_and_key(section, form):
    key = SET_IN_SMOKE[section]
    text, fragment = (x.format(s=section, k=key) for x in BAD_OVERRIDE_FORMS[form])
    with pytest.raises(ConfigError) as e:
        load_config("smoke", ["profile.seed=1", text])
    msg = str(e.value)
    assert msg.startswith(f"command line: override '{text}'"), msg
    assert fragment in msg and "profile.seed=1" not in msg, msg  # the bad override, not its neighbours


# A YAML syntax error must not be quoted whole (PyYAML's str(e) spans several lines with a caret
# picture): the CLI's 'error:' is one line.
@pytest.mark.parametrize("source,fragment", [
    pytest.param("dpo.variants.dpo.beta", "command line: override 'dpo.variants.dpo.beta' must look like", id="override-no-equals"),
    pytest.param("dpo.variants.dpo.beta=[0.1", "command line: override 'dpo.variants.dpo.beta=[0.1': value is not valid YAML",
                 id="override-invalid-yaml"),
    pytest.param("file", "not valid YAML", id="profile-invalid-yaml"),
])
def test_config_error_through_cli_is_one_line(source, fragment, tmp_path):
    if source == "file":
        path = tmp_path / "broken.yaml"
        path.write_text("profile: {name: [t\n")
        args = ["--profile", str(path)]
    else:
        args = ["--profile", "smoke", source]
    r = CliRunner().invoke(main, ["config", "show", *args])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.startswith("error: ") and fragment in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


# ---- unknown or unreadable profiles (a plain unknown name is in test_config)

def test_missing_profile_file_names_it(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert f"unknown profile '{path}'" in str(e.value) and "smoke" in str(e.value)


@pytest.mark.parametrize("text,fragment", [("profile: {name: [t\n", "not valid YAML"),
                                           ("- profile\n- model\n", "top level must be a mapping")])
def test_unreadable_profile_names_file(text, fragment, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value).startswith(f"{path}: {fragment}"), str(e.value)
