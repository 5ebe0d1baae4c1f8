"""``+routing_replay=R2|R3`` set the FSDP engine's ``router_replay.mode`` (and, for R3, route return from the
rollout); the default is ``disabled`` for the actor, the reference model and the critic."""

import os

import pytest


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            config_name="ppo_trainer", overrides=[*overrides, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"]
        )


def test_router_replay_is_disabled_by_default_everywhere():
    cfg = _compose([])
    assert cfg.actor_rollout_ref.actor.fsdp_config.router_replay.mode == "disabled"
    assert cfg.actor_rollout_ref.ref.fsdp_config.router_replay.mode == "disabled"
    assert cfg.critic.fsdp.router_replay.mode == "disabled"


@pytest.mark.parametrize("mode", ["R2", "R3"])
def test_preset_sets_the_fsdp_engine_switch(mode):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose([f"+routing_replay={mode}"])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.fsdp_config.router_replay.mode == mode
    assert cfg.actor_rollout_ref.rollout.enable_rollout_routing_replay == (mode == "R3")
    assert cfg.actor_rollout_ref.ref.fsdp_config.router_replay.mode == "disabled"
