"""Shared fixtures: verl-stable's presets composed on verl's real config tree."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    """The test environment, set once before collection imports any test module (and through it verl).

    The suite runs on CPU, and verl resolves its platform on first use and keeps it, and loads verl-stable's plugin
    (which activates the CPU backend when asked) at ``import verl``: both read ``VERL_PLATFORM``, so it is chosen here,
    whatever the collection order. Checks of the plugin without it run in fresh interpreters
    (tests/plugin/processes.py removes the variable there). So no conftest may import verl at module level.
    """
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minirl_actor_config():
    """verl's ActorConfig dataclass built from the composed ``algorithm=minirl`` preset."""
    import verl_stable.plugin  # noqa: F401  (the entry point does this on `import verl`; explicit here)
    from verl.utils.config import omega_conf_to_dataclass

    from tests.hydra_configs import compose

    cfg = compose(overrides=["algorithm=minirl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A CPU run directory the pre-launch check accepts: the tiny MoE in ``model/`` (no SFT) and addition data in
    ``data/``, as ``verl_stable.apps.cpu_overrides --run-dir`` expects them."""
    from verl_stable.tasks.addition import build_dataset, build_model_dir

    root = tmp_path_factory.mktemp("run_dir")
    build_model_dir(root / "model", seed=0, format_sft_steps=0)
    build_dataset(root / "data", n_train=8, n_val=4, seed=0)
    return root
