"""CPU backend for verl: a platform, the FSDP2 engine on CPU, and the ``hf_cpu`` rollout.

Switched on by one setting, ``VERL_PLATFORM=cpu`` (verl's own platform selector). verl loads
``verl_stable.plugin`` through the ``verl.plugins`` entry point at ``import verl`` in every process —
driver, TaskRunner, trainer workers, rollout servers — and the plugin calls :func:`activate_if_requested`,
so each process registers the same things. Ray workers inherit the variable from the driver's environment;
:data:`CPU_RAY_ENV` is what to add to ``ray_kwargs.ray_init.runtime_env.env_vars`` for clusters started
elsewhere.

What activation does, all through verl's registries except one line (see :func:`_gloo_only_backend`):

====================================  ============================================================
verl registry / function              CPU entry
====================================  ============================================================
``PlatformRegistry`` (verl.plugin)     ``cpu`` → :class:`verl_stable.cpu.platform.PlatformCPU`
``EngineRegistry`` (workers.engine)    FSDP/FSDP2 ``language_model`` engine for device ``cpu``
``RolloutReplicaRegistry``             ``hf_cpu`` → :class:`verl_stable.cpu.rollout.HFCPUReplica`
``_ROLLOUT_REGISTRY`` (rollout.base)   ``(hf_cpu, async)`` → :class:`~verl_stable.cpu.rollout.HFCPUServerAdapter`
``initialize_global_process_group_ray`` default backend ``gloo`` (verl builds ``cpu:gloo,cpu:gloo``)
====================================  ============================================================
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


def activate_if_requested() -> bool:
    """Register the CPU backend in this process when ``VERL_PLATFORM=cpu``; return whether it did.

    Idempotent. A verl version mismatch raises: verl swallows plugin import errors at debug level, so the
    error is also printed, and the platform lookup then fails loudly with verl's "Unknown platform 'cpu'".
    """
    if not requested():
        return False
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
    return True


def _register_platform() -> None:
    from verl.plugin.platform import PlatformRegistry

    from verl_stable.cpu.platform import PlatformCPU

    existing = PlatformRegistry.get(PLATFORM_NAME)
    if existing is PlatformCPU:
        return
    if existing is not None:
        raise RuntimeError(
            f"verl platform {PLATFORM_NAME!r} is already registered by {existing!r}; refusing to replace it"
        )
    PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


def _gloo_only_backend() -> None:
    """verl.utils.distributed.initialize_global_process_group_ray builds ``f"cpu:gloo,{device}:{backend}"``,
    which is ``cpu:gloo,cpu:gloo`` on CPU and torch rejects the duplicate device. The function takes a
    ``backend`` argument that no caller passes, so defaulting it to ``gloo`` is the smallest change that
    works (upstream fix: skip the device entry when the device is ``cpu``)."""
    from verl.utils import distributed

    fn = distributed.initialize_global_process_group_ray
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    if names != ("timeout_second", "backend"):
        raise RuntimeError(f"verl's initialize_global_process_group_ray changed signature: {names}")
    fn.__defaults__ = (None, "gloo")


def _register_engine() -> None:
    """verl registers its FSDP engine for cuda/npu only; the same class runs on CPU with FSDP2 + gloo."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            registered = EngineRegistry._engines.get(model_type, {}).get(backend, {})
            if PLATFORM_NAME not in registered:
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(cls)


def _load_replica():
    from verl_stable.cpu.rollout import HFCPUReplica

    return HFCPUReplica


def _register_rollout() -> None:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    adapter = "verl_stable.cpu.rollout.HFCPUServerAdapter"
    registered_loader = RolloutReplicaRegistry._registry.get(ROLLOUT_NAME)
    registered_adapter = rollout_base._ROLLOUT_REGISTRY.get((ROLLOUT_NAME, "async"))
    if registered_loader not in (None, _load_replica) or registered_adapter not in (None, adapter):
        raise RuntimeError(
            f"rollout {ROLLOUT_NAME!r} is already registered in verl by someone else; refusing to replace it"
        )
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    # verl has no registration function for server adapters; this dict is its registry.
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = adapter
