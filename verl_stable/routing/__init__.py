"""Routing replay for MoE RL (docs/method.md §3): the Routes value type (routes.py), every producer's route format in and
out of it (codecs.py), its token-axis layouts (layouts.py), transformers router adapters (hf.py), the
record/replay context bound to one model (replay.py), verl's FSDP engine and its model-input layouts (fsdp.py).

``__all__`` is what users call; the codecs, the adapters, the engine integration and the types the contexts
yield live in their modules (``verl_stable.routing.codecs``, ``.hf``, ``.fsdp``, ``.replay``). Route agreement
is computed in ``verl_stable.routing.agreement`` (``route_agreement`` is re-exported here).

Importing this package imports no verl, no transformers modeling code and installs nothing.
"""

from verl_stable.routing.agreement import route_agreement
from verl_stable.routing.hf import spec_from_config
from verl_stable.routing.layouts import generation_routes, pack, select_sequences, unpack
from verl_stable.routing.replay import RoutingReplay
from verl_stable.routing.routes import RouteSpec, Routes, concat

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
    "unpack",
]
