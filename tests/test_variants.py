"""bench.variants: what each record is (policy, steered, score, audit, other), the order variants are
listed in, discovery over a runs dir (battery records are not variants), the model folder of a
variant, and loading a steered variant (hooks on inside the block, gone after it, even on error).

    nice .venv/bin/python -m pytest -q tests/test_variants.py
"""

from __future__ import annotations

import pytest
import torch

from bench.io import atomic_write_json
from bench.records import RECORD_NAME
from bench.runs import run_dir
from bench.variants import Variant, classify, discover, from_record, load_policy, policy_dir, sort_key

PROFILE = "vartest"


def _rec(variant: str, stage: str, artifacts: dict | None = None, extra: dict | None = None, profile: str = PROFILE) -> dict:
    return {"schema_version": 1, "variant": variant, "stage": stage, "profile": profile, "config_hash": f"h-{variant}",
            "metrics": {}, "artifacts": artifacts or {}, "extra": extra or {}}


def _steering(vector_path: str = "/x/direction.pt", **kw) -> dict:
    return {"mode": "add", "layer": 1, "position": -1, "alpha": 2.0, "vector_path": vector_path, **kw}


def _write(rec: dict, stage: str | None = None) -> None:
    atomic_write_json(run_dir(rec["profile"], rec["variant"], stage) / RECORD_NAME, rec)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("rec, kind", [
    (_rec("base", "base", {"model_dir": "/m/base"}), "policy"),
    (_rec("sft", "sft", {"model_dir": "/m/sft"}), "policy"),
    (_rec("dpo-js", "dpo", {"model_dir": "/m/dpo"}), "policy"),
    (_rec("ppo-kl", "ppo", {"model_dir": "/m/ppo"}), "policy"),
    (_rec("dpo-broken", "dpo"), "other"),  # a policy stage without a model is not scored
    (_rec("steer-add", "steer", {"base_variant": "sft", "model_dir": "/m/sft", "steering": _steering()}), "steered"),
    (_rec("steer-audit", "steer", {"audit_plot": "/a.png"}, {"audit": {"layers": []}}), "audit"),
    (_rec("steer-audit", "steer", extra={"audit": {}}), "audit"),
    (_rec("steer-odd", "steer"), "other"),
    (_rec("reward", "reward", {"model_dir": "/m/rm"}), "score"),
    (_rec("cost", "cost", {"model_dir": "/m/cm"}), "score"),
    (_rec("onpolicy", "onpolicy", {"model_dir": "/m/x"}), "other"),
])
def test_classify_each_kind_of_record(rec, kind):
    assert classify(rec) == kind
    v = from_record(rec)
    assert v.kind == kind and v.name == rec["variant"] and v.config_hash == rec["config_hash"]
    assert v.evaluable == (kind in ("policy", "steered"))
    assert v.model_dir == rec["artifacts"].get("model_dir")
    assert (v.steering is not None) == (kind == "steered")


def test_steered_variant_reads_its_spec_and_policy():
    gated = _steering(mode="ablate", alpha=None, gate={"layer": 2, "threshold": 0.1, "header": [1], "vector_path": "/g.pt"})
    v = from_record(_rec("steer-gated", "steer", {"base_variant": "sft", "model_dir": "/m/sft", "steering": gated}))
    assert v.policy_variant == "sft" and v.steering.gated and v.needs_whole_sequences
    assert v.steering.to_dict() == gated
    add = from_record(_rec("steer-add", "steer", {"model_dir": "/m/base", "steering": _steering()}))
    assert add.policy_variant == "base" and not add.needs_whole_sequences  # no base_variant: the base
    dpo = from_record(_rec("dpo", "dpo", {"model_dir": "/m/dpo"}))
    assert dpo.policy_variant == "dpo" and dpo.steering is None and not dpo.needs_whole_sequences


def test_sort_order_base_first_then_pipeline_stage_then_name():
    recs = [_rec("steer-add", "steer", {"steering": _steering()}), _rec("ppo-kl", "ppo", {"model_dir": "/p"}),
            _rec("dpo", "dpo", {"model_dir": "/d"}), _rec("cost", "cost"), _rec("zeta", "mystery"),
            _rec("dpo-js", "dpo", {"model_dir": "/d"}), _rec("sft", "sft", {"model_dir": "/s"}),
            _rec("reward", "reward"), _rec("base", "base", {"model_dir": "/b"}), _rec("steer-ablate", "steer")]
    names = [v.name for v in sorted(map(from_record, recs), key=sort_key)]
    assert names == ["base", "sft", "reward", "cost", "dpo", "dpo-js", "ppo-kl", "steer-ablate", "steer-add", "zeta"]


# --------------------------------------------------------------------------- discovery


