"""How the plugin activates the CPU backend (:mod:`verl_stable.cpu`) in verl 0.9.1: five rows of
:data:`verl_stable.integration.SHIMS`, installed in every process when ``VERL_PLATFORM=cpu``.

verl loads ``verl_stable.plugin`` through the ``verl.plugins`` entry point at ``import verl`` in every process --
driver, TaskRunner, trainer workers, rollout servers -- so each process registers the same things. Ray workers
inherit the variable from the driver's environment; :data:`verl_stable.cpu.CPU_RAY_ENV` is what to add to
``ray_kwargs.ray_init.runtime_env.env_vars`` for clusters started elsewhere.

What activation does. Everything goes through verl's public registration API, except two gaps verl 0.9.1
has no hook for; each is one small shim, applied only after the verl version check, and removed by the upstream
patch series' ``[misc] fix`` (``patches/verl-0.9.1/0003-misc-cpu-process-group-and-rollout-registration.patch``).
The platform itself, the engine registration for ``cpu`` and the ``hf_cpu`` rollout stay here: verl points new
hardware to external platform plugins, so the series carries no CPU platform.

* ``PlatformRegistry.register``: ``cpu`` -> :class:`verl_stable.cpu.platform.PlatformCPU`;
* SHIM 2, ``verl.utils.distributed.initialize_global_process_group_ray``: its unused ``backend`` default
  becomes ``"gloo"`` (verl builds ``cpu:gloo,cpu:gloo``, which torch rejects); upstream fix: ``cpu:gloo``
  alone when the device is ``cpu``;
* ``EngineRegistry.register``: verl's FSDP/FSDP2 ``language_model`` and ``value_model`` engines for device
  ``cpu``;
* ``RolloutReplicaRegistry.register``: ``hf_cpu`` -> :class:`verl_stable.cpu.rollout.HFCPUReplica`;
* SHIM 1, ``verl.workers.rollout.base._ROLLOUT_REGISTRY``: ``(hf_cpu, async)`` -> ``HFCPUServerAdapter``.
  verl 0.9.1 has no register function for server adapters; upstream fix: ``register_rollout_class()``,
  which this module calls instead whenever verl has it.

Lookups use verl's public getters (``PlatformRegistry.get``, ``EngineRegistry.get_engine_cls``,
``RolloutReplicaRegistry.get``); a name another package already registered is refused, never replaced.
A verl version mismatch raises (the rows' declared policy): verl swallows plugin import errors at debug level,
so the error is also printed, and the platform lookup then fails loudly with verl's "Unknown platform 'cpu'".
"""

from __future__ import annotations

from verl_stable.cpu import PLATFORM_NAME, ROLLOUT_NAME, requested

_ADAPTER = "verl_stable.cpu.rollout.HFCPUServerAdapter"
_GLOO_DEFAULTS = (None, "gloo")


def activate_if_requested() -> bool:
    """Register the CPU backend in this process when ``VERL_PLATFORM=cpu``; return whether it did.

    Idempotent. A verl version mismatch raises (and is printed: see the module docstring)."""
    if not requested():
        return False
    from verl_stable.integration import CPU_SHIMS, install

    for shim in CPU_SHIMS:  # the rows of verl_stable.integration.SHIMS this module installs
        install(shim)
    return True


def _gate(row: str) -> None:
    from verl_stable.integration import version_gate

    version_gate(row)  # these rows raise on a mismatch


# ------------------------------------------------------------------------------------------------ platform
def register_platform() -> None:
    _gate("cpu-platform")
    from verl.plugin.platform import PlatformRegistry

    from verl_stable.cpu.platform import PlatformCPU

    existing = PlatformRegistry.get(PLATFORM_NAME)
    if existing is PlatformCPU:
        return
    if existing is not None:
        raise RuntimeError(
            f"verl platform {PLATFORM_NAME!r} is already registered by {existing!r}; refusing to replace it "
            "(a verl with the CPU platform built in does not need verl-stable's: set VERL_USE_EXTERNAL_PLUGINS "
            "to leave verl_stable out)"
        )
    PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


def platform_registered() -> bool:
    from verl.plugin.platform import PlatformRegistry

    from verl_stable.cpu.platform import PlatformCPU

    return PlatformRegistry.get(PLATFORM_NAME) is PlatformCPU


