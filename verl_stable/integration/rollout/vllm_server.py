"""verl's vLLM replica and server with R3 routes in the compact dtype.

Imported only by the replica loader :func:`verl_stable.integration.rollout.register_route_returning_replicas` wraps, i.e.
where vllm is installed and verl asks for the ``vllm`` rollout. vLLM's ``CompletionOutput.routed_experts`` is
numpy int32 ``[n, num_hidden_layers, top_k]``; verl 0.9.1 passes it on as is. This server hands the agent loop
the same array in ``compact_dtype(num_experts)`` (uint8 up to 256 experts: a quarter of the bytes through
Ray). Upstream change that removes this module: the compaction in ``vLLMHttpServer.generate``.
"""

from __future__ import annotations

import ray
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from verl_stable.integration.rollout import compact_token_output, spec_for_server

__all__ = ["CompactRoutesvLLMHttpServer", "Replica"]


class CompactRoutesvLLMHttpServer(vLLMHttpServer):
    """``vLLMHttpServer`` whose ``generate`` returns R3 routes as compact numpy (shape unchanged)."""

    async def generate(self, *args, **kwargs):
        output = await super().generate(*args, **kwargs)
        if output.routed_experts is None:
            return output
        if getattr(self, "_route_spec", None) is None:
            self._route_spec = spec_for_server(self.model_config.hf_config)
        return compact_token_output(output, self._route_spec)


class Replica(vLLMReplica):
    """verl's ``vLLMReplica`` launching :class:`CompactRoutesvLLMHttpServer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(CompactRoutesvLLMHttpServer)
