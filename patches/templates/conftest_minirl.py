"""Fixtures for the MiniRL policy-loss tests: verl's ppo_trainer with the ``minirl`` preset composed on top."""

import os

import pytest
import torch


@pytest.fixture(scope="session")
def minirl_actor_config():
    """verl's ActorConfig built from ``ppo_trainer`` + ``+algorithm=minirl``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(
            config_name="ppo_trainer",
            overrides=["+algorithm=minirl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"],
        )
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@pytest.fixture(autouse=True)
def _seed_minirl_tests(request):
    if "minirl" in request.module.__name__:
        torch.manual_seed(0)
