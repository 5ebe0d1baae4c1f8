"""The validation pass before Ray starts (verl_stable.validation): every refused mistake names its key.

Most cases compose the real config tree in-process (seconds); the entry-point cases run the real launchers
in a subprocess and check that they exit with status 2, one line per problem, before Ray starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from verl_stable.apps.cpu_overrides import cpu_overrides
from verl_stable.validation import ConfigError, EXIT_CONFIG_ERROR, compose_trainer_config, validate_trainer_config

PRESETS = ("minirl", "minirl_no_is", "minirl_length_norm", "minirl_no_clip", "seq_is")
ACTOR = "actor_rollout_ref.actor"
CORR = "algorithm.rollout_correction"


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory):
    from transformers import Qwen2Config

    path = tmp_path_factory.mktemp("dense")
    Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(path)
    return path


def _validate(run_dir, *overrides, preset="minirl"):
    base = [f"algorithm={preset}"] if preset else []
    config = compose_trainer_config([*base, *cpu_overrides(run_dir, steps=1), *overrides])
    validate_trainer_config(config)
    return config


def _refused(run_dir, *overrides, preset="minirl") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _validate(run_dir, *overrides, preset=preset)
    return info.value


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("replay", [None, "R2", "R3"])
def test_every_preset_and_replay_switch_validates_with_the_cpu_settings(run_dir, preset, replay):
    extra = [f"routing_replay={replay}"] if replay else []
    config = _validate(run_dir, *extra, preset=preset)
    assert config.actor_rollout_ref.actor.policy_loss.loss_mode == preset
    if replay:
        assert config.actor_rollout_ref.actor.fsdp_config.router_replay.mode == replay


def test_cpu_settings_never_override_the_preset(run_dir):
    """The documented ablations keep their own rollout correction under the CPU overrides."""
    no_is = _validate(run_dir, preset="minirl_no_is")
    assert no_is.algorithm.rollout_correction.rollout_is is None
    seq = _validate(run_dir, preset="seq_is")
    assert seq.algorithm.rollout_correction.rollout_is == "sequence"
    owned = {o.split("=", 1)[0].lstrip("+") for o in cpu_overrides(run_dir)}
    for key in ("algorithm.adv_estimator", f"{CORR}.rollout_is", f"{CORR}.rollout_is_threshold",
                f"{ACTOR}.policy_loss.loss_mode", f"{ACTOR}.loss_agg_mode", f"{ACTOR}.use_kl_loss",
                f"{ACTOR}.entropy_coeff", f"{ACTOR}.clip_ratio_low", "actor_rollout_ref.rollout.calculate_log_probs"):
        assert key not in owned, key


# (overrides, preset, key the one-line message must name)
MISTAKES = [
    ([f"{ACTOR}.clip_ratio_low=-1"], "minirl", f"{ACTOR}.clip_ratio_low"),
    ([f"{ACTOR}.clip_ratio_high=1.0"], "minirl", f"{ACTOR}.clip_ratio_high"),
    ([f"{CORR}.rollout_is=sequence"], "minirl", f"{CORR}.rollout_is"),
    ([f"{CORR}.rollout_is=null"], "minirl", f"{CORR}.rollout_is"),
    ([f"{CORR}.rollout_is=token"], "minirl_no_is", f"{CORR}.rollout_is"),
    ([f"{CORR}.rollout_is=token"], "seq_is", f"{CORR}.rollout_is"),
    ([f"{CORR}.rollout_is=tokens"], "minirl", f"{CORR}.rollout_is"),
    ([f"{CORR}.rollout_is_threshold=0"], "minirl", f"{CORR}.rollout_is_threshold"),
    ([f"{CORR}.rollout_is_threshold=abc"], "minirl", f"{CORR}.rollout_is_threshold"),
    ([f"{CORR}.bypass_mode=true"], "minirl", f"{CORR}.bypass_mode"),
    ([f"{ACTOR}.loss_agg_mode=token-mean"], "minirl_length_norm", f"{ACTOR}.loss_agg_mode"),
    ([f"{ACTOR}.loss_agg_mode=seq-mean-token-mean"], "minirl", f"{ACTOR}.loss_agg_mode"),
    ([f"{ACTOR}.loss_agg_mode=token-mean"], "seq_is", f"{ACTOR}.loss_agg_mode"),
    (["actor_rollout_ref.rollout.calculate_log_probs=false"], "minirl", "actor_rollout_ref.rollout.calculate_log_probs"),
    (["trainer.total_training_steps=0"], "minirl", "trainer.total_training_steps"),
    (["trainer.total_epochs=0"], "minirl", "trainer.total_epochs"),
    ([f"{ACTOR}.ppo_epochs=0"], "minirl", f"{ACTOR}.ppo_epochs"),
    (["actor_rollout_ref.rollout.quantization=int5"], "minirl", "actor_rollout_ref.rollout.quantization"),
    (["actor_rollout_ref.rollout.dtype=int8"], "minirl", "actor_rollout_ref.rollout.dtype"),
    (["data.train_files=/nonexistent/train.parquet"], "minirl", "data.train_files"),
    (["data.train_files=null"], "minirl", "data.train_files"),
    (["data.val_files=/nonexistent/val.parquet"], "minirl", "data.val_files"),
    ([f"{ACTOR}.ppo_mini_batch_size=3"], "minirl", f"{ACTOR}.ppo_mini_batch_size"),
    ([f"{ACTOR}.ppo_micro_batch_size_per_gpu=5"], "minirl", f"{ACTOR}.ppo_micro_batch_size_per_gpu"),
    (["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=7"], "minirl",
     "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
    ([f"{ACTOR}.fsdp_config.router_replay.mode=R4"], "minirl", f"{ACTOR}.fsdp_config.router_replay.mode"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.enable_rollout_routing_replay=false"], "minirl",
     "actor_rollout_ref.rollout.enable_rollout_routing_replay"),
    (["routing_replay=R2", "actor_rollout_ref.rollout.enable_rollout_routing_replay=true"], "minirl",
     "actor_rollout_ref.rollout.enable_rollout_routing_replay"),
    (["routing_replay=R2", f"{CORR}.bypass_mode=true"], "minirl", f"{CORR}.bypass_mode"),
    # the FSDP switch on a Megatron actor: Megatron never reads it
    (["routing_replay=R3", f"{ACTOR}.strategy=megatron"], "minirl", f"{ACTOR}.fsdp_config.router_replay.mode"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.name=hf"], "minirl", "actor_rollout_ref.rollout.name"),
    (["routing_replay=R3", f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction=1.5"], "minirl",
     f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction"),
    (["routing_replay=R3", f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction=lots"], "minirl",
     f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction"),
    (["routing_replay=R3", f"{ACTOR}.fsdp_config.router_replay._target_=verl.workers.config.EngineRouterReplayConfig",
      f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction=0.1"], "minirl",
     f"{ACTOR}.fsdp_config.router_replay._target_"),
    # rollout-engine features under which routes come back wrong or missing: refused with route return on
    (["routing_replay=R3", "actor_rollout_ref.rollout.pipeline_model_parallel_size=2"], "minirl",
     "actor_rollout_ref.rollout.pipeline_model_parallel_size"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.disaggregation.enabled=true"], "minirl",
     "actor_rollout_ref.rollout.disaggregation.enabled"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.name=vllm",
      "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_offloading_size=4"], "minirl",
     "actor_rollout_ref.rollout.engine_kwargs.vllm.kv_offloading_size"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.name=vllm",
      "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_transfer_config={kv_connector:LMCacheConnectorV1,kv_role:kv_both}"],
     "minirl", "actor_rollout_ref.rollout.engine_kwargs.vllm.kv_transfer_config"),
    (["routing_replay=R3", "actor_rollout_ref.rollout.name=sglang",
      "+actor_rollout_ref.rollout.engine_kwargs.sglang.pp_size=2"], "minirl",
     "actor_rollout_ref.rollout.engine_kwargs.sglang.pp_size"),
]


def test_route_breaking_engine_features_are_fine_without_route_return(run_dir):
    """The same engine settings pass where no routes are returned (R2 records them on the trainer)."""
    _validate(run_dir, "routing_replay=R2", "actor_rollout_ref.rollout.name=vllm",
              "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_offloading_size=4")


@pytest.mark.parametrize("overrides,preset,key", MISTAKES, ids=[" ".join(m[0]) + f"@{m[1]}" for m in MISTAKES])
def test_mistake_is_refused_naming_its_key(run_dir, overrides, preset, key):
    error = _refused(run_dir, *overrides, preset=preset)
    assert key in error.keys, str(error)
    line = next(str(i) for i in error.issues if i.key == key)
    assert "\n" not in line and line.startswith(f"{key}="), line


def test_an_added_key_of_the_config_dataclass_is_accepted_a_typo_is_refused(run_dir):
    """verl's RolloutConfig has enable_sleep_mode (its YAML does not list it): '+' adds a key verl reads."""
    def check(added: str):
        overrides = ["algorithm=minirl", *cpu_overrides(run_dir, steps=1), added]
        config = compose_trainer_config(overrides)
        validate_trainer_config(config, with_verl=False, overrides=overrides)
        return config

    assert check("+actor_rollout_ref.rollout.enable_sleep_mode=False").actor_rollout_ref.rollout.enable_sleep_mode is False
    with pytest.raises(ConfigError) as info:
        check("+actor_rollout_ref.rollout.enable_sleeep_mode=False")
    assert "actor_rollout_ref.rollout.enable_sleeep_mode" in info.value.keys, str(info.value)


