"""The recipes against their model files: every grid cell on both backends passes the context check and fits an
80 GB GPU by the memory plan; a cell made not to fit is refused with a non-zero exit; the plan's arithmetic
matches a hand computation; the shipped configs are the shapes transformers builds; the cold-start recipe
composes and validates."""

from __future__ import annotations

import json

import pytest
import torch

from verl_stable.apps import recipes
from verl_stable import validation
from verl_stable.apps.recipes.plan import GB, layer_activation_bytes
from verl_stable.validation.model import check_model_context, check_model_routes, check_sequence_parallel
from verl_stable.validation.model_shape import shape_from_dict

GRID = [r for r in recipes.all_recipes() if r.config_name in (recipes.GRID_RECIPE, "smoke")]
COLD = f"actor_rollout_ref.model.path={recipes.MODELS_DIR / 'qwen3_next_cold_start'}"


@pytest.mark.parametrize("name", ["qwen3_30b_a3b_base", "qwen3_next_cold_start", "qwen1.5_moe_a2.7b"])
def test_shipped_config_is_the_shape_transformers_builds(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = recipes.MODELS_DIR / name
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    shape = shape_from_dict(json.loads((path / "config.json").read_text()), name)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.expert_params == sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)


def test_qwen3_30b_a3b_base_has_the_published_shape():
    shape = shape_from_dict(json.loads((recipes.MODELS_DIR / "qwen3_30b_a3b_base" / "config.json").read_text()), "q")
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.head_dim) == (48, 2048, 32, 4, 128)
    assert (shape.experts, shape.top_k, shape.moe_ffn, shape.vocab, shape.max_positions) == (128, 8, 768, 151936, 32768)
    assert not shape.tied


@pytest.mark.parametrize("recipe", GRID, ids=lambda r: r.name)
def test_every_grid_cell_passes_the_context_check_and_fits_80gb(recipe, data):
    """Every grid cell (and the single-node smoke) on both backends, against the shipped model config."""
    config = recipes.compose(recipe, data)
    assert list(check_model_context(config)) == [] and list(check_model_routes(config)) == []
    assert list(check_sequence_parallel(config)) == []
    plan = recipes.memory_plan(config, recipes.model_shape(config), 80.0, recipe.name)
    assert plan.fits, plan.lines()
    assert plan.rollout["full_sequences_per_engine"] >= 1


@pytest.mark.parametrize("backend", recipes.BACKENDS)
def test_dry_run_json_and_verdict(backend, data, capsys):
    assert recipes.main(["dry-run", "minirl_r3_n8", "--backend", backend, "--json", *data]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"recipe", "backend", "gpu_gb", "per_gpu_peak_gb", "fits", "phases"} <= set(plan)
    assert plan["backend"] == backend and plan["fits"] and plan["gpu_gb"] == 80.0
    assert plan["per_gpu_peak_gb"] == pytest.approx(max(p["total"] for p in plan["phases"].values()), abs=0.01)
    assert plan["checkpoint"]["gb_per_run"] == pytest.approx(plan["checkpoint"]["gb_per_checkpoint"] * 2)


@pytest.mark.parametrize("args", [["--gpu-gb", "32"], ["backend=megatron",
                                                      "actor_rollout_ref.actor.megatron.param_offload=false",
                                                      "actor_rollout_ref.actor.megatron.optimizer_offload=false"],
                                  ["actor_rollout_ref.model.enable_gradient_checkpointing=false"]],
                         ids=["32GB", "megatron-no-offload", "fsdp-no-recompute"])
def test_a_cell_that_does_not_fit_is_refused(args, data, capsys):
    backend = "megatron" if "backend=megatron" in args else "fsdp"
    extra = [a for a in args if a != "backend=megatron"]
    assert recipes.main(["dry-run", "minirl_r3_n8", "--backend", backend, *extra, *data]) != 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_plan_matches_a_hand_computation(data):
    """FSDP over 64 ranks, 8,192 tokens per rank, full recompute: every term by hand from the published shape."""
    config = recipes.compose(recipes.find("minirl@fsdp"), data)
    shape = recipes.model_shape(config)
    plan = recipes.memory_plan(config, shape, 80.0)
    train = next(p for p in plan.phases if p.name == "train").parts
    P, F, T, h, V, L = 30_532_122_624, 64, 8192, 2048, 151936, 48
    assert train["params"] == pytest.approx(4 * P / F) and train["grads"] == pytest.approx(4 * P / F)
    assert train["optimizer resident"] == pytest.approx(8 * P / F)
    assert train["logits"] == pytest.approx(T * V * 10)
    # one layer by hand: attention 2h + 2(q + 2kv) + 2q with q = 32*128, kv = 4*128; norms 4h;
    # experts 8 x (2h + 8*768 + 2h); router 4*128 + 2h
    layer = (2 * h + 2 * (4096 + 1024) + 2 * 4096) + 4 * h + 8 * (4 * h + 8 * 768) + (4 * 128 + 2 * h)
    assert layer_activation_bytes(shape) == layer
    assert train["activations"] == pytest.approx(L * T * 2 * h + T * layer)
    rollout = next(p for p in plan.phases if p.name == "rollout").parts
    assert rollout["rollout engine (gpu_memory_utilization)"] == pytest.approx(0.7 * 80 * GB)
    # checkpoint: fp32 weights + Adam moments = 12 B/param
    assert plan.checkpoint["gb_per_checkpoint"] == pytest.approx(12 * P / GB)


