"""CPU backend for verl: a platform, the FSDP2 engine on CPU, and the ``hf_cpu`` rollout.

Switched on by one setting, ``VERL_PLATFORM=cpu`` (verl's own platform selector). verl loads
``verl_stable.plugin`` through the ``verl.plugins`` entry point at ``import verl`` in every process —
driver, TaskRunner, trainer workers, rollout servers — and the plugin calls :func:`activate_if_requested`,
so each process registers the same things. Ray workers inherit the variable from the driver's environment;
:data:`CPU_RAY_ENV` is what to add to ``ray_kwargs.ray_init.runtime_env.env_vars`` for clusters started
elsewhere.

What activation does. Everything goes through verl's public registration API, except two gaps verl 0.9.1
has no hook for; each is one small shim, applied only after the verl version check, and removed by a change in
the upstream patch series (``patches/verl-0.9.1/0003-hardware-cpu-platform.patch``):

* ``PlatformRegistry.register``: ``cpu`` → :class:`verl_stable.cpu.platform.PlatformCPU`;
* ``EngineRegistry.register``: verl's FSDP/FSDP2 ``language_model`` and ``value_model`` engines for device
  ``cpu``;
* ``RolloutReplicaRegistry.register``: ``hf_cpu`` → :class:`verl_stable.cpu.rollout.HFCPUReplica`;
* SHIM 1, ``verl.workers.rollout.base._ROLLOUT_REGISTRY``: ``(hf_cpu, async)`` → ``HFCPUServerAdapter``.
  verl 0.9.1 has no register function for server adapters; upstream fix: ``register_rollout_class()``,
  which this module calls instead whenever verl has it;
* SHIM 2, ``verl.utils.distributed.initialize_global_process_group_ray``: its unused ``backend`` default
  becomes ``"gloo"`` (verl builds ``cpu:gloo,cpu:gloo``, which torch rejects); upstream fix: ``cpu:gloo``
  alone when the device is ``cpu``.

Lookups use verl's public getters (``PlatformRegistry.get``, ``EngineRegistry.get_engine_cls``,
``RolloutReplicaRegistry.get``); a name another package already registered is refused, never replaced.
"""

from __future__ import annotations

import os

PLATFORM_ENV = "VERL_PLATFORM"
PLATFORM_NAME = "cpu"
ROLLOUT_NAME = "hf_cpu"
CPU_RAY_ENV = {PLATFORM_ENV: PLATFORM_NAME}


class UnsupportedVerlVersion(RuntimeError):
    pass


def requested() -> bool:
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == PLATFORM_NAME


def check_verl_version(installed: str | None = None) -> None:
    from importlib.metadata import version

    from verl_stable import VERL_VERSION

    installed = installed or version("verl")
    if installed != VERL_VERSION:
        raise UnsupportedVerlVersion(
            f"{PLATFORM_ENV}={PLATFORM_NAME}: verl-stable's CPU backend is built for verl=={VERL_VERSION}, "
            f"found verl=={installed}. Install verl=={VERL_VERSION} or unset {PLATFORM_ENV}."
        )


_ACTIVATED = False


def activate_if_requested() -> bool:
    """Register the CPU backend in this process when ``VERL_PLATFORM=cpu``; return whether it did.

    Idempotent. A verl version mismatch raises: verl swallows plugin import errors at debug level, so the
    error is also printed, and the platform lookup then fails loudly with verl's "Unknown platform 'cpu'".
    """
    global _ACTIVATED
    if not requested():
        return False
    if _ACTIVATED:
        return True
    try:
        check_verl_version()
        _register_platform()
        _gloo_only_backend()
        _register_engine()
        _register_rollout()
    except Exception as exc:
        import sys

        print(f"[verl-stable] CPU backend failed to activate: {exc!r}", file=sys.stderr, flush=True)
        raise
    _ACTIVATED = True
    return True


def _register_platform() -> None:
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


def _gloo_only_backend() -> None:
    """SHIM 2 (verl 0.9.1, checked by :func:`check_verl_version` before this runs).

    ``verl.utils.distributed.initialize_global_process_group_ray`` builds ``f"cpu:gloo,{device}:{backend}"``,
    which is ``cpu:gloo,cpu:gloo`` on CPU, and torch rejects the duplicate device. The function takes a
    ``backend`` argument that no caller passes, so defaulting it to ``gloo`` is the smallest change that
    works. Upstream fix (patch 0003): use ``cpu:gloo`` alone when the device is ``cpu``.
    """
    from verl.utils import distributed

    fn = distributed.initialize_global_process_group_ray
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    if names != ("timeout_second", "backend") or fn.__defaults__ not in ((None, None), (None, "gloo")):
        raise RuntimeError(
            f"verl's initialize_global_process_group_ray changed ({names}, defaults {fn.__defaults__}); "
            "verl-stable's CPU shim for it needs updating"
        )
    fn.__defaults__ = (None, "gloo")


def _register_engine() -> None:
    """verl registers its FSDP engine for cuda/npu only; the same classes run on CPU with FSDP2 + gloo.

    Looked up with verl's public ``get_engine_cls``, which resolves the device through the platform: ``cpu``
    once :func:`_register_platform` ran (``VERL_PLATFORM=cpu``).
    """
    import warnings

    # verl's engine package warns once per process for each optional engine that is not installed
    # (torchtitan, veomni, automodel, mindspeed, megatron): never present on a CPU machine, and repeated by
    # every Ray process, so exactly those messages are ignored while it is imported here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\w+ engine is not available", category=UserWarning)
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
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


def _load_replica():
    from verl_stable.cpu.rollout import HFCPUReplica

    return HFCPUReplica


def _register_rollout() -> None:
    from verl.workers.rollout import base as rollout_base
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
    adapter = "verl_stable.cpu.rollout.HFCPUServerAdapter"
    register = getattr(rollout_base, "register_rollout_class", None)
    if register is not None:  # the upstream registration function (patch 0003)
        register(ROLLOUT_NAME, adapter)
        return
    # SHIM 1 (verl 0.9.1, version-checked): no register function; this module dict is the registry.
    registered = rollout_base._ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async"))
    if registered not in (None, adapter):
        raise RuntimeError(
            f"rollout {ROLLOUT_NAME!r} is already registered in verl as {registered}; refusing to replace it"
        )
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = adapter
