"""Routing replay for MoE RL (SPEC §3): the Routes container and its layouts (routes.py), transformers router
adapters (hf.py), and the record/replay context bound to one model (replay.py).

Importing this package imports no transformers modeling code and installs nothing.
"""

from verl_stable.routing.hf import ADAPTERS, RouterAdapter, RouterSite, find_routers, moe_layers_from_config, route_spec, spec_from_config
from verl_stable.routing.replay import Recording, ReplayState, RoutingReplay
from verl_stable.routing.routes import (
    RouteSpec,
    Routes,
    compact_dtype,
    concat,
    generation_routes,
    pack,
    route_agreement,
    select_sequences,
    ulysses_pad_and_slice,
    unpack,
)

__all__ = [
    "ADAPTERS",
    "Recording",
    "ReplayState",
    "RouteSpec",
    "RouterAdapter",
    "RouterSite",
    "Routes",
    "RoutingReplay",
    "compact_dtype",
    "concat",
    "find_routers",
    "generation_routes",
    "moe_layers_from_config",
    "pack",
    "route_agreement",
    "route_spec",
    "select_sequences",
    "spec_from_config",
    "ulysses_pad_and_slice",
    "unpack",
]
