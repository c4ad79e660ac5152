"""`bench perf`: the statistics helpers on hand values, our scorer agreeing with lm-eval's
loglikelihood on the smoke model (fp32 side really fp32, bf16 side really bf16), the generation
unit (generate_greedy in fp32 equal to plain generate on the same batches), the bars' figures and verdicts on hand
values, the peak-memory plumbing of an isolated unit, the GPU code paths on a tiny shape on CPU,
and `bench perf --quick` writing every section. No test asserts a speed: timings on a shared
machine are not test material."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from bench.perf.timing import fmt, quantile, rates, ratio, summarize


def test_summaries_on_hand_values():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == pytest.approx(2.5) and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    assert s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(4.75)  # numpy's linear quantiles
    assert quantile([5.0], 0.9) == 5.0
    assert summarize([1.0, math.nan, None, 3.0])["n"] == 2  # non-finite values are dropped
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["median"])
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_rates_and_paired_ratio():
    assert rates(10, [2.0, 5.0]) == [5.0, 2.0]
    assert rates([4, 9], [2.0, 3.0]) == [2.0, 3.0]
    r = ratio([4.0, 6.0, 8.0], [2.0, 2.0, 4.0])  # per-repeat ratios 2, 3, 2
    assert r["median"] == pytest.approx(2.0) and r["max"] == pytest.approx(3.0)
    assert r["of_medians"] == pytest.approx(6.0 / 2.0)
    with pytest.raises(ValueError, match="paired"):
        ratio([1.0], [1.0, 2.0])
    assert fmt(summarize([1.0, 2.0, 3.0]), 3, "s") == "2 s [1-3] (n=3)"
    assert fmt(summarize([1234.5])) == "1,234 (n=1)" or fmt(summarize([1234.5])) == "1,235 (n=1)"
    assert fmt(None) == "n/a"


def test_scorer_agrees_with_lm_eval_loglikelihood(smoke_base):
    """Run inside an enclosing bf16 autocast (a caller may hold one): the fp32 side must still agree
    with lm-eval to 1e-3 (autocast did not leak in) and the bf16 side must differ from it (bf16
    really ran)."""
    import torch

    from bench.perf.units import run_unit

    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = run_unit("score", {"profile": "smoke", "n_pairs": 4, "repeats": 1}, isolate=False)
    assert "error" not in u, u.get("traceback")
    a, p = u["agreement"], u["bf16_vs_fp32"]
    assert u["n_requests"] == 2 * u["n_pairs"] == 8
    assert a["tokens_max_abs_diff"] < 1e-3 and a["tokens_agree_1e-3"]
    # lm-eval's string path moves the newline ending the chat prompt into the continuation.
    assert a["strings_extra_continuation_tokens"] == [1] and a["strings_mean_diff"] < 0
    assert set(u["seconds"]) == {"ours_fp32", "ours_bf16", "lm_eval_fp32"}
    assert 0 < p["max_abs_diff_sums"] < 0.5 and p["n_margins"] == u["n_pairs"]
    assert 0.0 <= p["margin_sign_agreement"] <= 1.0


def test_generate_unit_times_generate_greedy_against_plain_generate(smoke_base):
    """generate_greedy (fastgen inside) in fp32 gives the baseline's outputs on the same batches; bf16 runs too."""
    from bench.perf import _gen_figures
    from bench.perf.units import run_unit

    u = run_unit("generate", {"profile": "smoke", "n_prompts": 3, "max_new_tokens": 4, "repeats": 1}, isolate=False)
    assert "error" not in u, u.get("traceback")
    assert set(u["seconds"]) == {"batched_generate_fp32", "ours_fp32", "ours_bf16"}
    assert u["identical_outputs"]["ours_fp32"] == u["n_prompts"] == 3
    assert u["decoder"]["fallback"] == {"fp32": None, "bf16": None}  # the lean loop ran on both models
    assert 0 < u["new_tokens"] <= 3 * 4
    f = _gen_figures(u)
    assert f["speedup_vs_batched_generate_fp32"] is f["ours_bf16_speedup_vs_batched_generate_fp32"]
    assert f["ours_fp32_speedup_vs_batched_generate_fp32"]["n"] == 1
    # the matrix-product floor: one figure per repeat and precision, one step count per batch
    assert {k: len(v) for k, v in u["matmul_floor_seconds"].items()} == {"fp32": 1, "bf16": 1}
    assert len(u["decode_steps"]) == 1 and 0 <= u["decode_steps"][0] <= 3  # 3 prompts, one batch, <= 4 tokens
    assert all(t > 0 for v in u["matmul_floor_seconds"].values() for t in v)
    assert f["floor_bf16_speedup_vs_batched_generate_fp32"]["n"] == 1
    assert f["ours_bf16_share_in_matmul_floor"]["n"] == 1


