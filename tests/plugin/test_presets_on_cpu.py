"""Presets compose on verl's real config tree, user overrides win, and verl accepts the result."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.hydra_configs import compose
from verl_stable.losses import LOSS_MODES

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "verl_stable" / "config"
ALGORITHM_PRESETS = sorted(p.stem for p in (CONFIG_DIR / "algorithm").glob("*.yaml"))
# The smallest set of verl keys verl's own validate_config needs on one node.
RUNNABLE = [
    "trainer.n_gpus_per_node=1",
    "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
]


def test_minirl_preset_sets_the_paper_recipe():
    cfg = compose(overrides=["algorithm=minirl"])
    actor, algo = cfg.actor_rollout_ref.actor, cfg.algorithm
    assert actor.policy_loss.loss_mode == "minirl"
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.27)
    assert actor.loss_agg_mode == "seq-mean-token-sum"
    assert actor.use_kl_loss is False and actor.entropy_coeff == 0.0
    assert algo.adv_estimator == "grpo" and algo.norm_adv_by_std_in_grpo is False
    assert algo.use_kl_in_reward is False
    assert algo.rollout_correction.rollout_is == "token"
    assert algo.rollout_correction.rollout_is_threshold == 5.0
    assert algo.rollout_correction.bypass_mode is False
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    assert cfg.actor_rollout_ref.rollout.n == 16
    # The actor sees the same correction settings (for actor/is_truncated_frac).
    assert actor.policy_loss.rollout_correction.rollout_is_threshold == 5.0


def test_without_a_preset_it_is_plain_verl():
    """verl's ppo_trainer exactly, except the FSDP router-replay block spelled out with verl's own default
    (so that ...fsdp_config.router_replay.mode=R2 works without '+'), on verl-stable's subclass of verl's class
    that adds R3's max_unrouted_fraction."""
    from verl.workers.config import EngineRouterReplayConfig

    from verl_stable.integration.fsdp_engine import RouterReplayConfig

    ours = OmegaConf.to_container(compose(), resolve=False)
    ours.pop("hydra", None)
    replay = ours["actor_rollout_ref"]["actor"]["fsdp_config"].pop("router_replay")
    assert replay == {
        "_target_": "verl_stable.integration.fsdp_engine.RouterReplayConfig",
        "mode": "disabled",
        "max_unrouted_fraction": 0.0,
    }
    assert issubclass(RouterReplayConfig, EngineRouterReplayConfig)
    assert RouterReplayConfig().mode == EngineRouterReplayConfig().mode == "disabled"
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        verl_cfg = OmegaConf.to_container(hydra_compose(config_name="ppo_trainer"), resolve=False)
    assert ours == verl_cfg


@pytest.mark.parametrize("preset", ALGORITHM_PRESETS)
def test_every_preset_composes_converts_and_validates(preset):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import verl_stable.plugin  # noqa: F401
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    cfg = compose(overrides=[f"algorithm={preset}", *RUNNABLE])
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert actor.policy_loss.loss_mode in LOSS_MODES
    get_policy_loss_fn(actor.policy_loss.loss_mode)
    assert algo.adv_estimator == "grpo"


def test_registered_names_match_presets():
    """Every registered loss has a preset named after it, and every preset selects a registered loss."""
    assert set(LOSS_MODES) == set(ALGORITHM_PRESETS)
    for preset in ALGORITHM_PRESETS:
        assert compose(overrides=[f"algorithm={preset}"]).actor_rollout_ref.actor.policy_loss.loss_mode == preset


@pytest.mark.parametrize(
    "preset, key, expected",
    [
        ("minirl_no_is", "algorithm.rollout_correction.rollout_is", None),
        ("minirl_length_norm", "actor_rollout_ref.actor.loss_agg_mode", "seq-mean-token-mean"),
        ("seq_is", "algorithm.rollout_correction.rollout_is", "sequence"),
        ("minirl_no_clip", "actor_rollout_ref.actor.clip_ratio_high", 0.27),
    ],
)
def test_ablation_presets(preset, key, expected):
    assert OmegaConf.select(compose(overrides=[f"algorithm={preset}"]), key) == expected


def test_user_overrides_win():
    cfg = compose(
        overrides=[
            "algorithm=minirl",
            "actor_rollout_ref.actor.clip_ratio_high=0.3",
            "algorithm.rollout_correction.rollout_is_threshold=2.0",
            "actor_rollout_ref.rollout.n=8",
            "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        ]
    )
    assert cfg.actor_rollout_ref.actor.clip_ratio_high == 0.3
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == 2.0
    assert cfg.actor_rollout_ref.actor.policy_loss.rollout_correction.rollout_is_threshold == 2.0
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.loss_agg_mode == "token-mean"


def test_megatron_trainer_composes():
    cfg = compose("minirl_megatron_trainer", overrides=["algorithm=minirl"])
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "minirl"
    assert cfg.actor_rollout_ref.actor.clip_ratio_high == 0.27


def test_cli_cfg_job_prints_the_preset_without_running():
    out = subprocess.run(
        [sys.executable, "-m", "verl_stable.main", "algorithm=minirl", "--cfg", "job"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    cfg = OmegaConf.create(out)
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "minirl"
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == 5.0


def test_verl_main_ppo_accepts_our_config_path():
    out = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path=pkg://verl_stable.config",
         "--config-name=minirl_trainer", "algorithm=minirl", "--cfg", "job"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert OmegaConf.create(out).actor_rollout_ref.actor.policy_loss.loss_mode == "minirl"


def test_every_preset_selects_a_variant_with_its_first_aggregation_and_an_allowed_rollout_is():
    import pathlib

    from verl_stable.losses import LOSS_VARIANTS, check_clip_range

    presets = sorted((pathlib.Path(__file__).resolve().parents[2] / "verl_stable/config/algorithm").glob("*.yaml"))
    assert presets
    for preset in presets:
        cfg = compose(overrides=[f"algorithm={preset.stem}"])
        loss_mode = cfg.actor_rollout_ref.actor.policy_loss.loss_mode
        assert loss_mode in LOSS_VARIANTS, preset.name
        variant = LOSS_VARIANTS[loss_mode]
        assert cfg.actor_rollout_ref.actor.loss_agg_mode == variant.agg_modes[0], preset.name
        assert cfg.algorithm.rollout_correction.rollout_is in variant.rollout_is, preset.name
        check_clip_range(cfg.actor_rollout_ref.actor.clip_ratio_low, cfg.actor_rollout_ref.actor.clip_ratio_high)
