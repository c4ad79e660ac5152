"""`make gpu-check`: the prepared GPU check of issue 24, one command on a machine lent a GPU (no internet).

    make gpu-check                                   # == python -m bench.perf.gpu_check
    python -m bench.perf.gpu_check --dry-run         # list the steps; works anywhere
    python -m bench.perf.gpu_check --out-dir /tmp/x  # write the results elsewhere

Steps, in order (the 7B step first: it is the claim the memory plan makes):

1. ``ppo-lag-7b``: one PPO-Lagrangian step of our loop on a ``llama2-7b``-shaped fp16 LoRA policy
   with ``llama2-7b``-shaped reward and cost models, random weights (no download), under a 32 GB
   cap (``torch.cuda.set_per_process_memory_fraction``): :func:`bench.perf.gpu.unit_7b_lora_ppo`,
   peak memory per phase next to ``bench.memory_plan``'s estimate (which says <= 32 GB).
2. The smoke pipeline end to end under DeepSpeed fp16 (``configs/deepspeed/zero2_offload.json``
   and ``fp16=true`` for every section that trains: sft, reward, cost, dpo, ppo), each stage the
   documented way (``python -m bench <stage> --profile smoke``, no launcher), runs, caches and
   leaderboard in a temporary directory: base, sft, reward, cost, dpo, ppo, steer, eval, leaderboard.

Each step runs in its own process with a timeout (the whole check stays under 8 minutes on one
GPU); a failing step is recorded with the tail of its output and the check goes on. Results go into
``leaderboards/perf-gpu.json`` (key ``gpu_check``) and a ``## GPU check`` section of
``leaderboards/perf-gpu.md`` (between ``<!-- gpu-check -->`` markers; the rest is left as is).
Each step's full output goes to ``runs/gpu-check/<step>.log`` (``--log-dir``). Without CUDA it
prints one line and exits with code 2, writing nothing. Exit code 1 when a step
failed or the 7B step did not fit. Tested (dry run, refusal) in ``tests/test_perf.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEEPSPEED_JSON = "configs/deepspeed/zero2_offload.json"
TRAINED_SECTIONS = ("sft", "reward", "cost", "dpo", "ppo")  # the sections that accept `deepspeed`
PIPELINE = ("base", "sft", "reward", "cost", "dpo", "ppo", "steer", "eval", "leaderboard")
PPO7B_ARGS = {"cap_gb": 32.0, "prompts": 4, "prompt_len": 256, "max_new_tokens": 256, "lora_rank": 16}
PPO7B_TIMEOUT_S = 200
STAGE_TIMEOUT_S = 150
BUDGET_S = 460  # all steps together (under 8 minutes); a step gets at most what is left, then skips
MARK_START, MARK_END = "<!-- gpu-check -->", "<!-- /gpu-check -->"


def overrides() -> list[str]:
    """DeepSpeed ZeRO-2 + CPU optimizer offload and fp16 for every trained section of the smoke profile."""
    return [f"{s}.{k}={v}" for s in TRAINED_SECTIONS for k, v in (("deepspeed", DEEPSPEED_JSON), ("fp16", "true"))]


def stage_command(stage: str) -> list[str]:
    sub = "publish" if stage == "leaderboard" else stage  # publish copies the records, then renders
    return [sys.executable, "-m", "bench", sub, "--profile", "smoke", *overrides()]


def plan() -> list[dict]:
    """The steps, in order: what --dry-run prints and the check runs."""
    args = json.dumps(PPO7B_ARGS, sort_keys=True)
    steps = [{"name": "ppo-lag-7b", "timeout_s": PPO7B_TIMEOUT_S,
              "command": [sys.executable, "-m", "bench.perf.gpu_check", "--unit-7b", args]}]
    steps += [{"name": st, "timeout_s": STAGE_TIMEOUT_S, "command": stage_command(st)} for st in PIPELINE]
    return steps


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


def run_step(step: dict, env: dict, log_dir: Path) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(step["command"], env=env, capture_output=True, text=True, timeout=step["timeout_s"])
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, err = 124, f"timed out after {step['timeout_s']} s"
    (log_dir / f"{step['name']}.log").write_text(f"$ {' '.join(step['command'])}\n{out}\n--- stderr\n{err}")
    res = {"name": step["name"], "rc": rc, "ok": rc == 0, "wall_s": round(time.perf_counter() - t0, 1)}
    if rc:
        res["error_tail"] = _tail(err or out)
    return res


def _unit_7b(args_json: str) -> int:
    """Child process of step 1: run the unit, print its result as the last line of stdout."""
    from bench.perf.gpu import unit_7b_lora_ppo

    print(json.dumps(unit_7b_lora_ppo(json.loads(args_json))))
    return 0


def render(result: dict) -> str:
    """The ``## GPU check`` section (between the markers)."""
    lines = [MARK_START, "## GPU check", "",
             f"`make gpu-check` on {result['device']} ({result['date']}, git `{result['git']}`), "
             f"{result['wall_s']:.0f} s in all. Raw results: `gpu_check` in the JSON beside this file.", ""]
    u = result.get("ppo_lag_7b") or {}
    if u.get("fits") is not None:
        verdict = "fits" if u["fits"] else "does **not** fit"
        phases = ", ".join(f"{k} {v:.1f}" for k, v in (u.get("phase_peak_gb") or {}).items() if v is not None)
        lines.append(
            f"7B-shaped PPO-Lagrangian step (LoRA rank {u['lora_rank']}, reward + cost models offloaded to host "
            f"RAM, {u['prompts']} prompts x {u['prompt_len']} + {u['max_new_tokens']} tokens, gradient "
            f"checkpointing) under a {u['cap_gb']:g} GB cap: **{verdict}**; peak allocated "
            f"{u.get('peak_gpu_mem_gb', float('nan')):.1f} GB (reserved {u.get('peak_gpu_reserved_gb', float('nan')):.1f} GB); "
            f"by phase (GB): {phases or 'n/a'}; memory plan {u['plan_gb_total']:.1f} GB (peak at {u['plan_peak']}). "
            f"Score-model copies to the GPU: {', '.join(f'{s:.1f} s' for s in u.get('score_copy_s', [])) or 'n/a'}.")
    else:
        lines.append(f"7B-shaped PPO-Lagrangian step: failed: {u.get('error', 'no result')}")
    lines += ["", "| smoke stage under DeepSpeed fp16 | result | wall s |", "|---|---|---:|"]
    for st in result["stages"]:
        verdict = "ok" if st["ok"] else ("skipped (time budget)" if st.get("skipped") else f"**failed** (rc {st['rc']})")
        lines.append(f"| {st['name']} | {verdict} | {st['wall_s']:.1f} |")
    return "\n".join(lines + ["", MARK_END]) + "\n"


