"""The recipes in recipes/: the paper's grid is complete, every recipe composes on verl 0.9.1's real config tree,
converts to verl's dataclasses and passes verl-stable's and verl's validation at the world size it declares (with a
hub id as model path: nothing is downloaded or read), every key a recipe sets exists in verl's schema, and the
dry-run prints the memory a recipe implies."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from verl_stable.apps import recipes
from verl_stable.validation import compose_trainer_config, validate_trainer_config

# The paper's grid (docs/method.md §4): (algorithm preset, routing replay, N gradient steps per rollout).
PAPER_CELLS = {
    ("minirl", None, 1), ("minirl_no_is", None, 1), ("minirl_length_norm", None, 1), ("minirl_no_clip", None, 1),
    ("minirl", "R3", 1),
    *((a, r, n) for n in (2, 4, 8) for a, r in (("minirl", "R2"), ("minirl", "R3"), ("minirl", None))),
    ("minirl_no_clip", "R2", 2), ("minirl_no_clip", "R3", 4), ("minirl_no_clip", "R3", 8),
}
ALL = recipes.all_recipes()


def test_the_grid_has_every_paper_cell_on_both_backends():
    cells = recipes.grid_cells()
    found = {(c["algorithm"], c["routing_replay"], int(c["offpolicy"][1:])) for c in cells.values()}
    assert found == PAPER_CELLS
    names = {r.name for r in ALL}
    for cell in cells:
        assert {f"{cell}@fsdp", f"{cell}@megatron"} <= names
    assert {"smoke@fsdp", "smoke@megatron", "cpu_tiny_moe"} <= names


def test_grid_yaml_is_the_rendering_of_the_one_grid_declaration():
    from verl_stable import grid

    path = recipes.RECIPES_DIR / recipes.GRID_RECIPE / "grid.yaml"
    assert path.read_text() == grid.grid_yaml(), "rewrite it: python -m verl_stable.grid > " + str(path)
    table = OmegaConf.to_container(OmegaConf.load(path))
    assert {name: {**choices, "regime": regime} for regime, cells in table.items() for name, choices in cells.items()} \
        == recipes.grid_cells()


COLD_START_MODEL = f"actor_rollout_ref.model.path={recipes.MODELS_DIR / 'qwen3_next_cold_start'}"


def _extra(recipe, data):
    return [*data, COLD_START_MODEL] if recipe.name.startswith("cold_start") else data


@pytest.mark.parametrize("recipe", [r for r in ALL if r.name != "cpu_tiny_moe"], ids=lambda r: r.name)
def test_recipe_composes_converts_and_validates_at_its_world_size(recipe, data):
    from verl.utils.config import omega_conf_to_dataclass

    config = recipes.compose(recipe, _extra(recipe, data))
    validate_trainer_config(config)  # verl-stable's checks, then verl's validate_config with n_gpus x nnodes
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert rollout.n == (8 if recipe.config_name == "smoke" else 16)
    cell = recipes.grid_cells().get(recipe.name.split("@")[0])
    if cell is None:
        return
    n = int(cell["offpolicy"][1:])
    # the paper's sizes: global batch 1,024 x N responses, mini-batch 1,024, 64 GPUs; responses 30,720 so that
    # prompt + response fit the model's 32,768 positions (the paper's 32,768 would need YaRN on trainer and rollout)
    assert config.data.train_batch_size * config.actor_rollout_ref.rollout.n == 1024 * n
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n == 1024
    # ... made of whole groups, whatever order the rollouts finish in (verl's v1 sampler: completion order)
    assert config.trainer.use_v1 and config.trainer.v1.sampler.custom_sampler.path == (
        "pkg://verl_stable.integration.replay_buffer"
    )
    assert config.trainer.v1.sampler.custom_sampler.name == "GroupOrderedReplayBuffer"
    assert config.data.max_response_length == 30720 and recipes.world_size(config) == 64
    assert config.actor_rollout_ref.rollout.quantization == "fp8"  # the paper's FP8 rollout is the grid's default
    # equal gradient steps (512) for every N
    assert config.trainer.total_training_steps * n == 512
    assert config.actor_rollout_ref.actor.policy_loss.loss_mode == cell["algorithm"]
    assert actor.engine.router_replay.mode == (cell["routing_replay"] or "disabled")
    assert config.actor_rollout_ref.rollout.enable_rollout_routing_replay is (cell["routing_replay"] == "R3")
    assert actor.strategy == ("megatron" if recipe.name.endswith("@megatron") else "fsdp2")


def test_variants_sglang_and_fp8_compose_and_validate(data):
    recipe = recipes.find("minirl_r3_n4@megatron")
    config = recipes.compose(recipe, [*data, "rollout_engine=sglang", "rollout_precision=fp8"])
    validate_trainer_config(config)
    assert config.actor_rollout_ref.rollout.name == "sglang" and config.actor_rollout_ref.rollout.quantization == "fp8"
    bf16 = recipes.compose(recipe, [*data, "rollout_precision=bf16"])
    validate_trainer_config(bf16)
    assert bf16.actor_rollout_ref.rollout.quantization is None


def test_cpu_recipe_is_the_main_jobs_settings(tmp_path, monkeypatch):
    """recipes/cpu/tiny_moe.yaml and verl_stable/apps/cpu_overrides.py (what the main job runs) compose the same run."""
    from verl_stable.apps.cpu_overrides import cpu_overrides

    monkeypatch.setenv("VERL_STABLE_RUN_DIR", str(tmp_path))
    from_recipe = recipes.compose(recipes.find("cpu_tiny_moe"))
    main_job = compose_trainer_config(["algorithm=minirl", *[o for o in cpu_overrides(tmp_path) if "hydra." not in o]])
    skip = {"ray_kwargs", "reward"}  # Ray resources come from the cluster there; reward file path vs pkg:// path
    a = OmegaConf.to_container(from_recipe, resolve=True)
    b = OmegaConf.to_container(main_job, resolve=True)
    for key in ("resume_mode", "total_training_steps"):
        a["trainer"].pop(key), b["trainer"].pop(key)
    for section in set(a) | set(b):
        if section not in skip:
            assert a.get(section) == b.get(section), section
    assert from_recipe.reward.custom_reward_function.name == main_job.reward.custom_reward_function.name
    assert from_recipe.ray_kwargs.ray_init.num_cpus is None  # connects to the cluster's Ray: no resources asked


def _recipe_files():
    return sorted(p for p in recipes.RECIPES_DIR.rglob("*.yaml") if p.name != "grid.yaml")


@pytest.fixture(scope="module")
def schemas():
    return {engine: compose_trainer_config([f"model_engine={engine}"]) for engine in ("dp", "megatron")}


def _schema_for(path: Path, schemas):
    return schemas["megatron" if "megatron" in path.name else "dp"]


@pytest.mark.parametrize("path", _recipe_files(), ids=lambda p: str(p.relative_to(recipes.RECIPES_DIR)))
def test_every_key_a_recipe_sets_exists_in_verls_schema(path, schemas):
    assert recipes.set_keys(path)
    assert recipes.unknown_keys(path, _schema_for(path, schemas)) == []


def test_a_typo_in_a_recipe_is_found(tmp_path, schemas):
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor_rollout_ref:\n  actor:\n    ppo_mini_batch_sise: 64\n  rollout:\n    n: 16\n")
    assert recipes.unknown_keys(bad, schemas["dp"]) == ["actor_rollout_ref.actor.ppo_mini_batch_sise"]


def test_dry_run_prints_the_memory_a_recipe_implies(data, capsys):
    assert recipes.main(["dry-run", "minirl_r3_n8", "--backend", "fsdp", *data]) == 0
    out = capsys.readouterr().out
    tokens = 512 * 16 * (2048 + 30720)  # N=8: 8,192 responses of at most 32,768 tokens
    assert f"worst-case tokens per step (prompt + response): {tokens:,}" in out
    assert f"384 B/token -> {tokens * 384 / 1e9:.1f} GB" in out  # docs/method.md §6: uint8 routes, 48 layers x top-8
    assert "config valid" in out and "world size 64" in out
    config = recipes.compose(recipes.find("minirl_no_replay_n8@fsdp"), data)
    assert recipes.memory_estimate(config).route_bytes_per_token == 0
    est = recipes.memory_estimate(config)
    assert est.kv_bytes_per_token == 2 * 48 * 4 * 128 * 2 and est.concurrent_full_sequences_per_engine >= 1


def test_math_data_script_writes_verls_schema(tmp_path):
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("prep", recipes.RECIPES_DIR / "prepare_math_data.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    src = tmp_path / "math.jsonl"
    src.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+3?", "answer": 5}\n')
    assert prep.main([str(src), str(tmp_path / "train.parquet")]) == 0
    frame = pd.read_parquet(tmp_path / "train.parquet")
    assert list(frame["data_source"]) == ["math"] * 2  # verl_stable.rewards.math_verifier's binary scorer
    assert frame["reward_model"][1]["ground_truth"] == "5" and frame["prompt"][0][0]["role"] == "user"
    with pytest.raises(KeyError, match="--question-key"):
        prep.to_verl_rows([{"q": 1}], "problem", "answer", "math_dapo", "train")