def test_matmul_floor_runs_every_linear_at_the_decode_shapes(smoke_cfg, smoke_base, monkeypatch):
    """The floor multiplies every linear at prefill rows (B x L; the head at B) and at B rows per
    decode step: with ``timed`` counting the rows each linear multiplies instead of seconds, its
    figure is the closed form sum_b [(n_linear - 1) B L + B + steps_b n_linear B]."""
    import torch

    from bench.models import load_base
    from bench.perf import generation

    model, tok = load_base(smoke_cfg)
    model.eval()
    rows = [0]
    hooks = [m.register_forward_hook(lambda mod, inp, out: rows.__setitem__(0, rows[0] + inp[0].shape[0]))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n_linear = len(hooks)

    def counted(fn):
        rows[0] = 0
        fn()
        return float(rows[0]), None

    monkeypatch.setattr(generation, "timed", counted)
    work = generation.batches(tok, ["Hi", "How do I bake bread at home?", "Tell me a joke about cats please"],
                              None, 2)
    steps = [5, 2]
    want = 0
    for (_, enc), n in zip(work, steps):
        b, length = enc["input_ids"].shape
        want += (n_linear - 1) * b * length + b + n * n_linear * b
    for prec in ("fp32", "bf16"):
        assert generation.matmul_floor(model, work, steps, prec, repeats=2) == [want, want]
    for h in hooks:
        h.remove()


def test_refusal_prompts_mix_the_sets(smoke_cfg):
    from bench.eval.inputs import REFUSAL_SETS, load_inputs
    from bench.perf.generation import refusal_prompts

    sets, _ = load_inputs(smoke_cfg)
    got = refusal_prompts(smoke_cfg, 3)
    assert got == [sets["refusal_harmful"][0]["prompt"], sets["over_refusal_benign"][0]["prompt"],
                   sets["over_refusal_borderline"][0]["prompt"]]
    assert len(refusal_prompts(smoke_cfg, 0)) == sum(len(sets[k]) for k, *_ in REFUSAL_SETS)


def test_peak_and_training_flops_on_hand_values():
    from bench.perf import _dpo_figures, _peak_figures, _ppo_figures, _train_flops, compute_figures

    pk = _peak_figures({"gflops": {"a": {"fp32": [100.0, 120.0], "bf16": [400.0, 380.0]},
                                   "b": {"fp32": [90.0], "bf16": [500.0]}}})
    assert pk["fp32_gflops"] == 120.0 and pk["fp32_peak_shape"] == "a"
    assert pk["bf16_gflops"] == 500.0 and pk["bf16_peak_shape"] == "b" and pk["bf16_over_fp32"] == pytest.approx(500 / 120)
    # measured before and after the other units: the peak is the best of both runs
    both = compute_figures({"matmul_peak": {"gflops": {"a": {"fp32": [100.0], "bf16": [400.0]}}},
                            "matmul_peak_end": {"gflops": {"a": {"fp32": [130.0], "bf16": [350.0]}}}})["matmul_peak"]
    assert both["fp32_gflops"] == 130.0 and both["bf16_gflops"] == 400.0 and both["shapes"]["a"]["fp32"]["n"] == 2
    # 6 x 1e8 params x 1000 tokens / 2 s = 300 GFLOP/s: 60% of a 500 GFLOP/s bf16 peak
    t = _train_flops([1000], [2.0], 1e8, pk)
    assert t["gflops"]["median"] == pytest.approx(300.0)
    assert t["fraction_of_bf16_peak"]["median"] == pytest.approx(0.6)
    assert t["fraction_of_fp32_peak"]["median"] == pytest.approx(2.5)
    assert _train_flops([1000], [2.0], 1e8, None)["fraction_of_bf16_peak"]["n"] == 0  # no peak: n/a, not a guess
    ours = {"seconds": {"fp32": [4.0, 5.0], "bf16": [2.0, 2.0]}, "tokens_per_epoch": 1000, "total_params": 1e8,
            "trainable_params": 1e7}
    d = _dpo_figures(ours, {"seconds": [10.0], "tokens_per_epoch": 1000, "total_params": 1e8}, pk)
    assert d["bf16_speedup_vs_fp32"]["values"] == pytest.approx([2.0, 2.5])
    assert d["ours_bf16_flops"]["fraction_of_bf16_peak"]["median"] == pytest.approx(0.6)
    assert d["ours_bf16_flops_trainable"]["gflops"]["median"] == pytest.approx(30.0)
    assert d["ours_bf16_speedup_vs_trl_defaults_of_medians"] == pytest.approx(5.0)
    p = _ppo_figures({"precisions": ["fp32", "bf16"], "ppo_epochs": 2, "total_params": 1e8,
                      "seconds": {"fp32": [3.0, 3.0], "bf16": [1.0, 1.0]}, "run_seconds": {"fp32": [6.0], "bf16": [2.0]},
                      "run_tokens": {"fp32": [500], "bf16": [500]}}, pk)
    assert p["bf16_speedup_vs_fp32"]["median"] == pytest.approx(3.0)
    assert p["bf16_flops"]["gflops"]["median"] == pytest.approx(6 * 1e8 * 500 * 2 / 2.0 / 1e9)


def test_bars_verdicts_on_hand_figures():
    from bench.perf import TARGETS, bars, verdict
    from bench.perf.timing import summarize

    assert verdict(2.0, 2.0) == "met" and verdict(1.99, 2.0) == "missed"
    assert verdict(math.nan, 2.0) == "not measured" and verdict(None, 2.0) == "not measured"
    assert verdict(5.0, 2.0, applicable=False) == "n/a"
    figures = {"score": {"speedup_vs_lm_eval_fp32": summarize([2.4, 2.6, 2.5])},
               "generate": {"speedup_vs_batched_generate_fp32": summarize([3.9, 4.1, 3.95])},
               "dpo": {"ours_bf16_flops": {"fraction_of_bf16_peak": summarize([0.41])}}}
    cpu = {"native_bf16_flags": ["avx512_bf16"], "auto_resolves_to": "bf16", "cuda": False}
    units = {"score": {"cpu": cpu}, "generate": {"cpu": cpu}}
    got = {b["bar"]: b for b in bars(figures, units, TARGETS)}
    assert [k for k in got] == ["scoring", "generation", "training_dpo", "training_ppo"]
    assert got["scoring"]["verdict"] == "met" and got["scoring"]["median"] == pytest.approx(2.5)
    assert got["generation"]["verdict"] == "missed"  # median 3.95 < 4, though one repeat reached 4.1
    assert got["training_dpo"]["verdict"] == "met" and got["training_ppo"]["verdict"] == "not measured"
    assert got["generation"]["key"] == "generate.speedup_vs_batched_generate_fp32"
    # no native bf16: the training bar does not apply
    units = {"score": {"cpu": {**cpu, "native_bf16_flags": []}}, "generate": {}}
    got = {b["bar"]: b for b in bars(figures, units, TARGETS)}
    assert got["training_dpo"]["verdict"] == "n/a"
    assert got["scoring"]["verdict"] == "met"


def test_bars_section_sets_the_generation_bar_against_the_matmul_ceiling():
    from bench.perf import TARGETS, bars
    from bench.perf.report import _bars_section
    from bench.perf.timing import summarize

    cpu = {"native_bf16_flags": ["amx_bf16"], "auto_resolves_to": "bf16", "cuda": False}
    units = {"generate": {"cpu": cpu}}
    for ceiling, word in ((2.7, "above"), (5.0, "within")):
        figures = {"generate": {"speedup_vs_batched_generate_fp32": summarize([1.4]),
                                "floor_bf16_speedup_vs_batched_generate_fp32": summarize([ceiling])}}
        md = "\n".join(_bars_section({"bars": bars(figures, units, TARGETS), "figures": figures}))
        assert f"would reach {ceiling:g} x (n=1)" in md and f"The 4x target is {word} that ceiling" in md
    figures = {"generate": {"speedup_vs_batched_generate_fp32": summarize([1.4])}}  # an older JSON: no floor
    assert "ceiling" not in "\n".join(_bars_section({"bars": bars(figures, units, TARGETS), "figures": figures}))


def test_isolated_unit_reports_its_own_peak_memory(tmp_path):
    from bench.perf.units import run_unit

    u = run_unit("alloc", {"mb": 96}, isolate=True, log_dir=tmp_path)
    assert u["isolated"] and u["allocated_mb"] == 96
    assert u["peak_rss_mb"] >= 96  # the child's ru_maxrss, from os.wait4
    bad = run_unit("score", {"profile": "no-such-profile"}, isolate=True, log_dir=tmp_path)
    assert "unknown profile" in bad["error"]


def test_gpu_code_paths_run_on_a_tiny_shape_on_cpu():
    """The GPU units only run where CUDA exists; the same code on a micro shape keeps them honest."""
    from bench.memory_plan import ModelShape
    from bench.perf.gpu import peak_tflops, unit_1b_train, unit_7b_lora_ppo

    tiny = dict(name="tiny", hub_id="-", layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=128,
                tied_embeddings=True)
    t = unit_1b_train({"device": "cpu", "shape": tiny, "seq_len": 16, "batch": 2, "steps": 1})
    assert len(t["seconds"]) == 1 and t["tokens_per_step"] == 32 and t["flops_per_token"] > 6 * 1000
    p = unit_7b_lora_ppo({"device": "cpu", "shape": tiny, "prompts": 2, "prompt_len": 4, "max_new_tokens": 3,
                          "lora_rank": 2})
    assert p["fits"], p.get("error")
    assert p["plan_gb_policy_side"] > 0 and p["variant"] == "ppo-lag" and p["plan_peak"] in p["plan_phases_gb"]
    assert p["score_models"] == "on the device"  # CPU: nothing is offloaded
    assert p["score_model_params"] == ModelShape(**tiny).score_params  # reward and cost models of the same shape
    assert peak_tflops("Tesla V100-SXM2-32GB") == 125.0 and peak_tflops("mystery card") is None


def test_perf_quick_writes_markdown_and_json(smoke_base, tmp_path):
    from bench.cli import main

    r = CliRunner().invoke(main, ["perf", "--quick", "--profile", "smoke", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "perf-smoke.md").read_text()
    res = json.loads((tmp_path / "perf-smoke.json").read_text())
    from bench.perf.report import SECTIONS

    for section in SECTIONS:
        assert section in md
    assert "cpu_count" in res["provenance"]["hardware"] and res["provenance"]["packages"]["lm-eval"]
    for key in ("matmul_peak", "score", "generate", "dpo_ours", "dpo_trl_defaults", "ppo"):
        assert key in res["units"] and "error" not in res["units"][key], (key, res["units"][key].get("error"))
        assert res["units"][key]["peak_rss_mb"] > 0
    fig = res["figures"]
    for key in ("matmul_peak", "score", "generate", "dpo", "ppo"):
        assert key in fig
    assert fig["matmul_peak"]["fp32_gflops"] > 0 and fig["matmul_peak"]["bf16_gflops"] > 0
    assert fig["score"]["speedup_vs_lm_eval_fp32"]["n"] == 1
    assert fig["generate"]["speedup_vs_batched_generate_fp32"]["n"] == 1
    for prec in ("fp32", "bf16"):
        assert fig["dpo"][f"ours_{prec}_flops"]["fraction_of_bf16_peak"]["n"] == 1
        assert fig["ppo"][f"{prec}_flops"]["fraction_of_fp32_peak"]["n"] == 1
    assert res["units"]["score"]["agreement"]["tokens_agree_1e-3"]
    from bench.losses import CACHE_ROWS

    assert res["units"]["dpo_ours"]["head_fold_rows"] == CACHE_ROWS  # ours as the pipeline trains
    assert res["units"]["dpo_trl_defaults"]["head_fold_rows"] is None  # TRL as it ships
    assert f"head's folds in row slices of {CACHE_ROWS}" in md
    assert [b["bar"] for b in res["bars"]][:2] == ["scoring", "generation"]
    assert all(b["verdict"] in ("met", "missed", "n/a") for b in res["bars"])
    assert "| >= 4x |" in md and "| >= 40% |" in md
    assert "ours: `generate_greedy`, fp32" in md and "ours: `generate_greedy`, bf16" in md
    assert res["units"]["generate"]["identical_outputs"]["ours_fp32"] == res["units"]["generate"]["n_prompts"]
    import torch

    if not torch.cuda.is_available():
        assert res["gpu_skipped"] and "GPU units skipped: no CUDA device" in md
    assert "(target >= 2x)" in md and "from the run records" in md


def test_stage_times_do_not_mix_eval_records_into_training_stages(tmp_path, monkeypatch):
    """Eval records carry the scored variant's name; per-stage figures must still match on stage."""
    import json

    from bench.perf import stage_times

    monkeypatch.setenv("BENCH_RUNS", str(tmp_path))
    for rel, stage, wall in (("dpo", "dpo", 100.0), ("eval/dpo", "eval", 5.0), ("eval/base", "eval", 7.0)):
        d = tmp_path / "p" / rel
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps({
            "schema_version": 1, "variant": rel.split("/")[-1], "stage": stage, "profile": "p",
            "config_hash": "h", "metrics": {}, "wall_time_s": wall}))
    st = stage_times("p")["stages"]
    assert st["dpo"]["total_s"] == 100.0 and st["dpo"]["per_variant_s"]["n"] == 1
    assert st["eval"]["total_s"] == 12.0 and st["eval"]["per_variant_s"]["n"] == 2


def _record(variant: str, stage: str, wall: float, config_hash: str = "h", extraction: float | None = None) -> dict:
    metrics = {} if extraction is None else {"extraction_wall_time_s": {"value": extraction}}
    return {"schema_version": 1, "variant": variant, "stage": stage, "profile": "p", "config_hash": config_hash,
            "metrics": metrics, "wall_time_s": wall}


def test_stage_wall_times_count_shared_work_once_per_config():
    from bench.report.sections import stage_wall_times

    recs = [_record("steer-add", "steer", 2.0, "a", extraction=700.0), _record("steer-ablate", "steer", 1.0, "a", 700.0),
            _record("steer-gated", "steer", 4.0, "b", extraction=50.0), _record("dpo", "dpo", 100.0),
            _record("dpo", "eval", 5.0)]
    w = stage_wall_times(recs)
    assert list(w) == ["dpo", "steer", "eval"]  # pipeline order, not record order
    assert w["steer"] == {"walls": [2.0, 1.0, 4.0], "shared_s": 750.0, "total_s": 757.0}
    assert w["dpo"]["total_s"] == 100.0 and w["eval"]["walls"] == [5.0]


def test_perf_stage_times_match_the_leaderboards_and_read_committed_records(tmp_path, monkeypatch):
    """make bench's stage table counts steering's extraction as the leaderboard does, from the run tree
    or from leaderboards/<name>/records/ (--stage-records)."""
    import json

    from bench.perf import stage_times
    from bench.report.sections import stage_times as leaderboard_stage_times

    recs = {"steer-add": _record("steer-add", "steer", 2.0, extraction=700.0),
            "steer-ablate": _record("steer-ablate", "steer", 1.0, extraction=700.0),
            "eval/steer-add": _record("steer-add", "eval", 9.0)}
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BENCH_LEADERBOARDS", str(tmp_path / "lb"))
    for rel, rec in recs.items():
        d = tmp_path / "runs" / "p" / rel
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(rec))
        f = tmp_path / "lb" / "p-s2" / "records" / f"{rel}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(rec))
    run_tree, committed = stage_times("p"), stage_times("p", published="p-s2")
    for st in (run_tree, committed):
        assert st["stages"]["steer"]["total_s"] == 703.0 and st["stages"]["steer"]["shared_s"] == 700.0
        assert st["stages"]["steer"]["per_variant_s"]["n"] == 2 and st["total_s"] == 712.0
    assert committed["runs_dir"].endswith("p-s2/records") and committed["published"] == "p-s2"
    assert run_tree["published"] is None
    total_row = [ln for ln in leaderboard_stage_times(recs) if ln.startswith("| **total**")][0]
    assert "**712**" in total_row  # the leaderboard's own table: the same total


