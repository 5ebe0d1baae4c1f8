"""Routes stay compact through verl 0.9.1's agent loop (verl_stable.integration.agent_loop): the padding verl does on each
trainer path, with and without the wrappers, on real verl code."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from verl_stable.integration.agent_loop import align_routes, install, is_compact

LAYERS, TOP_K = 3, 2


def _routes(n: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 300 if dtype == np.uint16 else 8
    rows = (
        np.stack(
            [rng.choice(hi, size=(LAYERS, TOP_K), replace=False) for _ in range(n)]
        )
        if n
        else None
    )
    return (rows if n else np.zeros((0, LAYERS, TOP_K))).astype(dtype)


def test_align_routes_places_rows_and_keeps_the_dtype():
    r = _routes(5, np.uint8)
    out = align_routes(r, total_length=9, start=2)
    assert out.dtype == torch.uint8 and out.shape == (9, LAYERS, TOP_K)
    assert (
        torch.equal(out[2:7], torch.from_numpy(r))
        and not out[:2].any()
        and not out[7:].any()
    )
    # rows past the sequence are dropped (verl's min(rows, total_length))
    cut = align_routes(_routes(12, np.uint16), total_length=10)
    assert cut.dtype == torch.uint16 and torch.equal(
        cut, torch.from_numpy(_routes(12, np.uint16)[:10])
    )
    ro = r.copy()
    ro.flags.writeable = False  # an engine payload from np.frombuffer
    assert torch.equal(align_routes(ro, 5), torch.from_numpy(r))
    with pytest.raises(ValueError, match=r"\[tokens, layers, top_k\]"):
        align_routes(r[0], 5)
    with pytest.raises(ValueError, match="outside a sequence"):
        align_routes(r, 4, start=5)


def test_is_compact():
    assert is_compact(_routes(2, np.uint8)) and is_compact(
        torch.zeros(1, 1, 1, dtype=torch.uint16)
    )
    assert not is_compact(_routes(2, np.int32)) and not is_compact(
        torch.zeros(1, dtype=torch.int16)
    )
    assert not is_compact([[1, 2]])


def _original(fn):
    return getattr(fn, "__verl_stable_compact_routes__")


@pytest.fixture(scope="module")
def agent_loop():
    from verl.experimental.agent_loop import agent_loop as module

    assert install(
        module
    )  # idempotent: verl_stable.plugin did it when verl imported the module
    assert install(module)
    assert hasattr(module.AgentLoopOutput.as_dict, "__verl_stable_compact_routes__")
    assert not hasattr(
        _original(module.AgentLoopOutput.as_dict), "__verl_stable_compact_routes__"
    )
    return module


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    "n_rows", [0, 4, 8, 11]
)  # none, fewer than the sequence (vLLM's -1), more
def test_v1_path_as_dict_keeps_compact_routes_and_verls_values(
    agent_loop, dtype, n_rows
):
    """The v1 trainer puts ``AgentLoopOutput.as_dict()`` into TransferQueue: same fields and values as verl's
    own as_dict, routes in their compact dtype instead of int16."""
    routes = _routes(n_rows, dtype, seed=n_rows)
    out = agent_loop.AgentLoopOutput(
        prompt_ids=[5, 6, 7],
        response_ids=[8, 9, 10, 11, 12, 13],
        response_mask=[1] * 6,
        response_logprobs=[-0.5] * 6,
        routed_experts=routes,
        metrics={},
    )
    ours = out.as_dict()
    verls = _original(agent_loop.AgentLoopOutput.as_dict)(out)
    assert ours["routed_experts"].dtype == torch.from_numpy(routes).dtype
    assert verls["routed_experts"].dtype == torch.int16
    assert torch.equal(
        ours["routed_experts"].to(torch.int32), verls["routed_experts"].to(torch.int32)
    )
    assert ours["routed_experts"].shape == (9, LAYERS, TOP_K)
    assert set(ours) == set(verls)
    for k in ours:
        if k != "routed_experts" and isinstance(ours[k], torch.Tensor):
            assert torch.equal(ours[k], verls[k]), k
    assert out.routed_experts is routes  # the output itself is untouched


def test_v1_path_other_dtypes_take_verls_own_path(agent_loop):
    out = agent_loop.AgentLoopOutput(
        prompt_ids=[1],
        response_ids=[2, 3],
        response_mask=[1, 1],
        routed_experts=_routes(2, np.int32),
        metrics={},
    )
    assert out.as_dict()["routed_experts"].dtype == torch.int16


def _legacy_worker(agent_loop, prompt_length: int, response_length: int):
    """verl's AgentLoopWorker with only what ``_agent_loop_postprocess`` reads for a text-only, rewardless
    sample (its __init__ builds servers, datasets and tools)."""
    from verl.workers.config import RolloutConfig

    from verl_stable.tasks.addition import build_tokenizer

    worker = object.__new__(agent_loop.AgentLoopWorker)
    worker.rollout_config = RolloutConfig(
        name="hf_cpu", prompt_length=prompt_length, response_length=response_length
    )
    worker.tokenizer = build_tokenizer()
    worker.processor = None
    worker.mm_processor_kwargs = {}
    worker.reward_loop_worker_handles = None
    worker.distillation_enabled = False
    return worker


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_legacy_path_postprocess_keeps_compact_routes_and_verls_layout(
    agent_loop, dtype
):
    """The legacy trainer's DataProto is built from ``_agent_loop_postprocess``: routes left-padded with the
    prompt into [1, prompt_length + response_length, layers, top_k], compact, at verl's positions."""
    worker = _legacy_worker(agent_loop, prompt_length=6, response_length=8)
    prompt, response = [5, 6, 7, 8], [9, 10, 11, 12, 13]
    routes = _routes(len(prompt) + len(response) - 1, dtype)
    kwargs = {"raw_prompt": [{"role": "user", "content": "1+2"}]}

    def run(fn):
        out = agent_loop.AgentLoopOutput(
            prompt_ids=prompt,
            response_ids=response,
            response_mask=[1] * 5,
            routed_experts=routes,
            metrics={},
        )
        return asyncio.run(fn(worker, out, False, **kwargs))

    ours = run(agent_loop.AgentLoopWorker._agent_loop_postprocess)
    verls = run(_original(agent_loop.AgentLoopWorker._agent_loop_postprocess))
    assert (
        ours.routed_experts.dtype == torch.from_numpy(routes).dtype
        and verls.routed_experts.dtype == torch.int16
    )
    assert (
        ours.routed_experts.shape
        == verls.routed_experts.shape
        == (1, 14, LAYERS, TOP_K)
    )
    assert torch.equal(
        ours.routed_experts.to(torch.int32), verls.routed_experts.to(torch.int32)
    )
    # the prompt's 4 tokens start after 2 left pads; the response's last token and right padding have no route
    assert (
        not ours.routed_experts[0, :2].any()
        and not ours.routed_experts[0, 2 + len(routes) :].any()
    )
    assert torch.equal(
        ours.routed_experts[0, 2 : 2 + len(routes)], torch.from_numpy(routes)
    )
    for name in (
        "input_ids",
        "attention_mask",
        "position_ids",
        "response_mask",
        "prompt_ids",
        "response_ids",
    ):
        assert torch.equal(getattr(ours, name), getattr(verls, name)), name
