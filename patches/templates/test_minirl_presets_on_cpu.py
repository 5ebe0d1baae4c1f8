"""Every ``+algorithm=<preset>`` file composes on verl's ppo_trainer, names a registered policy loss, and
builds verl's actor config dataclass."""

import os

import pytest


def _presets():
    import verl

    folder = os.path.join(os.path.dirname(verl.__file__), "trainer", "config", "algorithm")
    names = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            if name.endswith(".yaml") and f.readline().startswith("# @package _global_"):
                names.append(name[: -len(".yaml")])
    return names


def test_there_are_presets():
    assert "minirl" in _presets()


@pytest.mark.parametrize("preset", _presets())
def test_preset_composes_and_names_a_registered_loss(preset):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(
            config_name="ppo_trainer",
            overrides=[f"+algorithm={preset}", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"],
        )
    loss_mode = cfg.actor_rollout_ref.actor.policy_loss.loss_mode
    assert loss_mode == preset and loss_mode in POLICY_LOSS_REGISTRY
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == preset
