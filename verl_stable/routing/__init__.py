"""Routing replay for MoE RL (docs/method.md §3): the Routes container and its layouts (routes.py), transformers router
adapters (hf.py), the record/replay context bound to one model (replay.py), verl's FSDP engine (fsdp.py).

``__all__`` is what users call; the adapters, the engine integration and the types the contexts yield live in
their modules (``verl_stable.routing.hf``, ``.fsdp``, ``.replay``). Route agreement is computed in
``verl_stable.routing.agreement`` (``route_agreement`` is re-exported here).

Importing this package imports no transformers modeling code and installs nothing.
"""

from verl_stable.routing.agreement import route_agreement
from verl_stable.routing.hf import spec_from_config
from verl_stable.routing.replay import RoutingReplay
from verl_stable.routing.routes import (
    RouteSpec,
    Routes,
    concat,
    generation_routes,
    pack,
    select_sequences,
    ulysses_pad_and_slice,
    unpack,
)

__all__ = [
    "RouteSpec",
    "Routes",
    "RoutingReplay",
    "concat",
    "generation_routes",
    "pack",
    "route_agreement",
    "select_sequences",
    "spec_from_config",
    "ulysses_pad_and_slice",
    "unpack",
]
