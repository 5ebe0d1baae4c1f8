"""R3's coverage guard through verl's real FSDP2 engine (tiny Qwen3-MoE on CPU): a rollout whose routes are all
zero -- what vLLM's FlashInfer TRT-LLM MoE kernels return (vllm-project/vllm#44116) -- stops R3 at the π_old pass
instead of silently replaying nothing; verl-stable's ``router_replay.max_unrouted_fraction`` tolerates it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.workers.engine.fsdp.harness import (
    NUM_LAYERS,
    TOP_K,
    hf_reference,
    make_batch,
    make_engine,
    ppo_loss_fn,
    random_routes,
)
from tests.workers.engine.fsdp.harness import set_engine_keys


def agent_loop_routes(attention_mask: torch.Tensor, engine_rows) -> torch.Tensor:
    """``batch["routed_experts"]`` [B, S, layers, top_k] as verl 0.9.1's agent loop builds it from each
    sequence's engine output (agent_loop.py, ``_postprocess``: ``torch.from_numpy`` of the engine's array,
    ``.to(torch.int16)``, copied from the first real token on; rows after it stay zero)."""
    batch, seq = attention_mask.shape
    out = torch.zeros(batch, seq, NUM_LAYERS, TOP_K, dtype=torch.int16)
    for b in range(batch):
        real = int(attention_mask[b].sum())
        start = int(attention_mask[b].argmax())
        rows = engine_rows(real - 1)  # the engine never routes the final sampled token
        out[b, start : start + rows.shape[0]] = torch.from_numpy(rows).to(torch.int16)
    return out


def vllm_all_zero(n: int) -> np.ndarray:
    """vLLM's CompletionOutput.routed_experts from a kernel path that bypasses route capture."""
    return np.zeros((n, NUM_LAYERS, TOP_K), dtype=np.int32)


def _mask():
    _, padded = make_batch()
    return padded[1]


def test_all_zero_rollout_routes_stop_r3_at_the_old_pass(process_group, tiny_moe_path):
    from verl_stable.routing.coverage import MAX_UNROUTED_KEY, UnroutedTokensError

    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    mask = _mask()
    td, _ = make_batch(routes=agent_loop_routes(mask, vllm_all_zero))
    set_engine_keys(td, engine)
    with engine.eval_mode(), pytest.raises(UnroutedTokensError) as info:
        engine.infer_batch(td)
    n_real, n_seq = int(mask.sum()), mask.shape[0]
    message = str(info.value)
    assert f"{n_real} of {n_real} real tokens (100.0 %)" in message
    assert f"more than the {n_seq} expected" in message
    assert "vllm-project/vllm#44116" in message and "routing_replay=R2" in message and MAX_UNROUTED_KEY in message
    assert not engine.routing_replay.active  # nothing left open on the model
    # an update that sees the batch first (bypass mode: no π_old pass) stops the same way
    td, _ = make_batch(routes=agent_loop_routes(mask, vllm_all_zero))
    td["old_log_probs"] = torch.zeros(td["advantages"].shape)
    set_engine_keys(td, engine)
    with engine.train_mode(), pytest.raises(UnroutedTokensError):
        engine.train_batch(td, ppo_loss_fn())


def test_tolerated_all_zero_routes_run_natively_and_are_reported(process_group, tiny_moe_path):
    """With the tolerance at 1.0 the same batch runs: every token routed natively (the stock model's log-probs),
    and ``tokens_without_route`` says so."""
    from verl_stable.integration.fsdp_engine import RouterReplayConfig

    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True,
                         router_replay=RouterReplayConfig(mode="R3", max_unrouted_fraction=1.0))
    assert engine.max_unrouted_fraction == 1.0
    mask = _mask()
    td, padded = make_batch(routes=agent_loop_routes(mask, vllm_all_zero))
    set_engine_keys(td, engine)
    with engine.eval_mode():
        out = engine.infer_batch(td)
    assert out["metrics"]["routing/old_pass/tokens_without_route"] == [1.0]
    from verl.workers.utils.padding import no_padding_2_padding

    native, _, _ = hf_reference(tiny_moe_path, padded)
    got = no_padding_2_padding(out["model_output"]["log_probs"], td)
    resp = padded[1][:, 8:].bool()
    torch.testing.assert_close(got[resp], native[resp], rtol=0, atol=2e-5)