def test_every_problem_is_reported_at_once(run_dir):
    error = _refused(run_dir, f"{ACTOR}.clip_ratio_low=-1", "trainer.total_training_steps=0",
                     "data.val_files=/nonexistent/val.parquet")
    assert {f"{ACTOR}.clip_ratio_low", "trainer.total_training_steps", "data.val_files"} <= set(error.keys)


def test_dense_model_with_routing_replay_is_refused_naming_routing_replay(run_dir, dense_model):
    for mode in ("R2", "R3"):
        error = _refused(run_dir, f"routing_replay={mode}", f"actor_rollout_ref.model.path={dense_model}")
        assert error.keys == ["routing_replay"], str(error)
        assert "dense" in str(error) and "qwen2" in str(error)
    _validate(run_dir, f"actor_rollout_ref.model.path={dense_model}")  # dense without replay is fine


def test_verl_validate_config_failures_become_one_line(run_dir):
    """What only verl checks (here: both micro-batch spellings set) still fails before Ray, readably."""
    error = _refused(run_dir, "actor_rollout_ref.rollout.log_prob_micro_batch_size=8")
    assert error.keys == ["verl validate_config"]
    assert "log_prob_micro_batch_size" in str(error)


def test_documented_replay_key_works_without_plus(run_dir):
    config = _validate(run_dir, f"{ACTOR}.fsdp_config.router_replay.mode=R2")
    assert config.actor_rollout_ref.actor.fsdp_config.router_replay.mode == "R2"


