"""One routing-replay switch on both backends: routing_replay=R2|R3 sets verl's own key of the engine that
model_engine selects (FSDP: verl-stable's engine mixin; Megatron: verl's router replay), and the validation pass
refuses the same mistakes on both, naming the key. Composed on verl 0.9.1's real config tree; megatron-core is
not needed (nothing here builds a model)."""

from __future__ import annotations

import pytest
from verl.utils.config import omega_conf_to_dataclass

from verl_stable.tasks import addition

from verl_stable.validation import (
    ROUTE_RETURN_KEY,
    ConfigError,
    check_routing_replay,
    compose_trainer_config,
    replay_mode,
    replay_mode_key,
    validate_trainer_config,
)

ACTOR = "actor_rollout_ref.actor"
HUB_MODEL = "Qwen/Qwen3-30B-A3B"  # a hub id: validation must not try to read it
ENGINE_KEY = {"dp": f"{ACTOR}.fsdp_config.router_replay.mode", "megatron": f"{ACTOR}.megatron.router_replay.mode"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_switch")
    addition.build_dataset(root, n_train=8, n_val=4, seed=0)
    return root


def _base(data, engine):
    return [
        f"model_engine={engine}", "algorithm=minirl", f"actor_rollout_ref.model.path={HUB_MODEL}",
        f"data.train_files={data / 'train.parquet'}", "data.val_files=null", "data.train_batch_size=8",
        "actor_rollout_ref.rollout.name=vllm", f"{ACTOR}.ppo_mini_batch_size=8",
        f"{ACTOR}.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=8",
        # the addition data's scorer (the pre-launch check refuses data sources without one)
        f"reward.custom_reward_function.path={addition.__file__}",
    ]


def _compose(data, engine, *overrides, config_name="minirl_trainer"):
    return compose_trainer_config([*_base(data, engine), *overrides], config_name)


@pytest.mark.parametrize("engine", ["dp", "megatron"])
@pytest.mark.parametrize("mode,route_return", [("R2", False), ("R3", True)])
def test_switch_sets_the_engines_own_key_and_validates(data, engine, mode, route_return):
    cfg = _compose(data, engine, f"routing_replay={mode}")
    assert replay_mode_key(cfg.actor_rollout_ref.actor.strategy) == ENGINE_KEY[engine]
    assert replay_mode(cfg) == mode
    assert cfg.actor_rollout_ref.rollout.enable_rollout_routing_replay is route_return
    # verl's own dataclass path: the actor's engine config carries EngineRouterReplayConfig with the mode
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.engine.router_replay.mode == mode
    # the other engine's key does not exist (a Megatron actor with an fsdp_config would not convert)
    other = "fsdp_config" if engine == "megatron" else "megatron"
    assert other not in cfg.actor_rollout_ref.actor
    validate_trainer_config(cfg)  # ours + verl's validate_config, with a hub id as model path


def test_megatron_trainer_config_is_model_engine_megatron(data):
    """verl 0.9.1's convention: ppo_megatron_trainer = ppo_trainer + model_engine=megatron; ours follows it."""
    alias = _compose(data, "megatron", "routing_replay=R3", config_name="minirl_megatron_trainer")
    direct = _compose(data, "megatron", "routing_replay=R3")
    assert alias == direct
    assert alias.actor_rollout_ref.actor.megatron.router_replay.mode == "R3"


def _issues(cfg):
    return list(check_routing_replay(cfg))


@pytest.mark.parametrize("engine", ["dp", "megatron"])
def test_same_mistakes_refused_on_both_backends_naming_the_key(data, engine):
    cases = [
        (["routing_replay=R2", f"{ROUTE_RETURN_KEY}=true"], ROUTE_RETURN_KEY, "R2"),
        (["routing_replay=R3", f"{ROUTE_RETURN_KEY}=false"], ROUTE_RETURN_KEY, "R3"),
        (["routing_replay=R2", "algorithm.rollout_correction.bypass_mode=true"],
         "algorithm.rollout_correction.bypass_mode", "bypass"),
        (["routing_replay=R3", "actor_rollout_ref.rollout.name=hf"], "actor_rollout_ref.rollout.name", "routed experts"),
        ([f"{ENGINE_KEY[engine]}=R4"], ENGINE_KEY[engine], "unknown"),
    ]
    for overrides, key, needle in cases:
        cfg = _compose(data, engine, *overrides)
        with pytest.raises(ConfigError) as info:
            validate_trainer_config(cfg)
        assert key in info.value.keys, (overrides, str(info.value))
        line = next(str(i) for i in info.value.issues if i.key == key)
        assert line.startswith(f"{key}=") and needle in line and "\n" not in line, line


def test_a_strategy_without_replay_is_refused_naming_the_strategy(data):
    cfg = compose_trainer_config([
        "model_engine=torchtitan", "algorithm=minirl", "routing_replay=R2", f"actor_rollout_ref.model.path={HUB_MODEL}",
    ])
    (issue,) = _issues(cfg)
    assert issue.key == f"{ACTOR}.strategy" and issue.value == "torchtitan"
    assert "megatron" in issue.allowed and "fsdp" in issue.allowed


def test_a_switch_the_strategy_never_reads_is_refused(data):
    """Setting the FSDP key on a Megatron actor would silently do nothing: refused, naming the key."""
    cfg = _compose(data, "megatron", f"+{ACTOR}.fsdp_config.router_replay.mode=R2")
    issues = _issues(cfg)
    assert [i.key for i in issues] == [ENGINE_KEY["dp"]]
    assert ENGINE_KEY["megatron"] in issues[0].problem


def test_megatron_replay_skips_the_hf_adapter_check_but_not_the_dense_check(data, tmp_path):
    from transformers import Qwen2Config, Qwen3MoeConfig

    dense, moe = tmp_path / "dense", tmp_path / "moe"
    Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(dense)
    Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2
                   ).save_pretrained(moe)
    (issue,) = _issues(_compose(data, "megatron", "routing_replay=R2", f"actor_rollout_ref.model.path={dense}"))
    assert issue.key == "routing_replay" and "dense" in issue.problem and ENGINE_KEY["megatron"] in issue.problem
    assert _issues(_compose(data, "megatron", "routing_replay=R2", f"actor_rollout_ref.model.path={moe}")) == []
