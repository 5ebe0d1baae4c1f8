"""Shared fixtures: verl-stable's presets composed on verl's real config tree."""

from __future__ import annotations

import os

# The suite runs on CPU, and verl fixes its device when its modules are first imported: choose verl-stable's CPU
# platform before any test module imports verl, whatever the collection order. Checks of the plugin without it
# run in fresh interpreters (tests/helpers/processes.py removes the variable there).
os.environ.setdefault("VERL_PLATFORM", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.hydra_configs import compose  # noqa: E402


@pytest.fixture(scope="session")
def minirl_actor_config():
    """verl's ActorConfig dataclass built from the composed ``algorithm=minirl`` preset."""
    import verl_stable.plugin  # noqa: F401  (the entry point does this on `import verl`; explicit here)
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(overrides=["algorithm=minirl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
