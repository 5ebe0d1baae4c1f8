"""A CPU platform for verl's platform registry (``verl.plugin.platform``).

verl talks to its accelerator through ``get_platform()`` and the ``device_module`` it returns
(shaped like torch's CUDA module). On CPU there is nothing to synchronise, cache or seed beyond torch's own RNG, so
the stand-in module below answers those calls with no-ops or CPU equivalents.

Ray scheduling: verl asks Ray for the platform's resource (``GPU`` for CUDA) for every worker. We keep
``GPU`` as the resource name and start Ray with a *logical* GPU count (``ray_init.num_gpus``): Ray then
schedules one trainer process per logical slot exactly as on a GPU node, while torch never touches CUDA.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase


class _NoOpStream:
    """Stand-in for torch's CUDA ``Stream``: CPU work is synchronous, so every stream is the same one."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        return event or _NoOpEvent()


class _NoOpEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


def _make_device_module() -> types.ModuleType:
    """A module shaped like torch's CUDA module, for CPU. Memory figures are 0: there is no device pool to report."""
    mod = types.ModuleType("verl_stable_cpu_device")
    stream = _NoOpStream()

    def _zero(*args, **kwargs) -> int:
        return 0

    def _noop(*args, **kwargs) -> None:
        return None

    def mem_get_info(*args, **kwargs) -> tuple[int, int]:
        # verl sizes caches and logs from (free, total); report host memory so ratios stay meaningful.
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except ImportError:  # psutil ships with ray[default]; keep a safe fallback anyway
            return 0, 0

    @contextlib.contextmanager
    def _stream_ctx(*args, **kwargs):
        yield stream

    mod.is_available = lambda: True
    mod.is_initialized = lambda: True
    mod.device_count = lambda: 1
    mod.current_device = lambda: 0
    mod.set_device = _noop
    mod.synchronize = _noop
    mod.empty_cache = _noop
    mod.ipc_collect = _noop
    mod.reset_peak_memory_stats = _noop
    mod.set_per_process_memory_fraction = _noop
    mod.memory_allocated = _zero
    mod.memory_reserved = _zero
    mod.max_memory_allocated = _zero
    mod.max_memory_reserved = _zero
    mod.mem_get_info = mem_get_info
    mod.get_device_name = lambda *a, **k: "cpu"
    mod.get_rng_state = lambda *a, **k: torch.get_rng_state()
    mod.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mod.manual_seed = lambda seed: torch.manual_seed(seed)
    mod.manual_seed_all = lambda seed: torch.manual_seed(seed)
    mod.current_stream = lambda *a, **k: stream
    mod.default_stream = lambda *a, **k: stream
    mod.stream = _stream_ctx
    mod.Stream = _NoOpStream
    mod.Event = _NoOpEvent
    return mod


class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts: device ``cpu``, collectives over ``gloo``."""

    _device_module = _make_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: CPU is chosen explicitly with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> torch.device:
        # Callers use this in ``tensor.to(get_device_id())`` and ``init_device_mesh``; a device object
        # is what makes both land on CPU (an int would mean "cuda:<int>").
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets this for actors holding a logical GPU; CPU torch ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
