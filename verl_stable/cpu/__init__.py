"""CPU backend for verl: a platform, the FSDP2 engine on CPU, and the ``hf_cpu`` rollout.

Switched on by one setting, ``VERL_PLATFORM=cpu`` (verl's own platform selector). The backend itself
(:mod:`.platform`, :mod:`.hf_engine`, :mod:`.rollout`) is plain verl code, copied as is by the upstream patch
series; how the plugin registers it in verl 0.9.1, and the two shims that takes, live in
:mod:`verl_stable.integration.cpu`. This module holds the names both sides share, and imports nothing.
"""

from __future__ import annotations

import os

PLATFORM_ENV = "VERL_PLATFORM"
PLATFORM_NAME = "cpu"
ROLLOUT_NAME = "hf_cpu"
#: what to add to ``ray_kwargs.ray_init.runtime_env.env_vars`` so that every Ray worker activates the backend
CPU_RAY_ENV = {PLATFORM_ENV: PLATFORM_NAME}


def requested() -> bool:
    """Whether this process asks for the CPU backend (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == PLATFORM_NAME
