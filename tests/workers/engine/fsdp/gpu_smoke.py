"""GPU smoke check of FSDP routing replay (not collected by pytest): the same engine paths as the CPU tests,
on CUDA with NCCL, in fp32 (bit-identity) and bf16 (agreement).

    python tests/workers/engine/fsdp/gpu_smoke.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PLATFORM = os.environ.get("SMOKE_PLATFORM", "nvidia")  # "cpu" to dry-run this script here
os.environ["VERL_PLATFORM"] = PLATFORM
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # the repo root

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    import verl  # noqa: F401
    from tests.workers.engine.fsdp.harness import (
        free_port,
        hf_reference,
        make_batch,
        make_engine,
        ppo_loss_fn,
        random_routes,
        set_engine_keys,
    )
    from tests.utils.routing_replay.helpers.models import save_tiny_moe
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import no_padding_2_padding

    from verl_stable.integration.fsdp_engine import register_replay_engines

    register_replay_engines()  # idempotent: verl_stable.plugin registers when verl imports its FSDP engine
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if PLATFORM == "nvidia":
        torch.cuda.set_device(0)
    else:
        from verl_stable.integration.cpu import activate_if_requested

        activate_if_requested()
    dist.init_process_group("nccl" if PLATFORM == "nvidia" else "gloo", rank=0, world_size=1)
    path = save_tiny_moe(tempfile.mkdtemp())
    for rmpad in (True, False):
        # R2: record in the π_old pass, replay at the same θ: bit-identical log-probs.
        eng = make_engine(path, mode="R2", use_remove_padding=rmpad, use_dynamic_bsz=True)
        td, _ = make_batch()
        set_engine_keys(td, eng)
        with eng.eval_mode():
            old = eng.infer_batch(td)["model_output"]
        td2, _ = make_batch()
        td2["routed_experts"] = old["routed_experts"].cpu()
        td2["old_log_probs"] = no_padding_2_padding(old["log_probs"].cpu(), td).detach()
        set_engine_keys(td2, eng)
        tu.assign_non_tensor(td2, return_model_output=True)
        with eng.train_mode():
            out = eng.train_batch(td2, ppo_loss_fn())
        same = torch.equal(out["model_output"]["log_probs"].values().cpu(), old["log_probs"].values().cpu())
        print(f"[gpu] R2 rmpad={rmpad} bit-identical={same} agreement={out['metrics']['routing/agreement_mean']}")
        assert same and out["metrics"]["routing/agreement_mean"] == [1.0]

        # R3: random routes replayed on their tokens: log-probs = plain model replaying them (CPU reference).
        eng3 = make_engine(path, mode="R3", use_remove_padding=rmpad, use_dynamic_bsz=True)
        routes = random_routes(6, 16)
        td3, padded = make_batch(routes=routes)
        set_engine_keys(td3, eng3)
        with eng3.eval_mode():
            o3 = eng3.infer_batch(td3)
        ref, _, _ = hf_reference(path, padded, routes=routes)
        got = no_padding_2_padding(o3["model_output"]["log_probs"].cpu(), td3)
        mask = padded[1][:, 8:].bool()
        err = (got[mask] - ref[mask]).abs().max().item()
        agreement = o3["metrics"]["routing/old_pass/agreement_mean"]
        print(f"[gpu] R3 rmpad={rmpad} max |logp - ref| = {err:.2e} agreement={agreement}")
        assert err < 1e-3  # TF32/cuBLAS vs CPU reference
    dist.destroy_process_group()
    print("[gpu] OK")


if __name__ == "__main__":
    main()