def _gpu_result(only: str | None) -> dict:
    """A hand-made `bench perf` result with the three GPU units, as a GPU node writes it."""
    prov = {"date": "2026-12-04", "git": {"sha": "abc"}, "packages": {"torch": "2.13.0"},
            "hardware": {"platform": "linux", "gpus": ["NVIDIA H200"], "cuda": "12.6"}}
    one_b = {"params": 1.1e9, "batch": 4, "seq_len": 1024, "device_name": "NVIDIA H200", "peak_tflops_fp16": 989.0,
             "peak_gpu_mem_gb": 20.0, "tokens_per_step": 4096, "seconds": [0.5, 0.5], "flops_per_token": 8e9}
    ds = {**one_b, "deepspeed": "0.19.8", "zero_stage": 2, "offload": "cpu", "init_s": 60.0, "losses": [11.0, 9.5],
          "loss_scale": 32768.0, "peak_gpu_mem_gb": 4.0, "seconds": [1.0, 1.0]}
    lora = {"lora_rank": 16, "prompts": 4, "prompt_len": 256, "max_new_tokens": 256, "cap_gb": 32.0, "fits": True,
            "peak_gpu_mem_gb": 17.0, "peak_gpu_reserved_gb": 18.0, "plan_gb_policy_side": 16.0, "plan_gb_total": 40.0}
    from bench.perf import _gpu_1b_figures

    return {"profile": "smoke", "quick": False, "repeats": 1, "isolated": True, "only": only, "provenance": prov,
            "stages": None, "gpu_skipped": None,
            "units": {"gpu_1b_train": one_b, "gpu_1b_deepspeed": ds, "gpu_7b_lora_ppo": lora},
            "figures": {"gpu_1b_train": _gpu_1b_figures(one_b), "gpu_1b_deepspeed": _gpu_1b_figures(ds)},
            "targets": {"scoring_speedup": 2.0, "pipeline_s": 1200, "gpu_cap_gb": 32.0}}