def test_discover_lists_stage_records_not_battery_records(runs):
    _write(_rec("sft", "sft", {"model_dir": "/m/sft"}))
    _write(_rec("base", "base", {"model_dir": "/m/base"}))
    _write(_rec("steer-add", "steer", {"base_variant": "base", "steering": _steering()}))
    _write(_rec("sft", "eval"), stage="eval")  # the battery's record of sft: not a variant
    _write(_rec("base", "eval"), stage="eval")
    _write(_rec("dpo", "dpo", {"model_dir": "/m/dpo"}, profile="other-profile"))  # another profile
    bad = run_dir(PROFILE, "dpo") / RECORD_NAME
    bad.parent.mkdir(parents=True)
    bad.write_text("{ truncated")  # unreadable: skipped (its stage reports it)
    found = discover(PROFILE)
    assert [(v.name, v.stage, v.kind) for v in found] == [
        ("base", "base", "policy"), ("sft", "sft", "policy"), ("steer-add", "steer", "steered")]
    assert discover("no-such-profile") == []
    assert [v.name for v in discover(PROFILE, root=runs / "other-profile")] == ["dpo"]


# --------------------------------------------------------------------------- model folders


def test_policy_dir_of_policies_and_steered_variants(runs, smoke_base):
    from bench.models import ModelError

    _write(_rec("sft", "sft", {"model_dir": str(smoke_base)}))
    assert policy_dir(from_record(_rec("sft", "sft", {"model_dir": str(smoke_base)})), PROFILE) == smoke_base
    # a steered record without its own model_dir runs its policy's model (artifacts.base_variant)
    steered = from_record(_rec("steer-add", "steer", {"base_variant": "sft", "steering": _steering()}))
    assert policy_dir(steered, PROFILE) == smoke_base
    with pytest.raises(ModelError, match="variant 'dpo': no model at /nowhere/dpo .*make dpo"):
        policy_dir(from_record(_rec("dpo", "dpo", {"model_dir": "/nowhere/dpo"})), PROFILE)
    with pytest.raises(ModelError, match="no model at None"):
        policy_dir(from_record(_rec("dpo", "dpo")), PROFILE)
    orphan = from_record(_rec("steer-add", "steer", {"base_variant": "ppo", "steering": _steering()}))
    with pytest.raises(ModelError, match="variant 'steer-add': no model"):  # its policy has no record
        policy_dir(orphan, PROFILE)


# --------------------------------------------------------------------------- loading


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_load_policy_applies_the_steering_and_removes_it_on_exit(runs, smoke_cfg, smoke_base, tmp_path):
    from bench.models import load_pretrained
    from bench.steer import hooks

    hidden = smoke_cfg.model.micro.hidden_size
    folder = run_dir(PROFILE, "steer-add")
    hooks.save_vector(folder / "direction.pt", torch.ones(hidden))
    # recorded where the steer stage wrote it, before runs/ moved: found again in the record's run dir
    rec = _rec("steer-add", "steer", {"base_variant": "base", "model_dir": str(smoke_base),
                                      "steering": _steering("/moved/away/direction.pt", alpha=4.0)})
    _write(rec)
    (v,) = [x for x in discover(PROFILE) if x.name == "steer-add"]
    model, tok = load_pretrained(smoke_base, smoke_cfg.model)
    model.eval()
    ids = tok(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        plain = model(**ids).logits
    n0 = _n_hooks(model)
    with load_policy(v, smoke_cfg, model=model, tok=tok) as (m, t):
        assert m is model and t is tok and _n_hooks(model) > n0
        with torch.no_grad():
            steered = m(**ids).logits
    assert not torch.allclose(steered, plain, atol=1e-4)
    assert _n_hooks(model) == n0
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, plain)
    with pytest.raises(RuntimeError, match="boom"):  # hooks go even when the block raises
        with load_policy(v, smoke_cfg, model=model, tok=tok):
            raise RuntimeError("boom")
    assert _n_hooks(model) == n0
    # loading the model itself (the policy's folder) gives the same steered logits
    with load_policy(v, smoke_cfg) as (m2, _), torch.no_grad():
        torch.testing.assert_close(m2(**ids).logits, steered)


def test_load_policy_of_a_policy_and_of_a_non_policy(runs, smoke_cfg, smoke_base):
    from bench.models import load_pretrained

    model, tok = load_pretrained(smoke_base, smoke_cfg.model)
    n0 = _n_hooks(model)
    v = from_record(_rec("sft", "sft", {"model_dir": str(smoke_base)}))
    with load_policy(v, smoke_cfg, model=model, tok=tok) as (m, t):
        assert m is model and _n_hooks(model) == n0  # a policy is not steered
    for rec in (_rec("reward", "reward", {"model_dir": str(smoke_base)}), _rec("steer-audit", "steer", extra={"audit": {}})):
        with pytest.raises(ValueError, match="is not a policy"):
            with load_policy(from_record(rec), smoke_cfg, model=model, tok=tok):
                pass


def test_variant_is_frozen():
    v = Variant(name="x", stage="sft", kind="policy", config_hash="h", record={}, model_dir="/m")
    with pytest.raises(AttributeError):
        v.name = "y"
