"""End to end through verl's PPO trainer on CPU: ``python -m verl_stable.main algorithm=minirl routing_replay=R3``
with the ``hf_cpu`` rollout returning every token's experts, the FSDP2 engine replaying them, and the route
metrics arriving in verl's file logger -- on verl's v1 trainer (TransferQueue) and its legacy trainer
(DataProto, ``trainer.use_v1=False``), the routes one byte per id all the way from the rollout server to the
engine. Then the same with ``routing_replay=R2``.

One Ray cluster per run (about a minute each on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.slow


def _run(run_dir: Path, mode: str, steps: int = 2, extra: tuple[str, ...] = ()) -> list[dict]:
    from verl_stable.apps.cpu_overrides import cpu_overrides

    py = sys.executable
    subprocess.run([py, "-m", "verl_stable.tasks.addition", str(run_dir)], check=True, capture_output=True)
    env = dict(os.environ, VERL_PLATFORM="cpu", TOKENIZERS_PARALLELISM="false",
               VERL_FILE_LOGGER_PATH=str(run_dir / "metrics.jsonl"))
    overrides = cpu_overrides(run_dir, steps=steps, routing_replay=(mode == "R3"))
    cmd = [py, "-m", "verl_stable.main", "algorithm=minirl", f"routing_replay={mode}", *overrides, *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row.get("data", row) for row in rows]


@pytest.mark.parametrize("trainer", ["v1", "legacy"])
def test_r3_end_to_end(tmp_path, trainer):
    # verl's rollout MoE load-balance metrics read the routes in the trainer's batch: they arrived (compact).
    extra = ("actor_rollout_ref.rollout.moe_load_balance_metrics_interval=1",)
    rows = _run(tmp_path, "R3", extra=(*extra, f"trainer.use_v1={trainer == 'v1'}"))
    assert len(rows) == 2
    for m in rows:
        # The routes reached the engine as the rollout server sent them: uint8, one byte per expert id
        # (verl 0.9.1's agent loop would widen them to int16: verl_stable.integration.agent_loop keeps them compact).
        assert m["actor/routing/old_pass/route_id_bytes"] == 1.0
        assert m["actor/routing/route_id_bytes"] == 1.0
        if trainer == "v1":  # verl computes the rollout MoE load-balance metrics in its v1 trainer only
            assert m["rollout/moe/routed_experts_found"] == 1.0
        # The rollout (vLLM's convention) routes every token it ran the model on: all but each sequence's
        # final token, whose logits predict past the end and never enter the loss. So exactly one token per
        # sequence is unrouted: the fraction is 1 / mean(prompt + response length).
        per_sequence = 1.0 / (m["prompt_length/mean"] + m["response_length/mean"])
        assert m["actor/routing/old_pass/tokens_without_route"] == pytest.approx(per_sequence, rel=1e-6)
        assert m["actor/routing/tokens_without_route"] == pytest.approx(per_sequence, rel=1e-6)
        # The train-inference route mismatch (π_old pass, θ_old) is reported per layer, as a fraction.
        for key in ("actor/routing/old_pass/agreement_mean", "actor/routing/old_pass/agreement_layer_0",
                    "actor/routing/old_pass/tokens_mismatch_any_layer", "actor/routing/agreement_mean"):
            assert 0.0 <= m[key] <= 1.0, key
        assert math.isfinite(m["actor/pg_loss"])


def test_r2_end_to_end(tmp_path):
    rows = _run(tmp_path, "R2")
    assert len(rows) == 2
    for m in rows:
        # One mini-batch per step: the update runs at θ_old and replays the routes recorded there, so the
        # routers agree with every replayed expert (R2 changes nothing on-policy).
        assert m["actor/routing/agreement_mean"] == 1.0
        assert m["actor/routing/tokens_mismatch_any_layer"] == 0.0
        assert m["actor/routing/tokens_without_route"] == 0.0
        assert "actor/routing/old_pass/agreement_mean" not in m  # R2's π_old pass records, compares nothing
        assert m["actor/routing/route_id_bytes"] == 1.0  # the recorded routes travel compact too
        assert math.isfinite(m["actor/pg_loss"])