def test_gpu_only_report_renders_the_gpu_units_and_nothing_else(tmp_path):
    from bench.perf import output_paths
    from bench.perf.report import render

    md = render(_gpu_result("gpu"))
    assert "--only gpu" in md and "## GPU" in md and "## Machine" in md
    for section in ("## Stages", "## Scoring", "## Generation", "## Training"):
        assert section not in md
    # tokens/s = 4096 / 0.5 s; MFU = 8192 * 8e9 / 989e12
    assert "**8,192 [8,192-8,192] (n=2) tokens/s**" in md and "MFU 0.0663" in md
    assert "ZeRO-2, optimiser on the cpu" in md and "loss 11.00 -> 9.50" in md
    assert "under a 32 GB cap: fits" in md
    assert output_paths("default", tmp_path, "gpu")[0].name == "perf-gpu.md"
    assert output_paths("default", tmp_path)[0].name == "perf.md"


def test_perf_only_gpu_refuses_without_a_gpu(tmp_path):
    import torch

    from bench.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(main, ["perf", "--only", "gpu", "--profile", "smoke", "--out-dir", str(tmp_path)])
    assert r.exit_code != 0 and "no CUDA device" in str(r.exception) + r.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gpu_check_plans_the_issue_steps_and_refuses_without_cuda(tmp_path, capsys):
    """`make gpu-check`: the 7B PPO-Lagrangian step, then every smoke stage under DeepSpeed fp16; on a
    machine without CUDA one line, exit code 2 and nothing written."""
    import torch

    from bench.config import load_config
    from bench.perf import gpu_check

    names = [s["name"] for s in gpu_check.plan()]
    assert names == ["ppo-lag-7b", "base", "sft", "reward", "cost", "dpo", "ppo", "steer", "eval", "leaderboard"]
    cfg = load_config("smoke", gpu_check.overrides())
    for section in ("sft", "reward", "cost", "dpo", "ppo"):
        sec = getattr(cfg, section)
        assert sec.deepspeed == "configs/deepspeed/zero2_offload.json" and sec.fp16, section
    assert gpu_check.PPO7B_ARGS["cap_gb"] == 32.0
    assert sum(s["timeout_s"] for s in gpu_check.plan()) > gpu_check.BUDGET_S <= 8 * 60  # the budget bounds it
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(names) and all(n in line for n, line in zip(names, out))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out-dir", str(tmp_path / "lb"), "--log-dir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_check_section_replaces_itself_in_perf_gpu_md(tmp_path):
    from bench.perf import gpu_check

    (tmp_path / "perf-gpu.md").write_text("# Performance\n\n## GPU\n\nold numbers\n")
    (tmp_path / "perf-gpu.json").write_text('{"units": {}}')
    result = {"date": "2026-12-05", "device": "NVIDIA H200", "git": "abc", "wall_s": 300.0,
              "ppo_lag_7b": {"fits": True, "lora_rank": 16, "prompts": 4, "prompt_len": 256, "max_new_tokens": 256,
                             "cap_gb": 32.0, "peak_gpu_mem_gb": 28.0, "peak_gpu_reserved_gb": 29.0,
                             "phase_peak_gb": {"scoring": 28.0, "policy step": 16.0}, "plan_gb_total": 28.4,
                             "plan_peak": "scoring", "score_copy_s": [2.0, 2.1]},
              "stages": [{"name": "base", "rc": 0, "ok": True, "wall_s": 3.0},
                         {"name": "sft", "rc": 1, "ok": False, "wall_s": 9.0}]}
    gpu_check.write_results(result, tmp_path)
    gpu_check.write_results(result, tmp_path)
    md = (tmp_path / "perf-gpu.md").read_text()
    assert md.count("## GPU check") == 1 and "old numbers" in md
    assert "**fits**; peak allocated 28.0 GB" in md and "memory plan 28.4 GB (peak at scoring)" in md
    assert "| sft | **failed** (rc 1) | 9.0 |" in md
    data = json.loads((tmp_path / "perf-gpu.json").read_text())
    assert data["units"] == {} and data["gpu_check"]["stages"][1]["ok"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_deepspeed_unit_trains_a_tiny_shape_on_gpu():
    import deepspeed  # noqa: F401  (a locked dependency: a missing one must fail, not skip)

    from bench.perf.gpu import unit_1b_deepspeed

    tiny = dict(name="tiny", hub_id="-", layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=256,
                tied_embeddings=True)
    u = unit_1b_deepspeed({"shape": tiny, "seq_len": 64, "batch": 2, "steps": 3})
    assert len(u["seconds"]) == 3 and all(s > 0 for s in u["seconds"])
    assert u["zero_stage"] == 2 and u["offload"] == "cpu" and u["peak_gpu_mem_gb"] > 0
    assert u["losses"][-1] < u["losses"][0]  # it trains: same batch four times
