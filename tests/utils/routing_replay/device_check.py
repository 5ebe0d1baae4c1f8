"""GPU check of routing replay (not collected by pytest: run by hand on a CUDA machine).

    python tests/utils/routing_replay/device_check.py

Checks on CUDA, per family and dtype: record and replay-own-routes bit-identical to the stock model, random
routes reach the experts exactly (routes handed over on the CPU), and gradient-checkpoint recompute replays
them. Prints one line per check and "ALL OK" at the end; exits non-zero on a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root

from verl_stable.routing import Routes, RoutingReplay  # noqa: E402

from tests.utils.routing_replay.helpers import (  # noqa: E402
    FAMILIES,
    VOCAB,
    ExpertTap,
    random_routes_idx,
    tiny_model,
    token_logprobs,
)


def check(name: str, ok: bool, failures: list) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def main() -> int:
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    failures: list[str] = []
    x = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(0)).to(dev)
    for family in FAMILIES:
        for dtype in (torch.float32, torch.bfloat16):
            tag = f"{family} {str(dtype).split('.')[-1]}"
            model = tiny_model(family, dtype=dtype).to(dev)
            never_wrapped = tiny_model(family, dtype=dtype).to(dev)
            experts_impl = getattr(model.config, "_experts_implementation", None)
            # transformers picks its fused grouped_mm experts kernel by default where it can dispatch.
            check(f"{tag}: experts implementation = {experts_impl}", experts_impl in ("grouped_mm", None), failures)
            rr = RoutingReplay(model)
            with torch.no_grad():
                ref = token_logprobs(never_wrapped, x)
                with rr.record() as rec:
                    recorded = token_logprobs(model, x)
                with rr.replay(rec.routes[0].to("cpu")):  # routes arrive on the CPU, as from a batch
                    replayed = token_logprobs(model, x)
                after = token_logprobs(model, x)
            check(f"{tag}: record == stock", torch.equal(recorded, ref), failures)
            check(f"{tag}: replay own routes == stock", torch.equal(replayed, ref), failures)
            check(f"{tag}: after contexts == never wrapped", torch.equal(after, ref), failures)

            spec = rr.spec
            idx = random_routes_idx(x.numel(), spec.num_layers, spec.num_experts, spec.top_k)
            routes = Routes.from_indices(idx, spec.num_experts)
            model.train()
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            with ExpertTap(model, rr) as tap, rr.replay(routes, track_agreement=True) as state:
                token_logprobs(model, x).float().sum().backward()
            ok = all(
                len(calls) == 2 and all(torch.equal(c.cpu(), idx[:, layer]) for c in calls)
                for layer, calls in enumerate(tap.calls)
            )
            check(f"{tag}: random routes used in forward and checkpoint recompute", ok, failures)
            grads = [s.module.weight.grad for s in rr.sites] if family != "deepseek_v3" else [
                s.module.gate.weight.grad for s in rr.sites
            ]
            check(f"{tag}: routers get gradient", all(g is not None and g.abs().sum() > 0 for g in grads), failures)
            check(f"{tag}: agreement < 1 for random routes", bool((state.agreement().agreement < 1).all()), failures)
    print("ALL OK" if not failures else f"{len(failures)} FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
