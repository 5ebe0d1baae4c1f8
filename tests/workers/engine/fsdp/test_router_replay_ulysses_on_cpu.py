"""Routes under Ulysses sequence parallelism (2 gloo processes): the FSDP engine's pad + slice of the
replayed routes, and the gather + unpad of recorded ones (``MicroBatchLayout``), against verl's own Ulysses
functions.

A full SP forward needs flash-attn (verl's Ulysses attention patch), which CPUs lack; the routes' side of
it is pure layout, checked here with the engine's real helpers: every token carries a route that encodes its
global packed position, so a route on the wrong token is visible.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

E, K, L = 8, 2, 2


def _route_of(pos: torch.Tensor) -> torch.Tensor:
    """A distinct, valid top-2 per layer that encodes the global packed position ``pos``."""
    cols = [torch.stack([(pos + 2 * layer) % E, (pos + 2 * layer + 1) % E], dim=-1) for layer in range(L)]
    return torch.stack(cols, dim=-2)  # [..., L, K]


def _worker(rank: int, world: int, port: int, result_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from verl.utils.ulysses import set_ulysses_sequence_parallel_group
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

        set_ulysses_sequence_parallel_group(dist.new_group([0, 1]))

        class Layout:
            """Only the engine state the layout helpers read (verl's own pad-size and gather methods)."""

            ulysses_sequence_parallel_size = world
            use_ulysses_sp = True
            pad_to_length_bucket = 16
            _get_packed_pad_size = FSDPEngine._get_packed_pad_size
            _gather_and_unpad_packed = FSDPEngine._gather_and_unpad_packed

        for pad_to_length in (False, True):
            _check_layout(Layout(), pad_to_length, world, rank, result_dir)
    finally:
        dist.destroy_process_group()


def _check_layout(eng, pad_to_length: bool, world: int, rank: int, result_dir: str):
    """One micro-batch's routes through this rank's pad + slice, and a recording back through gather + unpad."""
    from verl.utils.ulysses import ulysses_pad_and_slice_inputs

    from verl_stable.routing import Routes, RouteSpec
    from verl_stable.routing.fsdp import MicroBatchLayout

    eng.pad_to_length = pad_to_length
    spec = RouteSpec(num_experts=E, top_k=K, moe_layers=tuple(range(L)), num_hidden_layers=L)

    lengths = [5, 9, 3, 6]  # nnz = 23: odd, so the Ulysses pad is not zero
    nnz = sum(lengths)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    input_ids = torch.nested.nested_tensor_from_jagged(torch.arange(nnz) + 100, offsets=offsets)
    routes = torch.nested.nested_tensor_from_jagged(_route_of(torch.arange(nnz)).to(torch.int16), offsets=offsets)

    # What verl's prepare_model_inputs does to the tokens: static pad, then Ulysses pad + slice.
    static = eng._get_packed_pad_size(nnz)
    positions = torch.nn.functional.pad(torch.arange(nnz).unsqueeze(0), (0, static), value=-1)
    local_pos, _, sp_pad = ulysses_pad_and_slice_inputs(positions, sp_size=world, pad_value=-1)
    local_pos = local_pos.squeeze(0)
    micro_batch = {"input_ids": input_ids, "routed_experts": routes}  # remove-padding on (verl's default)
    layout = MicroBatchLayout.of(eng, micro_batch, {"input_ids": local_pos.unsqueeze(0)}, {"pad_size": static + sp_pad})
    assert (layout.static_pad, layout.sp_rank) == (static, rank)

    local, missing = layout.routes_for_model(routes, spec)
    assert local.num_tokens == local_pos.numel()
    real = local_pos >= 0
    assert torch.equal(local.valid_mask(), real)  # pad rows carry no route: routed natively
    assert torch.equal(local.experts[real].long(), _route_of(local_pos[real]))
    assert missing == 0

    # Recording: each rank's routers see its slice; the gather + unpad rebuilds the global nested routes.
    recorded_local = Routes(_route_of(local_pos.clamp_min(0)).to(spec.dtype), E)
    back = layout.recorded_to_nested(recorded_local)
    assert torch.equal(back.offsets(), input_ids.offsets())
    assert torch.equal(back.values(), routes.values())
    result = {"ok": True, "static": static, "sp_pad": sp_pad}
    torch.save(result, os.path.join(result_dir, f"rank{rank}_{pad_to_length}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_routes_follow_tokens_through_ulysses_pad_and_slice(tmp_path):
    """Both without and with pad_to_length (static bucket pad before the Ulysses pad), on 2 SP ranks."""
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for pad_to_length, sp_pad in ((False, 1), (True, 0)):  # nnz 23 -> 24 (Ulysses) or 32 (bucket 16)
        results = [torch.load(tmp_path / f"rank{r}_{pad_to_length}.pt") for r in range(2)]
        assert all(r["ok"] for r in results)
        assert results[0]["sp_pad"] == sp_pad
