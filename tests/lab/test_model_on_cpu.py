"""The lab model: built from a config, cold-started, cached by recipe; the mismatch dial's settings validate."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_stable.lab import model as lab_model
from verl_stable.lab import task

QUICK = {"seed": 0, "sft_steps": 30, "batch": 32, "lr": 3e-3, "label_noise": 0.0}


@pytest.fixture
def quick_cold_starts(monkeypatch):
    """Short recipes so the test builds in seconds (the real ones run a few hundred steps)."""
    monkeypatch.setitem(lab_model.COLD_STARTS, "quick", QUICK)
    monkeypatch.setitem(lab_model.COLD_STARTS, "untrained", {**QUICK, "sft_steps": 0})
    monkeypatch.setitem(
        lab_model.COLD_STARTS, "quick_noisy", {**QUICK, "label_noise": 0.5}
    )


def _supervised_loss(model_dir: str, problems) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids, labels = lab_model.sft_batch(
        tokenizer,
        problems,
        difficulty=2,
        rng=random.Random(1),
        batch=64,
        label_noise=0.0,
    )
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def test_build_caches_by_recipe_and_the_cold_start_lowers_the_supervised_loss(
    tmp_path, quick_cold_starts
):
    built = lab_model.build_lab_model(tmp_path, cold_start="quick")
    marker = json.loads(
        (tmp_path / built.split("/")[-1] / lab_model.MARKER).read_text()
    )
    assert marker["recipe"] == lab_model.recipe("quick")
    assert marker["sft_loss_last"] < marker["sft_loss_first"]
    weights = next(
        p
        for p in (tmp_path / built.split("/")[-1]).iterdir()
        if p.suffix == ".safetensors"
    )
    stamp = weights.stat().st_mtime_ns
    assert (
        lab_model.build_lab_model(tmp_path, cold_start="quick") == built
    )  # cached: not rebuilt
    assert weights.stat().st_mtime_ns == stamp
    untrained = lab_model.build_lab_model(tmp_path, cold_start="untrained")
    noisy = lab_model.build_lab_model(tmp_path, cold_start="quick_noisy")
    assert len({built, untrained, noisy}) == 3  # another recipe, another directory
    assert (
        lab_model.build_lab_model(tmp_path, cold_start="quick", difficulty=1) != built
    )

    config = AutoModelForCausalLM.from_pretrained(built).config
    assert (
        config.model_type == "qwen3_moe"
        and config.num_experts == lab_model.MODEL_CONFIG["num_experts"]
    )
    assert config.num_hidden_layers == lab_model.MODEL_CONFIG["num_layers"]
    assert config.num_experts_per_tok == lab_model.MODEL_CONFIG["top_k"]

    train, held_out = task.split_problems(
        seed=0, difficulty=2, n_train=task.N_TRAIN, n_eval=task.N_EVAL
    )
    for problems in (
        train,
        held_out,
    ):  # it learnt the task's answers, not only its training problems
        assert (
            _supervised_loss(built, problems)
            < _supervised_loss(untrained, problems) - 0.5
        )


def test_a_rebuilt_recipe_is_bitwise_the_same(tmp_path, quick_cold_starts):
    first = lab_model.build_lab_model(tmp_path / "a", cold_start="quick")
    second = lab_model.build_lab_model(tmp_path / "b", cold_start="quick")
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_cold_start_and_bad_difficulty_are_named():
    with pytest.raises(ValueError, match="cold_start='nope'"):
        lab_model.build_lab_model("/nonexistent", cold_start="nope")
    with pytest.raises(ValueError, match="difficulty"):
        lab_model.build_lab_model("/nonexistent", difficulty=7)


def test_every_cold_start_and_mismatch_setting_is_well_formed():
    from verl_stable.cpu.hf_engine import SUPPORTED_QUANTIZATION

    for name in lab_model.COLD_STARTS:
        assert lab_model.recipe(name)["sft_steps"] > 0
    assert lab_model.DEFAULT_MISMATCH in lab_model.MISMATCH_SETTINGS
    for name, overrides in lab_model.MISMATCH_SETTINGS.items():
        quant = [
            o.split("=", 1)[1]
            for o in overrides
            if o.startswith("actor_rollout_ref.rollout.quantization=")
        ]
        assert (
            len(quant) == 1
            and (None if quant[0] == "null" else quant[0]) in SUPPORTED_QUANTIZATION
        ), name
