"""The CPU settings have one source: the overrides and the CPU recipe are written from the same table."""

from __future__ import annotations

from pathlib import Path

from verl_stable.apps import cpu_overrides as co
from verl_stable.tasks import addition

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cpu" / "tiny_moe.yaml"


def test_the_committed_cpu_recipe_is_the_one_the_table_writes():
    assert RECIPE.read_text() == co.cpu_recipe(), (
        "recipes/cpu/tiny_moe.yaml drifted: python -m verl_stable.apps.cpu_overrides --recipe > " + str(RECIPE)
    )


def test_the_reward_file_is_the_addition_modules_own(tmp_path):
    overrides = co.cpu_overrides(tmp_path)
    assert f"reward.custom_reward_function.path={Path(addition.__file__).resolve()}" in overrides
    assert "path: pkg://verl_stable.tasks.addition" in co.cpu_recipe()


def test_the_cli_prints_the_overrides_one_per_line(tmp_path, capsys):
    co.main(["--run-dir", str(tmp_path), "--steps", "5", "--quantization", "fp8"])
    assert capsys.readouterr().out.splitlines() == co.cpu_overrides(tmp_path, steps=5, quantization="fp8")
    co.main(["--recipe"])
    assert capsys.readouterr().out == co.cpu_recipe()


def test_launch_only_and_recipe_only_settings_stay_on_their_side(tmp_path):
    keys = {o.split("=", 1)[0] for o in co.cpu_overrides(tmp_path)}
    assert "ray_kwargs.ray_init.num_cpus" in keys and "trainer.resume_mode" not in keys
    recipe = co.cpu_recipe()
    assert "num_cpus" not in recipe and "resume_mode: auto" in recipe


def test_the_demo_header_describes_the_model_and_rollout_it_was_given(tmp_path):
    """A ``model.path`` override (e.g. a head_dim-64 model for vLLM) is described from its own config, not as the
    demo's built-in model; an unreadable one is named by its path."""
    import json

    from verl_stable.apps.demo import _describe_model

    assert _describe_model(None).startswith("tiny Qwen3-MoE (2 layers, 4 experts")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "qwen3_moe", "num_hidden_layers": 3, "num_experts": 8, "num_experts_per_tok": 2}
    ))
    assert _describe_model(str(tmp_path)) == f"qwen3_moe (3 layers, 8 experts, top-2) from {tmp_path}"
    assert _describe_model(str(tmp_path / "missing")) == f"model {tmp_path / 'missing'}"
