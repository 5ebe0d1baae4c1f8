"""Each variant of the lab's grid changes exactly what it names: its composed config against the base's.

Pure config tests (Hydra composition of verl's real ppo_trainer + our presets, no Ray, no model): the base is
the lab's shared overrides with ``algorithm=minirl``; a variant's config may differ from it only under the
keys its presets and overrides own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.lab.addition_setup import addition_setup
from verl_stable.lab import run, sampler, variants
from verl_stable.lab.setup import default_setup
from verl_stable.validation import compose_trainer_config, validate_trainer_config

PROMPTS = 8
STEPS = 4  # gradient steps: whole rollouts at every N the lab runs
MINI = "actor_rollout_ref.actor.ppo_mini_batch_size"
LOSS = "actor_rollout_ref.actor.policy_loss.loss_mode"
ROLLOUT_IS = "algorithm.rollout_correction.rollout_is"
AGG = "actor_rollout_ref.actor.loss_agg_mode"
REPLAY = "actor_rollout_ref.actor.fsdp_config.router_replay.mode"
ROLLOUT_ROUTES = "actor_rollout_ref.rollout.enable_rollout_routing_replay"
MODEL = "actor_rollout_ref.model.path"

# What each switch owns in the composed config (the engine's copies of replay/mini-batch keys included).
OWNED = {
    "algorithm=minirl_no_is": {LOSS, ROLLOUT_IS, "actor_rollout_ref.actor.policy_loss.rollout_correction.rollout_is"},
    "algorithm=minirl_length_norm": {LOSS, AGG},
    "algorithm=minirl_no_clip": {LOSS},
    "routing_replay=R2": {REPLAY},
    "routing_replay=R3": {REPLAY, ROLLOUT_ROUTES},
    "mini": {MINI, "data.train_batch_size", "trainer.total_training_steps", "trainer.test_freq"},
    "cold": {MODEL},
}


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _base(tmp: Path, cold_start: str = "default") -> list[str]:
    setup = addition_setup()
    args = run.Args(out=tmp, size=variants.GridSize(steps=STEPS, prompts_per_step=PROMPTS))
    # real files: the pre-launch check opens them (schema, rows, a scorer for every data source)
    train, val = setup.build_data(tmp / "data", seed=0)
    model = tmp / "models" / cold_start
    return run.base_overrides(
        args, setup, run_dir=tmp / "runs" / "x", model_dir=str(model), train=str(train), val=str(val)
    )


def _owned(variant: variants.Variant) -> set[str]:
    keys = set()
    for preset in variant.presets:
        keys |= OWNED.get(preset, set())
    if variant.n_minibatches > 1:
        keys |= OWNED["mini"]
    if variant.cold_start != "default":
        keys |= OWNED["cold"]
    return keys


def _diff(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith("trainer.experiment_name")}


TABLE = variants.grid(addition_setup().cold_starts)


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab_cfg")
    base = _base(tmp)
    return tmp, _flat(compose_trainer_config([*base, "algorithm=minirl"]))


@pytest.mark.parametrize("name", list(TABLE))
def test_variant_changes_only_what_it_names(base_config, name):
    tmp, base = base_config
    v = TABLE[name]
    overrides = _base(tmp, v.cold_start)
    if v.cold_start != "default":
        overrides = [
            o if not o.startswith(f"{MODEL}=") else f"{MODEL}={tmp / 'models' / v.cold_start}" for o in overrides
        ]
    cfg = compose_trainer_config(run.variant_overrides(v, run.Args(size=variants.GridSize(STEPS, PROMPTS)), overrides))
    changed = _diff(base, _flat(cfg))
    assert changed <= _owned(v), f"{name} also changed {sorted(changed - _owned(v))}"
    # and it does change what it names
    flat = _flat(cfg)
    # the paper's sizing: N x the prompts per rollout, mini-batches of the on-policy size, STEPS / N rollouts
    n = v.n_minibatches
    assert flat[MINI] == PROMPTS
    assert flat["data.train_batch_size"] == PROMPTS * n
    assert flat["trainer.total_training_steps"] == STEPS // n
    assert flat["trainer.test_freq"] == STEPS // n
    if "routing_replay=R2" in v.presets:
        assert flat[REPLAY] == "R2" and flat[ROLLOUT_ROUTES] is False
    elif "routing_replay=R3" in v.presets:
        assert flat[REPLAY] == "R3" and flat[ROLLOUT_ROUTES] is True
    else:
        assert flat[REPLAY] == "disabled"
    preset = next(p for p in v.presets if p.startswith("algorithm="))
    assert flat[LOSS] == preset.split("=", 1)[1]


def test_variants_share_seeds_data_sizes_and_the_fast_sampler(base_config):
    _, base = base_config
    assert base["data.seed"] == base["actor_rollout_ref.rollout.seed"] == 0
    assert base["data.train_batch_size"] == PROMPTS and base["actor_rollout_ref.rollout.n"] == 8
    assert base["trainer.v1.sampler.custom_sampler.path"] == "pkg://verl_stable.lab.sampler"
    assert base["trainer.v1.sampler.sampler_kwargs.poll_interval"] == sampler.DEFAULT_POLL_INTERVAL_S
    assert base["actor_rollout_ref.rollout.val_kwargs.n"] == addition_setup().eval_k
    assert base["actor_rollout_ref.rollout.val_kwargs.do_sample"] is True
    assert base["actor_rollout_ref.rollout.quantization"] == "fp8"  # the lab's default mismatch: FP8 rollout


@pytest.mark.parametrize("name", ["minirl", "minirl_r3", "n4_r3_no_clip", "n2_r3"])
def test_variant_configs_pass_verl_stables_validation(tmp_path, name):
    v = TABLE[name]
    overrides = run.variant_overrides(v, run.Args(size=variants.GridSize(STEPS, PROMPTS)), _base(tmp_path))
    addition_setup().build_model(tmp_path / "models" / "default")
    validate_trainer_config(compose_trainer_config(overrides))


def test_the_grid_holds_the_papers_comparisons():
    names = set(TABLE)
    # no clipping is ablated from the replay mode that is stable at N (R2 at N=2, R3 at N=4), as in the recipes
    assert {"n2_r2_no_clip", "n2_no_replay", "n2_r2", "n2_r3"} <= names
    assert {"n4_r3_no_clip", "n4_no_replay", "n4_r2", "n4_r3"} <= names
    assert {"minirl", "minirl_no_is", "minirl_length_norm", "minirl_no_clip", "minirl_r3"} <= names
    assert {f"cold_{c}_r2" for c in addition_setup().cold_starts} <= names
    assert set(variants.DEFAULT_VARIANTS) <= names and set(variants.QUICK_VARIANTS) <= names


def test_the_labs_cells_are_the_recipes_cells_scaled_down():
    """The lab and the recipes read one cell table: every recipe cell with an N the lab runs is a lab variant with the
    same loss preset, replay mode and N, and every lab variant (cold starts included) runs a recipe cell."""
    from verl_stable.apps import recipes

    cells = recipes.grid_cells()
    lab = {v.cell: v for v in TABLE.values() if v.regime != "cold start"}
    assert set(lab) == {name for name, c in cells.items() if int(c["offpolicy"][1:]) in variants.LAB_N}
    for v in TABLE.values():
        c = cells[v.cell]
        replay = [p.split("=", 1)[1] for p in v.presets if p.startswith("routing_replay=")]
        assert f"algorithm={c['algorithm']}" in v.presets, v.name
        assert replay == ([c["routing_replay"]] if c["routing_replay"] else []), v.name
        assert v.n_minibatches == int(c["offpolicy"][1:]), v.name


def test_unknown_variant_and_indivisible_batch_are_refused():
    with pytest.raises(ValueError, match="unknown variant.*nope.*known: minirl"):
        variants.select(["minirl,nope"], TABLE)
    with pytest.raises(
        ValueError, match=r"n4_r2: 6 gradient steps \(lab --steps\) are not whole rollouts of 4 updates"
    ):
        TABLE["n4_r2"].overrides(variants.GridSize(steps=6))
    with pytest.raises(ValueError, match=r"n4_r2: held-out eval every 6 gradient steps falls inside a rollout"):
        TABLE["n4_r2"].overrides(variants.GridSize(steps=12, eval_every=6))
    assert TABLE["minirl"].overrides(variants.GridSize(steps=6, eval_every=3)) == list(TABLE["minirl"].presets)


def test_sampler_interval_is_checked():
    assert sampler.poll_interval_from({}) == sampler.DEFAULT_POLL_INTERVAL_S
    assert sampler.poll_interval_from({"poll_interval": "0.5"}) == 0.5
    for bad in (0, -1, "x", float("nan")):
        with pytest.raises(ValueError, match="sampler_kwargs.poll_interval"):
            sampler.poll_interval_from({"poll_interval": bad})


def test_an_unknown_cold_start_is_refused_before_any_work(tmp_path, capsys):
    from verl_stable.lab import run

    out = tmp_path / "lab"
    assert run.main(["--cold-start", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cold start 'nope' unknown" in err and "lab --cold-start" in err and "ci" in err
    assert not (out / "data").exists() and not (out / "models").exists()  # refused before data and models
    args = run.parse_args(["--quick"])
    assert args.cold_start == default_setup().ci_cold_start  # --quick trains from the CI cold start