def test_tool_tokens_without_routes_pass_in_both_batch_layouts(process_group, tiny_moe_path):
    """Multi-turn: response tokens with response_mask 0 (tool / environment) may lack a route. The guard reads
    verl's padded response_mask (legacy trainer) and the nested one (v1 trainer) alike."""
    from verl_stable.routing.fsdp import batch_route_coverage

    mask = _mask()
    routes = agent_loop_routes(mask, lambda n: random_routes(1, n, seed=n)[0].numpy().astype(np.int32))
    td, _ = make_batch(routes=routes)
    response_mask = td["response_mask"].clone()
    # two tool tokens in each sequence with at least 4 response tokens: no route, response_mask 0
    tools = 0
    for b in range(mask.shape[0]):
        r = int(mask[b, 8:].sum())
        if r >= 4:
            routes[b, 8 + 1 : 8 + 3] = 0
            response_mask[b, 1:3] = 0
            tools += 2
    assert tools >= 4
    td, _ = make_batch(routes=routes)
    td["response_mask"] = response_mask
    dense = batch_route_coverage(td)
    assert dense.environment_tokens == tools and dense.without_route == tools + mask.shape[0]
    assert dense.unexpected == 0
    lengths = mask[:, 8:].sum(1).tolist()
    td["response_mask"] = torch.nested.as_nested_tensor(
        [response_mask[b, :n] for b, n in enumerate(lengths)], layout=torch.jagged
    )
    assert batch_route_coverage(td) == dense

    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    td, _ = make_batch(routes=routes)
    td["response_mask"] = response_mask
    set_engine_keys(td, engine)
    with engine.eval_mode():
        out = engine.infer_batch(td)
    n_real = int(mask.sum())
    assert out["metrics"]["routing/old_pass/tokens_without_route"] == [
        pytest.approx((tools + mask.shape[0]) / n_real, abs=1e-12)
    ]


def _coverage_worker(rank: int, world: int, port: int, sp: int, result_dir: str):
    import os
    from types import SimpleNamespace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from verl_stable.routing.coverage import UnroutedTokensError, route_coverage
    from verl_stable.routing.fsdp import RoutingReplayEngineMixin

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # data parallel (sp=1): rank 0's rollout routes are all zero, rank 1's are fine (final tokens only);
        # Ulysses (sp=2): both ranks hold the same healthy shard
        all_zero = sp == 1 and rank == 0
        rows = torch.zeros(10, NUM_LAYERS, TOP_K, dtype=torch.int16)
        if not all_zero:
            rows[:, :, 1] = 1  # a distinct pair (0, 1) per layer
            rows[[4, 9]] = 0  # the final token of each of the 2 sequences
        local = route_coverage(rows, sequences=2)
        engine = SimpleNamespace(ulysses_sequence_parallel_size=sp)
        merged = RoutingReplayEngineMixin._rr_global_coverage(engine, local)
        try:
            merged.check(0.0)
            verdict = "ok"
        except UnroutedTokensError:
            verdict = "stop"
        torch.save({"local": local, "merged": merged, "verdict": verdict}, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_reaches_the_same_verdict(tmp_path):
    """A rank stopping alone would leave the others in FSDP's collectives: the counts are summed over the
    ranks first (Ulysses copies of a shard counted once)."""
    import torch.multiprocessing as mp

    from tests.workers.engine.fsdp.harness import free_port

    for sp, verdict in ((1, "stop"), (2, "ok")):
        mp.spawn(_coverage_worker, args=(2, free_port(), sp, str(tmp_path)), nprocs=2, join=True)
        results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
        assert [r["verdict"] for r in results] == [verdict, verdict]
        assert results[0]["merged"] == results[1]["merged"]
        if sp == 1:
            assert results[1]["local"].ok() and not results[0]["local"].ok()
            assert (results[0]["merged"].tokens, results[0]["merged"].without_route) == (20, 12)
        else:
            assert results[0]["merged"] == results[0]["local"]
