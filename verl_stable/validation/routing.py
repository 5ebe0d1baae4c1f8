"""Routing replay × actor strategy × route return × the model's family (read from its config). The keys, the
modes and which switch a strategy reads are routing's (:mod:`verl_stable.routing.config`); the tolerance's range
is R3's coverage guard's (:func:`verl_stable.routing.coverage.check_unrouted_fraction`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from verl_stable.routing.config import (
    FSDP_STRATEGIES,
    MAX_UNROUTED_KEY,
    MODE_KEY,
    REPLAY_ENGINE_KEYS,
    REPLAY_MODES,
    ROUTE_RETURN_KEY,
    replay_mode,
    replay_mode_key,
    requested_modes,
)
from verl_stable.routing.coverage import check_unrouted_fraction
from verl_stable.validation.issues import ACTOR, CORRECTION, ROLLOUT, ConfigIssue, fmt, get

#: Rollout engines that return routed experts when ``enable_rollout_routing_replay=True``.
ROUTE_RETURNING_ROLLOUTS = ("vllm", "sglang", "hf_cpu")
#: The FSDP engine's router_replay block class, as the trainer YAML names it.
ROUTER_REPLAY_TARGET_KEY = MODE_KEY.rsplit(".", 1)[0] + "._target_"


def router_replay_config_path() -> str:
    """The router_replay block class that carries ``max_unrouted_fraction`` (verl's own class has no such field)."""
    from verl_stable.integration.fsdp_engine import RouterReplayConfig

    return f"{RouterReplayConfig.__module__}.{RouterReplayConfig.__qualname__}"


def check_unrouted_tolerance(config) -> Iterator[ConfigIssue]:
    """R3's coverage guard tolerance: a fraction, on a router_replay block whose class has the field."""
    value = OmegaConf.select(config, MAX_UNROUTED_KEY, default=None)
    if value is None:
        return
    try:
        check_unrouted_fraction(value)
    except ValueError:
        yield ConfigIssue(
            MAX_UNROUTED_KEY, value, "R3's tolerance for real tokens without a rollout route (beyond one final "
            "token per sequence and the tool/environment tokens) is a fraction of the real tokens",
            "a number in [0, 1]; 0.0 stops on any unexpected unrouted token",
        )
    target = OmegaConf.select(config, ROUTER_REPLAY_TARGET_KEY, default=None)
    if target is not None and target != router_replay_config_path():
        yield ConfigIssue(
            ROUTER_REPLAY_TARGET_KEY, target, f"{MAX_UNROUTED_KEY} is a field of "
            f"verl-stable's router_replay class, not of {target}", router_replay_config_path(),
        )


#: Rollout-engine settings under which the engine returns wrong or missing routes: ``(key under the rollout, the
#: engine it concerns or None for any, is-the-setting-on, why)``. vLLM keeps routes per KV-cache slot and fills
#: a slot's route only when it runs the token there; SGLang captures on the ranks that run the MoE layers.
_ROUTE_BREAKING_FEATURES = (
    ("pipeline_model_parallel_size", None, lambda v: v is not None and int(v) > 1,
     "each pipeline stage sees only its own layers' routes (vLLM 0.24 refuses it inside the rollout actor)"),
    ("disaggregation.enabled", None, bool,
     "prefill runs on another server, whose routes never reach the decode server that returns the sample"),
    ("engine_kwargs.vllm.pipeline_parallel_size", "vllm", lambda v: v is not None and int(v) > 1,
     "each pipeline stage sees only its own layers' routes"),
    ("engine_kwargs.vllm.kv_transfer_config", "vllm", lambda v: v is not None,
     "a KV connector (PD disaggregation, LMCache, offload) brings in KV blocks whose tokens never ran here, so "
     "vLLM's slot-indexed route buffer has no routes for them"),
    ("engine_kwargs.vllm.kv_offloading_size", "vllm", lambda v: v is not None and float(v) > 0,
     "blocks reloaded from the CPU offload tier carry KV but no routes (vLLM's route buffer is per GPU slot)"),
    ("engine_kwargs.sglang.pp_size", "sglang", lambda v: v is not None and int(v) > 1,
     "each pipeline stage sees only its own layers' routes"),
    ("engine_kwargs.sglang.disaggregation_mode", "sglang", lambda v: v not in (None, "null"),
     "prefill runs on another server, whose routes never reach the decode server that returns the sample"),
)


def check_route_return_features(config) -> Iterator[ConfigIssue]:
    """Route return on (R3, verl's Megatron R3 included) with an engine feature that returns wrong or missing
    routes: refused before Ray starts, naming the key, instead of a replay of garbage or a late engine error."""
    if not bool(get(config, ROUTE_RETURN_KEY, False)):
        return
    engine = get(config, f"{ROLLOUT}.name")
    for key, only_for, is_on, why in _ROUTE_BREAKING_FEATURES:
        if only_for is not None and engine != only_for:
            continue
        value = get(config, f"{ROLLOUT}.{key}")
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        try:
            on = is_on(value)
        except (TypeError, ValueError):  # not a number: verl's own config classes refuse it by name
            continue
        if on:
            yield ConfigIssue(
                f"{ROLLOUT}.{key}", value, f"{ROUTE_RETURN_KEY}=true (routing_replay=R3) needs every token's routes "
                f"from the rollout engine, and with this setting {why}", "its default, or routing_replay=R2 (routes recorded by the trainer)",
            )


def check_routing_replay(config) -> Iterator[ConfigIssue]:
    yield from check_unrouted_tolerance(config)
    yield from check_route_return_features(config)
    strategy = get(config, f"{ACTOR}.strategy")
    own_key = replay_mode_key(strategy)
    modes = requested_modes(config, get)
    for key, value in modes.items():
        if value not in REPLAY_MODES:
            yield ConfigIssue(key, value, "unknown routing-replay mode", fmt(REPLAY_MODES))
            return
    for key, value in modes.items():
        if key != own_key and value != "disabled":
            if own_key is None:
                yield ConfigIssue(
                    f"{ACTOR}.strategy", strategy, f"{key}={value} asks for routing replay, but verl's {strategy} "
                    "engine has none (routing_replay=R2|R3 works on model_engine=dp (FSDP, verl-stable) and "
                    "model_engine=megatron / veomni (verl's own))", fmt(REPLAY_ENGINE_KEYS),
                )
            else:
                yield ConfigIssue(
                    key, value, f"actor_rollout_ref.actor.strategy={strategy} never reads this switch; its engine's "
                    f"is {own_key} (routing_replay=R2|R3 sets the right one for model_engine)", "disabled",
                )
    mode = replay_mode(config, get)
    if mode == "disabled" or own_key is None:
        return
    returns_routes = bool(get(config, ROUTE_RETURN_KEY, False))
    if mode == "R3" and not returns_routes:
        yield ConfigIssue(
            ROUTE_RETURN_KEY, False, f"{own_key}=R3 replays the rollout engine's routes, but the rollout returns "
            "none (the routing_replay=R3 preset sets it; or use routing_replay=R2)", "true",
        )
    rollout_name = get(config, f"{ROLLOUT}.name")  # None: still '???' in verl's default, verl asks for it
    if mode == "R3" and rollout_name is not None and rollout_name not in ROUTE_RETURNING_ROLLOUTS:
        yield ConfigIssue(
            f"{ROLLOUT}.name", rollout_name, "routing_replay=R3 needs a rollout that returns "
            "routed experts", fmt(ROUTE_RETURNING_ROLLOUTS),
        )
    if mode == "R2" and returns_routes:
        yield ConfigIssue(
            ROUTE_RETURN_KEY, True, f"{own_key}=R2 records the training engine's routes in the π_old pass; rollout "
            "routes would arrive under the same batch field (use routing_replay=R3 for rollout routes)", "false",
        )
    if mode == "R2" and get(config, f"{CORRECTION}.bypass_mode", False):
        yield ConfigIssue(
            f"{CORRECTION}.bypass_mode", True, f"{own_key}=R2 records routes in the π_old recomputation, which "
            "bypass mode skips", "false",
        )
    yield from _check_model_routes(config, mode, fsdp=strategy in FSDP_STRATEGIES)


def _check_model_routes(config, mode: str, fsdp: bool) -> Iterator[ConfigIssue]:
    """Read the model's config (local directories only: a hub id on a cluster is left to the engine, no hub traffic
    before Ray) and refuse models without routers; on FSDP also router types verl-stable has no adapter for."""
    from verl_stable.routing.hf import ADAPTERS, num_routed_experts

    path = get(config, "actor_rollout_ref.model.path")
    hf_config = _load_model_config(path, bool(get(config, "actor_rollout_ref.model.trust_remote_code", False)))
    if hf_config is None:
        return  # not readable locally (hub id on a cluster): the engine checks when it builds the model
    model_type = getattr(hf_config, "model_type", "?")
    if not num_routed_experts(hf_config):
        yield ConfigIssue(
            "routing_replay", mode, f"the model at actor_rollout_ref.model.path={path} (model_type {model_type}) is "
            "dense: it has no routed experts to replay; drop routing_replay (or set "
            f"{replay_mode_key(get(config, f'{ACTOR}.strategy'))}=disabled)",
        )
        return
    if not fsdp:
        return  # Megatron / VeOmni build the model themselves and patch their own routers
    module = _modeling_module(model_type)
    if module is None:
        return
    known = {name for adapter in ADAPTERS for name in adapter.class_names}
    if not known & set(vars(module)):
        families = sorted({adapter.family for adapter in ADAPTERS})
        yield ConfigIssue(
            "routing_replay", mode, f"model_type {model_type} has a router type verl-stable cannot replay on FSDP "
            f"(supported router families: {', '.join(families)}); drop routing_replay for this model",
        )


def _load_model_config(path, trust_remote_code: bool):
    if not path or not Path(str(path)).expanduser().is_dir():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:  # unreadable here: the engine reports it with transformers' own message
        return None


def _modeling_module(model_type: str):
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except Exception:
        return None