def test_r3_tolerance_survives_verls_dataclass_conversion(run_dir):
    """R3's coverage tolerance is set without '+', validated, and reaches the FSDP engine's config object."""
    from verl.utils.config import omega_conf_to_dataclass

    from verl_stable.integration.fsdp_engine import RouterReplayConfig

    config = _validate(run_dir, "routing_replay=R3", f"{ACTOR}.fsdp_config.router_replay.max_unrouted_fraction=0.05")
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    replay = actor.engine.router_replay
    assert isinstance(replay, RouterReplayConfig) and replay.mode == "R3" and replay.max_unrouted_fraction == 0.05
    with pytest.raises(ValueError, match="max_unrouted_fraction"):
        RouterReplayConfig(mode="R3", max_unrouted_fraction=2.0)


def test_stale_updates_example_from_the_demo_header_validates(run_dir):
    config = _validate(run_dir, f"{ACTOR}.ppo_mini_batch_size=2")
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 2


# ------------------------------------------------------------------------------------- through launchers
def _launch(cmd, cwd, extra_env=None):
    env = {**os.environ, "VERL_PLATFORM": "cpu", **(extra_env or {})}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


def _assert_refused_before_ray(proc, key):
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_CONFIG_ERROR, out[-3000:]
    assert "verl-stable: refused before start-up" in proc.stderr, out[-3000:]
    assert any(line.strip().startswith(f"{key}=") for line in proc.stderr.splitlines()), proc.stderr
    assert "ray init kwargs" not in out and "Traceback" not in out, out[-3000:]
    assert "Error executing job" not in out


