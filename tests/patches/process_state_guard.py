"""A pytest plugin (``-p process_state_guard``): no test module may leave process state changed for the tests
after it, as verl's CPU job runs every ``*_on_cpu.py`` test in one process.

The state: the environment, the working directory, ``sys.path``, torch's global switches (default dtype, threads,
grad mode, deterministic algorithms, an initialised process group), the root log level, and verl's registries
(policy losses, rollout adapters and replicas, engines, platforms and the platform in use). A registry that first
appears during a module (imported there) is not a change; an entry added, removed or replaced is.

Checked per test module, from the setup of its first test to the teardown of its last (when its module-scoped
fixtures have been finalised; a session- or package-scoped fixture that changes state is reported). Only test
files under the prefixes in ``STATE_GUARD_PATHS`` (``os.pathsep``-separated, relative to the rootdir; all when
unset) are checked. A change fails the module's last test at teardown, naming what changed.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest


def _registries() -> dict[str, object]:
    found: dict[str, object] = {}
    core_algos = sys.modules.get("verl.trainer.ppo.core_algos")
    if core_algos is not None:
        found["POLICY_LOSS_REGISTRY"] = {k: f"{v.__module__}.{v.__qualname__}" for k, v in core_algos.POLICY_LOSS_REGISTRY.items()}
    rollout_base = sys.modules.get("verl.workers.rollout.base")
    if rollout_base is not None:
        found["_ROLLOUT_REGISTRY"] = dict(rollout_base._ROLLOUT_REGISTRY)
    replica = sys.modules.get("verl.workers.rollout.replica")
    if replica is not None:
        found["RolloutReplicaRegistry"] = sorted(replica.RolloutReplicaRegistry._registry)
    engine_base = sys.modules.get("verl.workers.engine.base")
    if engine_base is not None:
        found["EngineRegistry"] = repr(engine_base.EngineRegistry._engines)
    platforms = sys.modules.get("verl.plugin.platform.platform_manager")
    if platforms is not None:
        found["PlatformRegistry"] = sorted(platforms.PlatformRegistry._platforms)
        current = platforms._current_platform
        found["current platform"] = None if current is None else type(current).__name__
    return found


def snapshot() -> dict[str, object]:
    state: dict[str, object] = {
        "os.environ": dict(os.environ),
        "cwd": os.getcwd(),
        "sys.path": list(sys.path),
        "root log level": logging.getLogger().level,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        state.update({
            "torch default dtype": torch.get_default_dtype(),
            "torch threads": torch.get_num_threads(),
            "torch grad enabled": torch.is_grad_enabled(),
            "torch deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch.distributed initialised": torch.distributed.is_available() and torch.distributed.is_initialized(),
        })  # fmt: skip
    state.update(_registries())
    return state


def changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What differs; a key absent before (a module first imported) is not a change."""
    out = []
    for key, old in before.items():
        new = after.get(key)
        if new == old:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            diff = sorted({k for k in old.keys() | new.keys() if old.get(k) != new.get(k)})
            out.append(f"{key}: {', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff)[:600]}")
        else:
            out.append(f"{key}: {str(old)[:300]} -> {str(new)[:300]}")
    return out


def _guarded(item) -> bool:
    prefixes = [p for p in os.environ.get("STATE_GUARD_PATHS", "").split(os.pathsep) if p]
    rel = Path(str(item.path)).relative_to(item.config.rootpath).as_posix()
    return not prefixes or any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


_open: dict[Path, dict[str, object]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    module = Path(str(item.path))
    if _guarded(item) and module not in _open:
        _open[module] = snapshot()
    yield


@pytest.hookimpl(trylast=True)  # after pytest's own teardown has finalised the module's fixtures
def pytest_runtest_teardown(item, nextitem):
    module = Path(str(item.path))
    if module not in _open or (nextitem is not None and Path(str(nextitem.path)) == module):
        return
    before = _open.pop(module)
    found = changes(before, snapshot())
    if found:
        pytest.fail(f"the tests in {module} changed process state for the tests after them:\n  " + "\n  ".join(found),
                    pytrace=False)  # fmt: skip
