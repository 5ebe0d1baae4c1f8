"""How the plugin puts verl-stable's FSDP routing replay (:mod:`verl_stable.routing.fsdp`) into verl 0.9.1.

Integration with verl 0.9.1, and the shims left (each with the upstream change that removes it). Upstream,
all of this module disappears: the mixin of :mod:`verl_stable.routing.fsdp` lives in ``FSDPEngineWithLMHead``.

1. Registration (:func:`register_replay_engines`): no patch. For this process's engine key -- the
   ``(device, vendor)`` pair ``EngineRegistry.get_engine_cls`` tries first -- it registers, through verl's
   own ``EngineRegistry.register``, the replay subclass of the FSDP LM engine that the registry would hand
   out (``language_model``, ``fsdp`` and ``fsdp2``). verl's device-only entries stay untouched; the value
   model is not touched. Version gate: verl == 0.9.1, else a warning and nothing is registered (row
   ``fsdp-routing-replay`` of :data:`verl_stable.integration.SHIMS`).
   Upstream: the mixin's code lives in ``FSDPEngineWithLMHead`` (patch ``[fsdp] feat: MoE router replay``)
   and this registration disappears.
2. Import hook (``verl_stable/integration/_post_import.py``, the row's ``after_import``): runs (1) right after
   verl executes ``verl.workers.engine.fsdp.transformer_impl``. Kept because registering needs the engine
   class, and importing verl's engine package from the plugin (at every ``import verl``) adds to every
   process's start-up on top of ``import verl`` itself (not measured here by a benchmark or test) and, worse,
   resolves and caches verl's platform then (``transformer_impl`` calls
   ``get_device_name()`` at module level): a platform plugin loaded after ours would never be used.
   Upstream: (1) disappears; alternatively a lazy engine entry (``EngineRegistry.register`` accepting a
   ``"module:Class"`` string as ``RolloutReplicaRegistry`` does) would make the hook unnecessary.
3. Overridden engine methods (the mixin, each calls verl's own): ``forward_backward_batch``,
   ``prepare_model_inputs``, ``forward_step``, ``disable_adapter``; reused helpers
   ``build_attention_mask_from_nested``, ``ulysses_pad``, ``get_ulysses_sequence_parallel_rank``,
   ``FSDPEngine._get_packed_pad_size`` / ``_gather_and_unpad_packed``. Version-checked with (1).
   Upstream: the same code inside ``FSDPEngineWithLMHead``.
4. Config: :class:`RouterReplayConfig`, verl's ``EngineRouterReplayConfig`` plus R3's
   ``max_unrouted_fraction`` (:mod:`verl_stable.routing.coverage`), is the ``_target_`` of the
   ``fsdp_config.router_replay`` block in verl-stable's trainer configs, so the key survives verl's
   config -> dataclass conversion (a subclass: verl's own checks of the block still apply). Upstream: the field
   on ``EngineRouterReplayConfig``.
5. Not patched: ``ActorRolloutRefWorker.__init__`` hard-codes ``enable_routing_replay = False`` for FSDP, so
   verl's per-call flag (True for compute_log_prob / update_actor, False for compute_ref_log_prob) is never
   set for FSDP; the engine treats an absent flag as "replay on" (the ref engine is protected by its own
   config). Upstream: read ``actor.fsdp_config.router_replay.mode`` there too.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

from verl.workers.config import EngineRouterReplayConfig

from verl_stable.routing.config import FSDP_STRATEGIES
from verl_stable.routing.coverage import check_unrouted_fraction
from verl_stable.routing.fsdp import RoutingReplayEngineMixin

_MODEL_TYPE = "language_model"


@dataclass
class RouterReplayConfig(EngineRouterReplayConfig):
    """verl's router-replay block plus R3's coverage tolerance.

    Args:
        max_unrouted_fraction: under R3, the fraction of real tokens that may lack a rollout route beyond the
            expected ones (one final sampled token per sequence, tool/environment tokens) before the FSDP
            engine stops with an error; 0.0 (default): none may.
    """

    max_unrouted_fraction: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_unrouted_fraction(self.max_unrouted_fraction)


_REPLAY_CLASSES: dict[type, type] = {}


def replay_engine_class(engine_cls: type) -> type:
    """``engine_cls`` with :class:`RoutingReplayEngineMixin` in front (cached, idempotent)."""
    if issubclass(engine_cls, RoutingReplayEngineMixin):
        return engine_cls
    cls = _REPLAY_CLASSES.get(engine_cls)
    if cls is None:
        cls = type(
            f"RoutingReplay{engine_cls.__name__}",
            (RoutingReplayEngineMixin, engine_cls),
            {"__module__": __name__, "__doc__": f"{engine_cls.__name__} with verl-stable's R2/R3 routing replay."},
        )
        _REPLAY_CLASSES[engine_cls] = cls
    return cls


def _engine_key() -> tuple[str, str]:
    """The ``(device, vendor)`` key ``EngineRegistry.get_engine_cls`` looks up first in this process."""
    from verl.utils.device import get_device_name, get_vendor

    return os.getenv("VERL_ENGINE_DEVICE") or get_device_name(), os.getenv("VERL_ENGINE_VENDOR") or get_vendor()


def replays_natively(engine_cls: type) -> bool:
    """Whether verl's own engine already has the router-replay mixin (a verl with ``patches/`` applied, where
    it lives in ``verl.workers.engine.fsdp.router_replay``)."""
    return any(
        c.__name__ == RoutingReplayEngineMixin.__name__ and c.__module__.startswith("verl.") for c in engine_cls.__mro__
    )


def register_replay_engines() -> dict[str, type]:
    """Register the replay-capable FSDP LM engine in verl's ``EngineRegistry`` for this process; return
    ``{backend: class}`` for ``fsdp`` / ``fsdp2`` (idempotent).

    Through verl's own ``EngineRegistry.register``, under the ``(device, vendor)`` key that
    ``get_engine_cls`` tries before the device-only key verl (or the CPU backend) registered its engine
    under: the class registered there is wrapped, not replaced, and every other entry is left alone.
    A vendor key somebody else registered is left alone too (a warning: that engine runs without replay).
    On a verl other than the pinned release: a warning, nothing registered.
    """
    from verl_stable.integration import version_gate

    if not version_gate("fsdp-routing-replay"):
        return {}
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    device, vendor = _engine_key()
    out: dict[str, type] = {}
    for backend in FSDP_STRATEGIES:
        try:
            registered = EngineRegistry.get_engine_cls(_MODEL_TYPE, backend)
        except (AssertionError, ValueError):  # no FSDP LM engine for this device: nothing to replay on
            continue
        if issubclass(registered, RoutingReplayEngineMixin) or replays_natively(registered):
            out[backend] = registered  # ours already, or a verl carrying the patch series: never wrap twice
            continue
        if not issubclass(registered, FSDPEngineWithLMHead) or not vendor:
            warnings.warn(f"routing replay: {registered.__name__} ({backend}, {device}/{vendor}) is not verl's FSDP "
                          "LM engine; it runs without routing replay", stacklevel=2)
            continue
        cls = replay_engine_class(registered)
        try:
            EngineRegistry.register(model_type=_MODEL_TYPE, backend=backend, device=device, vendor=vendor)(cls)
        except AssertionError:  # verl refuses to register a key twice: a vendor plugin's own engine is there
            warnings.warn(f"routing replay: verl's registry already has {registered.__name__} for ({backend}, "
                          f"{device}, {vendor}); it runs without routing replay", stacklevel=2)
            continue
        out[backend] = cls
    return out


def _registered_fsdp_engines() -> dict[str, type]:
    """``{backend: class}`` verl's registry hands out for this process's FSDP LM engine (none before verl
    imported its FSDP engine module: looking would import it)."""
    import sys

    if "verl.workers.engine.fsdp.transformer_impl" not in sys.modules:
        return {}
    from verl.workers.engine.base import EngineRegistry

    out = {}
    for backend in FSDP_STRATEGIES:
        try:
            out[backend] = EngineRegistry.get_engine_cls(_MODEL_TYPE, backend)
        except (AssertionError, ValueError):
            continue
    return out


def no_engine_to_replay_on() -> Optional[str]:
    """Why the replay registration has nothing to do in this process (None when it has, or cannot tell yet)."""
    import sys

    if "verl.workers.engine.fsdp.transformer_impl" in sys.modules and not _registered_fsdp_engines():
        return "no FSDP LM engine registered for this device"
    return None


def replay_engines_registered() -> bool:
    """Whether every FSDP LM engine verl hands out in this process replays routes."""
    engines = _registered_fsdp_engines()
    return bool(engines) and all(
        issubclass(cls, RoutingReplayEngineMixin) or replays_natively(cls) for cls in engines.values()
    )