# ------------------------------------------------------------------------------------------------ SHIM 2
def register_gloo_backend() -> None:
    """SHIM 2 (verl 0.9.1, version-gated).

    ``verl.utils.distributed.initialize_global_process_group_ray`` builds ``f"cpu:gloo,{device}:{backend}"``,
    which is ``cpu:gloo,cpu:gloo`` on CPU, and torch rejects the duplicate device. The function takes a
    ``backend`` argument that no caller passes, so defaulting it to ``gloo`` is the smallest change that
    works. Upstream fix (patch 0003, ``[misc]``): use ``cpu:gloo`` alone when the device is ``cpu``.
    """
    _gate("cpu-gloo-backend")
    from verl.utils import distributed

    fn = distributed.initialize_global_process_group_ray
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    if names != ("timeout_second", "backend") or fn.__defaults__ not in ((None, None), _GLOO_DEFAULTS):
        raise RuntimeError(
            f"verl's initialize_global_process_group_ray changed ({names}, defaults {fn.__defaults__}); "
            "verl-stable's CPU shim for it needs updating"
        )
    fn.__defaults__ = _GLOO_DEFAULTS


def gloo_backend_registered() -> bool:
    from verl.utils import distributed

    return distributed.initialize_global_process_group_ray.__defaults__ == _GLOO_DEFAULTS


# ------------------------------------------------------------------------------------------------ engine
def _fsdp_engines():
    import warnings

    # verl's engine package warns once per process for each optional engine that is not installed
    # (torchtitan, veomni, automodel, mindspeed, megatron): never present on a CPU machine, and repeated by
    # every Ray process, so exactly those messages are ignored while it is imported here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\w+ engine is not available", category=UserWarning)
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    return EngineRegistry, (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead))


def register_engine() -> None:
    """verl registers its FSDP engine for cuda/npu only; the same classes run on CPU with FSDP2 + gloo.

    Looked up with verl's public ``get_engine_cls``, which resolves the device through the platform: ``cpu``
    once :func:`register_platform` ran (``VERL_PLATFORM=cpu``).
    """
    _gate("cpu-engine")
    EngineRegistry, engines = _fsdp_engines()
    for model_type, cls in engines:
        for backend in ("fsdp", "fsdp2"):
            try:
                existing = EngineRegistry.get_engine_cls(model_type, backend)
            except ValueError:  # "No engine registered for device='cpu' ..."
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(cls)
                continue
            if not issubclass(existing, cls):
                raise RuntimeError(
                    f"verl engine ({model_type}, {backend}, {PLATFORM_NAME}) is already registered as {existing!r}; "
                    "refusing to replace it"
                )


def engine_registered() -> bool:
    import sys

    if "verl.workers.engine.fsdp.transformer_impl" not in sys.modules:
        return False
    EngineRegistry, engines = _fsdp_engines()
    return all(
        EngineRegistry._engines.get(model_type, {}).get(backend, {}).get(PLATFORM_NAME) is cls
        for model_type, cls in engines
        for backend in ("fsdp", "fsdp2")
    )


# ------------------------------------------------------------------------------------------------ rollout
def _load_replica():
    from verl_stable.cpu.rollout import HFCPUReplica

    return HFCPUReplica


def register_rollout_replica() -> None:
    _gate("cpu-rollout-replica")
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    try:
        existing = RolloutReplicaRegistry.get(ROLLOUT_NAME)
    except ValueError:  # "Unknown rollout mode: hf_cpu"
        RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    else:
        if existing is not _load_replica():
            raise RuntimeError(
                f"rollout {ROLLOUT_NAME!r} is already registered in verl as {existing!r}; refusing to replace it"
            )


def rollout_replica_registered() -> bool:
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return RolloutReplicaRegistry._registry.get(ROLLOUT_NAME) is _load_replica


def register_rollout_adapter() -> None:
    """SHIM 1 where verl has no ``register_rollout_class`` (verl 0.9.1, version-gated): the module dict
    ``_ROLLOUT_REGISTRY`` is the registry. Upstream fix (patch 0003, ``[misc]``): ``register_rollout_class()``."""
    _gate("cpu-rollout-adapter")
    from verl.workers.rollout import base as rollout_base

    register = getattr(rollout_base, "register_rollout_class", None)
    if register is not None:  # the upstream registration function (patch 0003)
        register(ROLLOUT_NAME, _ADAPTER)
        return
    registered = rollout_base._ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async"))
    if registered not in (None, _ADAPTER):
        raise RuntimeError(
            f"rollout {ROLLOUT_NAME!r} is already registered in verl as {registered}; refusing to replace it"
        )
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = _ADAPTER


def rollout_adapter_registered() -> bool:
    from verl.workers.rollout import base as rollout_base

    return rollout_base._ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async")) == _ADAPTER