def test_context_over_the_positions_is_refused_naming_the_key(data):
    config = recipes.compose(recipes.find("minirl@fsdp"), [*data, "actor_rollout_ref.rollout.max_model_len=34816",
                                                           "data.max_response_length=32768"])
    keys = {issue.key for issue in check_model_context(config)}
    assert {"actor_rollout_ref.rollout.max_model_len", "data.max_response_length"} <= keys
    assert recipes.main(["dry-run", "minirl", "--backend", "fsdp", *data, "data.max_response_length=32768"]) != 0


def test_yarn_through_override_config_is_refused_for_the_vllm_rollout(data):
    yarn = ("+actor_rollout_ref.model.override_config.rope_scaling={rope_type: yarn, factor: 4.0, "
            "original_max_position_embeddings: 32768}")
    config = recipes.compose(recipes.find("minirl@fsdp"), [*data, yarn, "data.max_response_length=32768",
                                                           "actor_rollout_ref.rollout.max_model_len=34816"])
    issues = list(check_model_context(config))
    # the positions grow to 131,072 (no length issue), but the rollout would not get the scaling
    assert [i.key for i in issues] == ["actor_rollout_ref.model.override_config.rope_scaling"]
    assert "rollout" in issues[0].problem


def test_cold_start_recipe_composes_validates_and_fits(data, capsys):
    from verl_stable.validation import validate_trainer_config

    recipe = recipes.find("cold_start@fsdp")
    config = recipes.compose(recipe, [*data, COLD])
    validate_trainer_config(config)
    assert config.data.train_batch_size * config.actor_rollout_ref.rollout.n == 4096
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n == 2048
    assert config.data.max_response_length == 65536
    assert config.actor_rollout_ref.actor.policy_loss.loss_mode == "minirl"
    assert config.actor_rollout_ref.actor.fsdp_config.router_replay.mode == "R2"
    assert list(check_model_context(config)) == [] and list(check_model_routes(config)) == []
    assert recipes.main(["dry-run", "cold_start@fsdp", *data, COLD]) == 0
    assert "qwen3_next" in capsys.readouterr().out


def test_cold_start_model_on_megatron_is_refused(data):
    config = recipes.compose(recipes.find("minirl@megatron"), [*data, COLD])
    issues = list(check_model_routes(config))
    assert [i.key for i in issues] == ["actor_rollout_ref.actor.strategy"] and "qwen3_next" in issues[0].problem


def test_missing_model_path_is_refused_naming_the_key(data):
    config = recipes.compose(recipes.find("cold_start@fsdp"), data)
    with pytest.raises(validation.ConfigError) as refused:
        validation.validate_trainer_config(config, with_verl=False)
    # named once, by the pass's model check; the model-file checks have nothing to read and stay quiet
    assert refused.value.keys.count("actor_rollout_ref.model.path") == 1


def test_ulysses_on_qwen3_next_is_refused_naming_the_key(data):
    config = recipes.compose(recipes.find("cold_start@fsdp"), [*data, COLD,
                                                               "actor_rollout_ref.actor.ulysses_sequence_parallel_size=4"])
    issues = list(check_sequence_parallel(config))
    assert issues and issues[0].key == "actor_rollout_ref.actor.ulysses_sequence_parallel_size"
    assert "Qwen3NextGatedDeltaNet" in issues[0].problem


def test_readme_table_is_the_generated_one():
    readme = (recipes.RECIPES_DIR / "README.md").read_text()
    begin, end = "<!-- recipes-table:begin -->\n", "\n<!-- recipes-table:end -->"
    assert readme[readme.index(begin) + len(begin):readme.index(end)] == recipes.readme_table()


@pytest.mark.parametrize("backend", recipes.BACKENDS)
def test_readme_plan_of_minirl_r3_n8_is_what_the_dry_run_prints(backend, data, capsys):
    readme = (recipes.RECIPES_DIR / "README.md").read_text()
    block = readme.split("FSDP:\n\n")[1].split("\n\nMegatron:\n\n")
    block = block[0] if backend == "fsdp" else block[1].split("\n\n")[0]
    assert recipes.main(["dry-run", "minirl_r3_n8", "--backend", backend, *data]) == 0
    out = capsys.readouterr().out
    for line in block.splitlines():
        assert f"[dry-run] {line.strip()}\n" in out


@pytest.mark.parametrize("variant", [["rollout_engine=sglang"], ["rollout_precision=bf16"],
                                     ["rollout_engine=sglang", "rollout_precision=bf16"]], ids=" ".join)
@pytest.mark.parametrize("backend", recipes.BACKENDS)
def test_rollout_variants_fit_too(variant, backend, data):
    config = recipes.compose(recipes.find(f"minirl_r3_n8@{backend}"), [*data, *variant])
    plan = recipes.memory_plan(config, recipes.model_shape(config), 80.0)
    assert plan.fits, plan.lines()
    weights = plan.rollout["weights_gb_per_gpu"] * plan.rollout["tp"]
    assert weights == pytest.approx(30.53 * (2 if "rollout_precision=bf16" in variant else 1.02), rel=0.01)
