"""The trainer-config keys and values of routing replay, and which switch a composed config turns on.

verl 0.9.1 reads one routing-replay switch per training engine (``<engine>.router_replay.mode``); the rollout
returns routes when ``enable_rollout_routing_replay`` is set. Every module that names these keys (the FSDP
engine, R3's coverage guard, the launch-time config validation, the recipes' memory plan) imports them from here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = [
    "FSDP_STRATEGIES",
    "MAX_UNROUTED_KEY",
    "MODE_KEY",
    "REPLAY_ENGINE_KEYS",
    "REPLAY_MODES",
    "ROUTE_RETURN_KEY",
    "replay_mode",
    "replay_mode_key",
    "requested_modes",
]

_ACTOR = "actor_rollout_ref.actor"
# verl's own keys and values (checked again before start-up by the launcher's config validation).
MODE_KEY = f"{_ACTOR}.fsdp_config.router_replay.mode"
ROUTE_RETURN_KEY = "actor_rollout_ref.rollout.enable_rollout_routing_replay"
#: R3's coverage tolerance (verl-stable's field on the FSDP engine's router_replay block).
MAX_UNROUTED_KEY = f"{_ACTOR}.fsdp_config.router_replay.max_unrouted_fraction"
FSDP_STRATEGIES = ("fsdp", "fsdp2")
REPLAY_MODES = ("disabled", "R2", "R3")

#: verl's routing-replay switch per actor strategy: the engine config each strategy reads (verl 0.9.1's
#: ``ActorRolloutRefWorker`` reads megatron / veomni; verl-stable's FSDP engine mixin reads fsdp_config).
REPLAY_ENGINE_KEYS = {
    "fsdp": "fsdp_config",
    "fsdp2": "fsdp_config",
    "megatron": "megatron",
    "veomni": "veomni",
}
#: Engine configs that carry verl's EngineRouterReplayConfig (the field lives on the shared EngineConfig base).
_ENGINE_CONFIG_KEYS = ("fsdp_config", "megatron", "veomni", "torchtitan", "automodel")

#: ``read(config, key)``: the value at a dotted key, None where unset.
Reader = Callable[[Any, str], Any]


def _select(config, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key, default=None)


def replay_mode_key(strategy) -> Optional[str]:
    """The full key of verl's routing-replay switch for an actor strategy; None for a strategy without replay."""
    engine = REPLAY_ENGINE_KEYS.get(str(strategy))
    return None if engine is None else f"{_ACTOR}.{engine}.router_replay.mode"


def requested_modes(config, read: Reader = _select) -> dict[str, str]:
    """Every ``actor_rollout_ref.actor.<engine>.router_replay.mode`` in the config, by full key."""
    modes = {}
    for engine in _ENGINE_CONFIG_KEYS:
        mode = read(config, f"{_ACTOR}.{engine}.router_replay.mode")
        if mode is not None:
            modes[f"{_ACTOR}.{engine}.router_replay.mode"] = str(mode)
    return modes


def replay_mode(config, read: Reader = _select) -> str:
    """The routing-replay mode the composed config asks for: the switch of the actor strategy's own engine, or
    (for a strategy without replay) the first switch that is on anywhere."""
    key = replay_mode_key(read(config, f"{_ACTOR}.strategy"))
    modes = requested_modes(config, read)
    if key is not None:
        return modes.get(key, "disabled")
    return next((mode for mode in modes.values() if mode != "disabled"), "disabled")
