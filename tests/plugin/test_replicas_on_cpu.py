"""verl-stable's R3 adapters for verl's SGLang / vLLM servers (plugin only: upstream the decode lives in verl's
servers): the decoded output verl's ``generate`` reads, the tokenizer-manager wrapper, the replica registration
and vLLM's TokenOutput compaction. SGLang payloads are built as SGLang 0.5.12 builds them (see
tests/utils/routing_replay/helpers/sglang_payloads.py for each step's source)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.utils.routing_replay.helpers.sglang_payloads import SPEC, sglang_meta_info, sglang_routes_tensor


def test_decoded_output_is_what_verls_skip_tokenizer_init_branch_reads():
    """verl 0.9.1's SGLangHttpServer.generate (skip_tokenizer_init branch) does
    ``output.get("meta_info", {}).get("routed_experts", None).numpy()``: with the decoded output that is the
    compact numpy array the agent loop takes."""
    from verl_stable.integration.rollout import decode_sglang_output

    host_rows, _ = sglang_routes_tensor(5, SPEC, seed=2)
    output = {"output_ids": [1, 2, 3], "meta_info": sglang_meta_info(host_rows, False)}
    decoded = decode_sglang_output(output, SPEC)
    captured = decoded.get("meta_info", {}).get("routed_experts", None)
    routes = captured.numpy() if captured is not None else None
    assert routes.dtype == np.uint8 and routes.shape == (4, 5, 3)
    np.testing.assert_array_equal(routes.astype(np.int32), host_rows.numpy())
    assert isinstance(output["meta_info"]["routed_experts"], str)  # the engine's own dict is left alone
    assert decoded["output_ids"] == [1, 2, 3] and decoded["meta_info"]["finish_reason"] == {"type": "length"}
    assert decode_sglang_output(decoded, SPEC) is decoded  # already decoded: untouched
    plain = {"output_ids": [1], "meta_info": {}}
    assert decode_sglang_output(plain, SPEC) is plain


class _TokenizerManager:
    """Stands in for SGLang's TokenizerManager (not installed here): ``generate_request`` is an async generator
    of output dicts (SGLang's signature ``generate_request(obj, request=None)``), plus state verl touches."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.server_status = "Starting"
        self.requests = []

    async def generate_request(self, obj, request=None):
        self.requests.append(obj)
        for out in self.outputs:
            yield out

    async def pause_generation(self, obj):
        return ("paused", obj)


def test_tokenizer_manager_wrapper_decodes_the_stream_and_forwards_the_rest():
    from verl_stable.integration.rollout import RoutesDecodingTokenizerManager

    host_rows, _ = sglang_routes_tensor(6, SPEC, seed=4)
    manager = _TokenizerManager([{"output_ids": [7], "meta_info": sglang_meta_info(host_rows, True)}])
    wrapped = RoutesDecodingTokenizerManager(manager, SPEC)

    async def first():  # verl: `await self.tokenizer_manager.generate_request(req, None).__anext__()`
        return await wrapped.generate_request("req", None).__anext__()

    out = asyncio.run(first())
    assert manager.requests == ["req"]
    np.testing.assert_array_equal(out["meta_info"]["routed_experts"].numpy().astype(np.int32), host_rows.numpy())
    assert asyncio.run(wrapped.pause_generation("abort")) == ("paused", "abort")
    wrapped.server_status = "Up"  # verl sets attributes on the manager it holds
    assert manager.server_status == "Up" and wrapped.server_status == "Up"


@pytest.fixture
def replica_registry():
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    saved = dict(RolloutReplicaRegistry._registry)
    yield RolloutReplicaRegistry
    RolloutReplicaRegistry._registry.clear()
    RolloutReplicaRegistry._registry.update(saved)


def test_registration_wraps_only_installed_engines_and_runs_verls_loader_first(replica_registry):
    from verl_stable.integration.rollout import register_route_returning_replicas

    verls = {name: replica_registry._registry[name] for name in ("sglang", "vllm")}
    # Neither engine is installed here: verl's loaders stay as they are.
    assert register_route_returning_replicas() == {"sglang": False, "vllm": False}
    assert {name: replica_registry._registry[name] for name in verls} == verls
    # Where they are, the loaders are wrapped once (registering again changes nothing).
    assert register_route_returning_replicas(installed=lambda name: True) == {"sglang": True, "vllm": True}
    wrapped = dict(replica_registry._registry)
    register_route_returning_replicas(installed=lambda name: True)
    assert replica_registry._registry == wrapped
    for name, loader in verls.items():
        assert wrapped[name] is not loader and wrapped[name].wrapped_loader is loader
    assert replica_registry._registry["trtllm"] is not None and not hasattr(replica_registry._registry["trtllm"],
                                                                            "wrapped_loader")
    # The wrapper runs verl's own loader first: without vllm, verl's import of its vLLM server fails as before
    # (verl 0.9.1's third_party check raises ValueError "vllm version None not supported ...").
    with pytest.raises((ImportError, ValueError), match="vllm"):
        replica_registry.get("vllm")


def test_vllm_token_output_compacted():
    """verl's real TokenOutput with vLLM's int32 routes, as the vLLM server subclass returns it."""
    from verl.workers.rollout.replica import TokenOutput

    from verl_stable.integration.rollout import compact_token_output

    host_rows, _ = sglang_routes_tensor(4, SPEC, seed=6)
    out = TokenOutput(token_ids=[1, 2], routed_experts=host_rows.numpy(), stop_reason="completed")
    out = compact_token_output(out, SPEC)
    assert out.routed_experts.dtype == np.uint8 and out.routed_experts.shape == (3, 5, 3)
    assert compact_token_output(TokenOutput(token_ids=[1]), SPEC).routed_experts is None


def test_generate_reads_verls_numpy_branch_with_the_rest_of_the_config_kept():
    """After launch the SGLang server's generate must take verl's ``captured.numpy()`` branch for both settings
    (the other imports a module SGLang 0.5.12 moved); verl's frozen RolloutConfig is rebuilt, not mutated."""
    from verl.workers.config import RolloutConfig

    from verl_stable.integration.rollout import decoded_routes_config

    config = RolloutConfig(name="sglang", skip_tokenizer_init=False, enable_rollout_routing_replay=True,
                           max_model_len=96, response_length=32)
    view = decoded_routes_config(config)
    assert view.skip_tokenizer_init is True and config.skip_tokenizer_init is False
    assert (view.name, view.enable_rollout_routing_replay, view.max_model_len, view.response_length) == (
        "sglang", True, 96, 32)
    assert decoded_routes_config(view) is view
