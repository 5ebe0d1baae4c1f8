"""verl's SGLang replica and server with SGLang >= 0.5.11's routed experts decoded (R3).

Imported only by the replica loader :func:`verl_stable.integration.rollout.register_route_returning_replicas` wraps, i.e.
where sglang is installed and verl asks for the ``sglang`` rollout. verl 0.9.1's ``SGLangHttpServer.generate``
decodes routes in two branches that both fail with SGLang 0.5.12 (see :mod:`verl_stable.integration.rollout`); this
server makes its tokenizer manager hand ``generate`` the decoded routes as a compact tensor and, once the
server is launched, takes verl's ``skip_tokenizer_init`` branch (``captured.numpy()``) for both settings --
SGLang's payload no longer depends on it. The setting itself reaches SGLang unchanged (server launch).
Upstream change that removes this module: the decode in ``SGLangHttpServer.generate`` (``patches/``).
"""

from __future__ import annotations

import ray
from verl.workers.rollout.sglang_rollout.async_sglang_server import SGLangHttpServer, SGLangReplica

from verl_stable.integration.rollout import RoutesDecodingTokenizerManager, decoded_routes_config, spec_for_server

__all__ = ["RoutesDecodingSGLangHttpServer", "Replica"]


class RoutesDecodingSGLangHttpServer(SGLangHttpServer):
    """``SGLangHttpServer`` whose ``generate`` returns R3 routes as compact numpy ``[n, num_hidden_layers,
    top_k]`` (uint8 / uint16 by the model's expert count)."""

    async def launch_server(self, *args, **kwargs):
        await super().launch_server(*args, **kwargs)
        manager = getattr(self, "tokenizer_manager", None)
        if not self.config.enable_rollout_routing_replay or manager is None:
            return
        self.tokenizer_manager = RoutesDecodingTokenizerManager(manager, spec_for_server(self.model_config.hf_config))
        self.config = decoded_routes_config(self.config)


class Replica(SGLangReplica):
    """verl's ``SGLangReplica`` launching :class:`RoutesDecodingSGLangHttpServer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(RoutesDecodingSGLangHttpServer)