def write_results(result: dict, out_dir: Path) -> None:
    from bench.io import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "perf-gpu.json", out_dir / "perf-gpu.md"
    data = json.loads(js.read_text()) if js.exists() else {}
    data["gpu_check"] = result
    atomic_write_text(js, json.dumps(data, indent=1, sort_keys=True) + "\n")
    text = md.read_text() if md.exists() else "# Performance: GPU\n\n"
    section = render(result)
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(md, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    ap.add_argument("--out-dir", default=None, help="where perf-gpu.md/json go (default: leaderboards/)")
    ap.add_argument("--log-dir", default=None, help="each step's full output (default: runs/gpu-check/)")
    ap.add_argument("--unit-7b", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.unit_7b is not None:
        return _unit_7b(args.unit_7b)
    if args.dry_run:
        for i, st in enumerate(plan(), 1):
            print(f"{i:2d}. {st['name']:<12} (timeout {st['timeout_s']} s) {' '.join(st['command'][1:])}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing run, "
              "nothing written", file=sys.stderr)
        return 2
    from bench.provenance import git_state
    from bench.published import leaderboards_root
    from bench.runs import profile_root

    out_dir = Path(args.out_dir) if args.out_dir else leaderboards_root()
    t0 = time.perf_counter()
    git = git_state()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": torch.cuda.get_device_name(0),
              "git": f"{(git.get('sha') or '?')[:12]}{' (dirty tree)' if git.get('dirty') else ''}", "stages": []}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "BENCH_RUNS": str(tmp / "runs"), "BENCH_CACHE": str(tmp / "cache"),
               "BENCH_LEADERBOARDS": str(tmp / "leaderboards"), "HF_HUB_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
        logs = Path(args.log_dir) if args.log_dir else profile_root("gpu-check")
        logs.mkdir(parents=True, exist_ok=True)
        for step in plan():
            left = BUDGET_S - (time.perf_counter() - t0)
            if left < 10:
                result["stages"].append({"name": step["name"], "rc": None, "ok": False, "skipped": True, "wall_s": 0.0})
                continue
            res = run_step({**step, "timeout_s": int(min(step["timeout_s"], left))}, env, logs)
            print(f"gpu-check: {res['name']}: {'ok' if res['ok'] else 'FAILED rc=' + str(res['rc'])} ({res['wall_s']} s)",
                  flush=True)
            if step["name"] == "ppo-lag-7b":
                log = (logs / "ppo-lag-7b.log").read_text().split("\n--- stderr")[0].strip().splitlines()
                try:
                    result["ppo_lag_7b"] = json.loads(log[-1])
                except (IndexError, json.JSONDecodeError):
                    result["ppo_lag_7b"] = {"error": res.get("error_tail", "no result")}
            else:
                result["stages"].append(res)
    result["wall_s"] = time.perf_counter() - t0
    write_results(result, out_dir)
    ok = all(s["ok"] for s in result["stages"]) and (result.get("ppo_lag_7b") or {}).get("fits") is True
    print(f"gpu-check: {'passed' if ok else 'FAILED'}; results in {out_dir / 'perf-gpu.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
