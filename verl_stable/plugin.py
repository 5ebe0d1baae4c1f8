"""verl adapter: loaded by verl itself through the ``verl.plugins`` entry point.

verl imports every entry point of that group at ``import verl`` time, in the driver and in every Ray
worker, and swallows failures at debug level. Keep this module light and side-effect free beyond
registration; ``verl-stable doctor`` makes a failed load loud.
"""

from __future__ import annotations

from verl_stable.losses import register_all as _register_losses

_register_losses()

# The CPU backend only activates when asked for (VERL_PLATFORM=cpu); it is a no-op otherwise.
from verl_stable.cpu import activate_if_requested as _activate_cpu  # noqa: E402

_activate_cpu()

# Routing replay R2/R3 for verl's FSDP engine (a pass-through unless
# actor_rollout_ref.actor.fsdp_config.router_replay.mode is R2/R3): registered in verl's EngineRegistry right
# after verl's FSDP engine module is imported, in the processes that build an engine. Not here: importing the
# engine package at `import verl` slows every process (not measured here) and fixes verl's platform before
# platform plugins loaded after this one register theirs (verl_stable.integration.fsdp_engine, shims 1-2).
from verl_stable.integration._post_import import after_import as _after_import  # noqa: E402


def _register_fsdp_routing_replay(_module) -> None:
    from verl_stable.integration.fsdp_engine import register_replay_engines

    register_replay_engines()


_after_import("verl.workers.engine.fsdp.transformer_impl", _register_fsdp_routing_replay)


# R3 with SGLang / vLLM: verl's replica loaders for those names wrapped so their servers hand the agent loop
# decoded, compact routes (verl_stable.integration.rollout). Registered when verl imports its replica registry; the engine
# packages themselves are imported only when verl asks for the replica, and only installed ones are wrapped.
def _register_route_returning_replicas(_module) -> None:
    from verl_stable.integration.rollout import register_route_returning_replicas

    register_route_returning_replicas()


_after_import("verl.workers.rollout.replica", _register_route_returning_replicas)


# Routed experts stay in their compact dtype (uint8 / uint16) through verl's agent loop on both trainer paths
# (verl_stable.integration.agent_loop: two version-checked wrappers, installed when the agent loop module is imported).
def _compact_routes_on_the_wire(module) -> None:
    from verl_stable.integration.agent_loop import install

    install(module)


_after_import("verl.experimental.agent_loop.agent_loop", _compact_routes_on_the_wire)
