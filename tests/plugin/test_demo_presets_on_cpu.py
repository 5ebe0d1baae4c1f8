"""Every documented preset runs one step through the demo path (``python -m verl_stable.apps.demo``, what
scripts/demo_cpu.sh and the main job run): verl's v1 trainer, the hf_cpu rollout, the FSDP2 engine. The
console stays short, verl's output goes to the run's log, and nothing is written outside the run directory."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from verl_stable.apps.console import read_metrics

pytestmark = pytest.mark.slow

PRESETS = ("minirl", "minirl_no_is", "minirl_length_norm", "minirl_no_clip", "seq_is")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_one_step_through_the_demo(tmp_path, preset):
    run = tmp_path / "run"
    env = {**os.environ, "STEPS": "1"}
    env.pop("VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(run), f"algorithm={preset}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    console = proc.stdout + proc.stderr
    log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    assert proc.returncode == 0, console + "\n--- log tail ---\n" + log[-4000:]
    assert len(console.splitlines()) < 30, console
    assert "[demo] step 1/1" in proc.stdout and "pg_loss" in proc.stdout, console

    rows = read_metrics(run / "metrics.jsonl")
    assert len(rows) == 1
    data = rows[0]["data"]
    assert math.isfinite(data["actor/pg_loss"]) and math.isfinite(data["rollout_corr/kl"])
    composed = OmegaConf.load(run / "hydra" / ".hydra" / "config.yaml")
    assert composed.actor_rollout_ref.actor.policy_loss.loss_mode == preset
    expected_is = {"minirl_no_is": None, "seq_is": "sequence"}.get(preset, "token")
    assert composed.algorithm.rollout_correction.rollout_is == expected_is
    assert ("actor/is_weight_mean" in data) == (preset not in ("minirl_no_is", "seq_is"))
    # verl's full output went to the log, not the console
    assert "ray init kwargs" in log and "ray init kwargs" not in console
    # library noise silenced at its source (TransferQueue's thread count, verl's optional engines)
    assert "should not exceed total physical CPU cores" not in log and "engine is not available" not in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_verls_own_launcher_runs_our_config_with_a_replay_switch(tmp_path, tiny_assets):
    """verl's main_ppo pointed at our config package, as the README documents, with routing_replay=R2."""
    from verl_stable.apps.cpu_overrides import cpu_overrides

    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics)}
    cmd = [
        sys.executable, "-m", "verl.trainer.main_ppo", "--config-path=pkg://verl_stable.config",
        "--config-name=minirl_trainer", "algorithm=minirl", "routing_replay=R2",
        *cpu_overrides(run, steps=1, model_dir=tiny_assets["model"], data_dir=tiny_assets["root"] / "data"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    data = read_metrics(metrics)[0]["data"]
    assert math.isfinite(data["actor/pg_loss"])
    assert data["actor/routing/agreement_mean"] == 1.0  # R2 at mini-batch one replays what it recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