@pytest.mark.parametrize("entry", ["verl_stable.main", "verl.trainer.main_ppo"])
def test_launchers_refuse_before_ray_with_exit_2(run_dir, tmp_path, entry):
    cmd = [sys.executable, "-m", entry]
    if entry == "verl.trainer.main_ppo":
        cmd += ["--config-path=pkg://verl_stable.config", "--config-name=minirl_trainer"]
    cmd += ["algorithm=minirl", *cpu_overrides(run_dir, steps=1), f"{ACTOR}.clip_ratio_low=-1"]
    proc, _ = _launch(cmd, cwd=tmp_path)
    _assert_refused_before_ray(proc, f"{ACTOR}.clip_ratio_low")
    # nothing written into the working directory: Hydra's run dir is inside the run dir
    assert not (tmp_path / "outputs").exists()


def test_demo_refuses_bad_demo_settings_in_its_own_words(tmp_path):
    for env, needle in (({"STEPS": "0"}, "STEPS must be >= 1"), ({"ROLLOUT_QUANT": "int5"}, "ROLLOUT_QUANT='int5'")):
        proc, _ = _launch([sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(tmp_path)], tmp_path, env)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_demo_reports_a_refused_config_in_a_few_lines(tmp_path):
    proc, _ = _launch([sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(tmp_path / "run"),
                       "algorithm=minirl_length_norm", f"{ACTOR}.loss_agg_mode=token-mean"], tmp_path)
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stdout + proc.stderr
    assert f"{ACTOR}.loss_agg_mode=token-mean" in proc.stderr
    assert len((proc.stdout + proc.stderr).splitlines()) < 15, proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()



# ------------------------------------------------------------------------------- one home for each rule and key
def test_rollout_precisions_and_quantisations_are_the_engines_own():
    from verl_stable.cpu import hf_engine
    from verl_stable.validation import rollout

    assert rollout.DTYPES is hf_engine.DTYPES and rollout.SUPPORTED_QUANTIZATION is hf_engine.SUPPORTED_QUANTIZATION


@pytest.mark.parametrize("value", [0.0, 0.5, 1, 1.0, -0.1, 1.5, True, "lots", None])
def test_the_unrouted_fraction_has_one_rule(value):
    """The config block, R3's coverage guard and validation accept and refuse the same values, with one message."""
    from omegaconf import OmegaConf

    from verl_stable.integration.fsdp_engine import RouterReplayConfig
    from verl_stable.routing.coverage import MAX_UNROUTED_KEY, RouteCoverage, check_unrouted_fraction
    from verl_stable.validation.routing import check_unrouted_tolerance

    if value is None:  # unset: validation leaves it to the dataclass default
        config = OmegaConf.create({})
        assert list(check_unrouted_tolerance(config)) == []
        return
    try:
        check_unrouted_fraction(value)
        rule = None
    except ValueError as exc:
        rule = str(exc)
    config = OmegaConf.create({})
    OmegaConf.update(config, MAX_UNROUTED_KEY, value, force_add=True)
    refused_by_validation = [issue.key for issue in check_unrouted_tolerance(config)] == [MAX_UNROUTED_KEY]
    assert refused_by_validation == (rule is not None)
    for use in (lambda: RouterReplayConfig(mode="R3", max_unrouted_fraction=value),
                lambda: RouteCoverage(tokens=4, without_route=0, sequences=1).check(value)):
        if rule is None:
            use()
        else:
            with pytest.raises(ValueError) as refused:
                use()
            assert str(refused.value) == rule


