"""scripts/first_node_check.sh: the verdicts on given metrics (GPU branches included), and its CPU path end to end
(VERL_PLATFORM=cpu, the CPU recipe through verl's trainer three times, the GPU-only check skipped and said so)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from verl_stable.apps.first_node import (OLD_PASS_MISMATCH, OLD_PASS_UNROUTED, PEAK_MEMORY, UPDATE_AGREEMENT, RunResult,
                                    memory_verdict, mismatch_verdict, routes_verdict, run_verdict)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "first_node_check.sh"
STEPS = 3


def _run(variant, per_step: dict, rc=0, steps=STEPS, log: Path | None = None) -> RunResult:
    return RunResult(variant, rc, [{"step": s, "data": dict(per_step)} for s in range(1, steps + 1)], log)


def test_run_and_routes_verdicts(tmp_path):
    r3 = _run("minirl_r3", {OLD_PASS_MISMATCH: 0.02, OLD_PASS_UNROUTED: 0.07})
    r2 = _run("minirl_r2", {UPDATE_AGREEMENT: 1.0})
    assert run_verdict(r3, STEPS).line() == "PASS run minirl_r3: 3/3 steps"
    short = _run("minirl", {}, rc=1, steps=2, log=tmp_path / "none.log")
    assert run_verdict(short, STEPS).status == "FAIL" and "steps [1, 2] of 3" in run_verdict(short, STEPS).reason
    v = routes_verdict(r3, r2, STEPS)
    assert v.status == "PASS" and "7.00% of tokens without a route" in v.reason
    log = tmp_path / "train.log"
    log.write_text("verl_stable.routing.coverage.UnroutedTokensError: 98% of real tokens have no route\n")
    v = routes_verdict(RunResult("minirl_r3", 1, [], log), r2, STEPS)
    assert v.status == "FAIL" and "coverage guard stopped the run" in v.reason
    v = routes_verdict(_run("minirl_r3", {}), r2, STEPS)
    assert v.status == "FAIL" and f"logged {OLD_PASS_MISMATCH} on 0 of 3 steps" in v.reason
    v = routes_verdict(r3, _run("minirl_r2", {}), STEPS)
    assert v.status == "FAIL" and UPDATE_AGREEMENT in v.reason


def test_mismatch_verdict_reads_r3s_old_pass_mismatch_as_what_r2_replays():
    v = mismatch_verdict(_run("minirl_r3", {OLD_PASS_MISMATCH: 0.031}), STEPS, on_gpu=True)
    assert v.status == "PASS" and "R3 0 (replays them), R2 3.10% of tokens" in v.reason
    none = _run("minirl_r3", {OLD_PASS_MISMATCH: 0.0})
    assert mismatch_verdict(none, STEPS, on_gpu=False).status == "SKIP"
    assert mismatch_verdict(none, STEPS, on_gpu=True).status == "FAIL"
    v = mismatch_verdict(_run("minirl_r3", {OLD_PASS_MISMATCH: float("nan")}), STEPS, on_gpu=True)
    assert v.status == "FAIL" and "finite" in v.reason


def test_memory_verdict_compares_the_plan_with_verls_peak():
    runs = [_run("minirl", {PEAK_MEMORY: 41.0}), _run("minirl_r3", {PEAK_MEMORY: 52.5})]
    v = memory_verdict(runs, 60.0, "", on_gpu=True)
    assert v.line() == "PASS memory-plan: measured 52.5 GB, plan 60.0 GB per GPU (88% of the plan)"
    v = memory_verdict(runs, 50.0, "", on_gpu=True)
    assert v.status == "FAIL" and "under-estimates" in v.reason
    assert memory_verdict(runs, None, "no per_gpu_peak_gb", on_gpu=True).reason == "no plan: no per_gpu_peak_gb"
    assert memory_verdict([_run("minirl", {PEAK_MEMORY: 0.0})], 60.0, "", on_gpu=True).status == "FAIL"
    v = memory_verdict(runs, None, "", on_gpu=False)
    assert v.status == "SKIP" and "GPU only" in v.reason


def test_the_gpu_path_refuses_a_node_without_nvidia_smi(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["PATH"] = "/usr/bin:/bin"
    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi")
    p = subprocess.run(["bash", str(SCRIPT), "--run-dir", str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "no nvidia-smi" in p.stderr and "VERL_PLATFORM=cpu" in p.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/ci_system_deps.sh)")
def test_the_script_is_shellcheck_clean():
    p = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


@pytest.mark.slow
def test_the_cpu_path_end_to_end(tmp_path):
    env = {**os.environ, "VERL_PLATFORM": "cpu", "RAY_DEDUP_LOGS": "1"}
    env.pop("VERL_FILE_LOGGER_PATH", None)
    p = subprocess.run(["bash", str(SCRIPT), "--run-dir", str(tmp_path), "--steps", str(STEPS)], env=env,
                       capture_output=True, text=True, timeout=1500, cwd=ROOT)
    out = p.stdout
    verdicts = out.split("[first-node] verdicts\n", 1)[-1].splitlines()
    assert p.returncode == 0, out[-4000:] + p.stderr[-3000:]
    assert verdicts[:3] == [f"PASS run {v}: 3/3 steps" for v in ("minirl", "minirl_r2", "minirl_r3")], verdicts
    assert verdicts[3].startswith("PASS routes-arrive: R3: rollout routes on every step"), verdicts
    # the CPU path's int4 rollout routes differently from the fp32 training engine on some tokens
    m = re.match(r"^PASS r3-vs-r2-route-mismatch: routes replayed vs the rollout's: R3 0 \(replays them\), "
                 r"R2 (\d+\.\d+)% of tokens", verdicts[4])
    assert m and float(m.group(1)) > 0, verdicts
    assert verdicts[5] == "SKIP memory-plan: GPU only: the CPU backend has no device memory to measure", verdicts
    assert len(verdicts) == 6
    # the compact step lines of every run, and each run's own metrics file
    assert out.count("[first-node]   step 3/3") == 3
    for variant in ("minirl", "minirl_r2", "minirl_r3"):
        assert (tmp_path / variant / "metrics.jsonl").exists()