def test_routing_keys_and_the_replay_switch_live_in_routing():
    from verl_stable import validation
    from verl_stable.routing import config as keys
    from verl_stable.routing import coverage, fsdp

    assert fsdp.MODE_KEY is keys.MODE_KEY and fsdp.ROUTE_RETURN_KEY is keys.ROUTE_RETURN_KEY
    assert coverage.MAX_UNROUTED_KEY is keys.MAX_UNROUTED_KEY
    assert validation.ROUTE_RETURN_KEY is keys.ROUTE_RETURN_KEY
    assert validation.REPLAY_ENGINE_KEYS is keys.REPLAY_ENGINE_KEYS
    assert validation.replay_mode is keys.replay_mode and validation.replay_mode_key is keys.replay_mode_key


def test_the_router_replay_yaml_target_is_the_class():
    from pathlib import Path

    from verl_stable.integration.fsdp_engine import RouterReplayConfig
    from verl_stable.validation.routing import router_replay_config_path

    class_path = f"{RouterReplayConfig.__module__}.{RouterReplayConfig.__qualname__}"
    assert router_replay_config_path() == class_path
    import verl_stable

    config_dir = Path(verl_stable.__file__).resolve().parent / "config"
    yamls = sorted(config_dir.rglob("*.yaml"))
    assert yamls, f"no YAML under {config_dir}"
    lines = [line.strip() for path in yamls for line in path.read_text().splitlines()]
    targets = {line.split(":", 1)[1].strip() for line in lines
               if line.startswith("_target_:") and "RouterReplayConfig" in line and "verl_stable" in line}
    assert targets == {class_path}


def test_config_time_and_loss_time_read_one_agg_mode_table():
    """validation refuses exactly the loss_agg_mode values outside a variant's declared agg_modes (the loss itself
    runs the declared ones, and only warns for its tolerated ones, which a launch refuses)."""
    from omegaconf import OmegaConf

    from verl_stable.losses import AGG_MODE_KEY, AGG_MODE_MEANING, LOSS_MODE_KEY, LOSS_VARIANTS, TOLERATED_AGG_MODES
    from verl_stable.validation.losses import check_loss

    for variant in LOSS_VARIANTS.values():
        assert not set(TOLERATED_AGG_MODES[variant.name]) & set(variant.agg_modes)
        for mode in AGG_MODE_MEANING:
            config = OmegaConf.create({})
            OmegaConf.update(config, LOSS_MODE_KEY, variant.name, force_add=True)
            OmegaConf.update(config, AGG_MODE_KEY, mode, force_add=True)
            refused = any(issue.key == AGG_MODE_KEY for issue in check_loss(config))
            assert refused == (mode not in variant.agg_modes), (variant.name, mode)


def test_one_module_composes_and_validation_imports_no_app():
    import ast
    from pathlib import Path

    import verl_stable

    package = Path(verl_stable.__file__).resolve().parent
    hydra_users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "GlobalHydra" in p.read_text())
    assert hydra_users == ["validation/compose.py"]
    for floor, forbidden in (("validation", ("verl_stable.apps", "verl_stable.lab")),
                             ("routing", ("verl_stable.apps", "verl_stable.lab", "verl_stable.integration",
                                          "verl_stable.validation"))):
        modules = sorted((package / floor).glob("*.py"))
        assert modules, f"no modules under {package / floor}"
        for path in modules:
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not [n for n in names if n.startswith(forbidden)], (path, names)
