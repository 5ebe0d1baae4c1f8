"""The pre-launch check fails closed: nothing inside it lets a launch through, every value verl reads is in range,
the data and the model are opened before Ray, and settings that would train nothing are refused.

In-process cases compose the real config tree (seconds); the launcher cases run ``python -m verl_stable.main`` /
the demo in a subprocess and are refused before Ray starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from verl_stable import validation
from verl_stable.apps.cpu_overrides import cpu_overrides
from verl_stable.validation import (
    EXIT_CONFIG_ERROR,
    SKIP_ENV,
    ConfigError,
    ValidateOnJobStart,
    compose_trainer_config,
    validate_trainer_config,
)

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
CORR = "algorithm.rollout_correction"
MODEL = "actor_rollout_ref.model.path"


@pytest.fixture(autouse=True)
def _no_skip(monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)


def _compose(run_dir, *overrides):
    return compose_trainer_config(["algorithm=minirl", *cpu_overrides(run_dir, steps=1), *overrides])


def _issues(run_dir, *overrides) -> tuple[list, list]:
    """(refusals, warnings) of the pass, the command line's overrides passed as a launcher would."""
    config = _compose(run_dir, *overrides)
    try:
        return [], validate_trainer_config(config, overrides=list(overrides))
    except ConfigError as error:
        return error.issues, error.warnings


def _line(issues, key) -> str:
    lines = [str(i) for i in issues if i.key == key]
    assert lines, f"{key} not named in: {[str(i) for i in issues]}"
    assert "\n" not in lines[0] and lines[0].startswith(f"{key}="), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------- fail closed
def _boom(*_args, **_kwargs):
    raise RuntimeError("injected fault")


def test_an_exception_inside_a_check_is_a_refusal_naming_the_check_and_key(run_dir, monkeypatch):
    """check_clip's library call raises: the clip key is refused, and the other checks still run."""
    monkeypatch.setattr(validation.losses, "check_clip_range", _boom)
    refused, _ = _issues(run_dir, "trainer.total_training_steps=0")
    line = _line(refused, f"{ACTOR}.clip_ratio_high")
    assert "check_clip could not check it" in line and "RuntimeError: injected fault" in line
    assert SKIP_ENV in line
    _line(refused, "trainer.total_training_steps")  # the remaining checks ran


def test_a_registered_check_that_raises_before_reading_a_key_is_named(run_dir, monkeypatch):
    def check_broken(config):
        raise KeyError("nothing read yet")
        yield  # pragma: no cover

    monkeypatch.setattr(validation, "CHECKS", (check_broken, *validation.CHECKS))
    refused, _ = _issues(run_dir)
    assert [str(i) for i in refused if i.key == "check check_broken"], [str(i) for i in refused]


def test_the_hydra_callback_exits_2_through_hydras_own_callback_wrapper(run_dir, monkeypatch, capsys):
    """Hydra's Callbacks._notify turns an Exception into a warning; the refusal must get through it."""
    from hydra._internal.callbacks import Callbacks

    monkeypatch.setattr(validation.losses, "check_clip_range", _boom)
    config = compose_trainer_config(["algorithm=minirl", *cpu_overrides(run_dir, steps=1)], )
    callbacks = Callbacks.__new__(Callbacks)
    callbacks.callbacks = [ValidateOnJobStart()]
    with pytest.raises(SystemExit) as info:
        callbacks.on_run_start(config=config, config_name="minirl_trainer")
    assert info.value.code == EXIT_CONFIG_ERROR
    assert "check_clip could not check it" in capsys.readouterr().err


def test_an_unexpected_failure_of_the_whole_pass_still_refuses(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(validation, "validate_trainer_config", _boom)
    with pytest.raises(SystemExit) as info:
        ValidateOnJobStart().on_run_start(config=_compose(run_dir))
    assert info.value.code == EXIT_CONFIG_ERROR
    assert "the pre-launch check failed: injected fault" in capsys.readouterr().err


def test_skip_env_is_the_only_way_past_and_says_so_in_one_line(run_dir, monkeypatch, capfd):
    bad = [f"{ACTOR}.clip_ratio_low=-0.1"]
    config = _compose(run_dir, *bad)
    with pytest.raises(SystemExit):
        ValidateOnJobStart().on_run_start(config=config)
    capfd.readouterr()
    monkeypatch.setenv(SKIP_ENV, "1")
    ValidateOnJobStart().on_run_start(config=config)  # the callback (verl_stable.main, verl's main_ppo)
    assert validation.validate_overrides(  # the demo's and the lab's in-process pass
        ["algorithm=minirl", *cpu_overrides(run_dir, steps=1), *bad]) is None
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if SKIP_ENV in line]
    assert len(lines) == 2 and all("check was skipped" in line for line in lines), err


def test_multirun_jobs_are_each_checked(run_dir, capsys):
    callback = ValidateOnJobStart()
    callback.on_job_start(config=_compose(run_dir), task_function=None)
    with pytest.raises(SystemExit):
        callback.on_job_start(config=_compose(run_dir, "trainer.nnodes=0"), task_function=None)


# --------------------------------------------------------------------- values (ranges, NaN, registries)
# (overrides, key the refusal must name, a phrase of its line)
VALUES = [
    ([f"{ACTOR}.ulysses_sequence_parallel_size=0"], f"{ACTOR}.ulysses_sequence_parallel_size", "out of range"),
    ([f"{ACTOR}.clip_ratio_low=-0.1"], f"{ACTOR}.clip_ratio_low", "ε_low"),
    ([f"{ACTOR}.clip_ratio_high=nan"], f"{ACTOR}.clip_ratio_high", ""),
    (["trainer.n_gpus_per_node=0"], "trainer.n_gpus_per_node", "an integer >= 1"),
    (["trainer.nnodes=0"], "trainer.nnodes", "an integer >= 1"),
    (["trainer.total_training_steps=three"], "trainer.total_training_steps", "not a number"),
    (["trainer.total_training_steps=1.5"], "trainer.total_training_steps", "must be an integer"),
    (["trainer.total_epochs=null"], "trainer.total_epochs", "must be set"),
    ([f"{CORR}.rollout_is_threshold=nan"], f"{CORR}.rollout_is_threshold", "not a finite number"),
    ([f"{CORR}.rollout_is_threshold=inf"], f"{CORR}.rollout_is_threshold", "not a finite number"),
    ([f"{ACTOR}.optim.lr=nan"], f"{ACTOR}.optim.lr", "not a finite number"),
    ([f"{ACTOR}.optim.lr=-1e-6"], f"{ACTOR}.optim.lr", "trains nothing"),
    ([f"{ACTOR}.optim.lr=0"], f"{ACTOR}.optim.lr", "trains nothing"),
    (["critic.optim.lr=-1"], "critic.optim.lr", "out of range"),
    ([f"{ACTOR}.optim.weight_decay=-0.1"], f"{ACTOR}.optim.weight_decay", ">= 0"),
    ([f"{ACTOR}.optim.lr_warmup_steps_ratio=1.5"], f"{ACTOR}.optim.lr_warmup_steps_ratio", "[0, 1]"),
    ([f"{ACTOR}.grad_clip=0"], f"{ACTOR}.grad_clip", "every gradient to 0"),
    ([f"{ACTOR}.optim.clip_grad=inf"], f"{ACTOR}.optim.clip_grad", "not a finite number"),
    ([f"{ACTOR}.kl_loss_coef=nan"], f"{ACTOR}.kl_loss_coef", "not a finite number"),
    ([f"{ROLLOUT}.temperature=-1"], f"{ROLLOUT}.temperature", ">= 0"),
    ([f"{ROLLOUT}.top_p=0"], f"{ROLLOUT}.top_p", "(0, 1]"),
    ([f"{ROLLOUT}.top_p=1.5"], f"{ROLLOUT}.top_p", "(0, 1]"),
    ([f"{ROLLOUT}.top_k=-2"], f"{ROLLOUT}.top_k", ">= -1"),
    ([f"{ROLLOUT}.val_kwargs.temperature=nan"], f"{ROLLOUT}.val_kwargs.temperature", "not a finite number"),
    ([f"{ROLLOUT}.val_kwargs.top_p=2"], f"{ROLLOUT}.val_kwargs.top_p", "(0, 1]"),
    ([f"{ROLLOUT}.val_kwargs.n=0"], f"{ROLLOUT}.val_kwargs.n", ">= 1"),
    ([f"{ROLLOUT}.tensor_model_parallel_size=0"], f"{ROLLOUT}.tensor_model_parallel_size", ">= 1"),
    (["data.max_response_length=0"], "data.max_response_length", "nothing to train on"),
    (["data.max_prompt_length=-4"], "data.max_prompt_length", ">= 1"),
    ([f"{ACTOR}.ppo_epochs=0"], f"{ACTOR}.ppo_epochs", "never update"),
    (["algorithm.gamma=1.5"], "algorithm.gamma", "[0, 1]"),
    ([f"{ACTOR}.policy_loss.loss_mode=minirll"], f"{ACTOR}.policy_loss.loss_mode", "nearest: minirl"),
    (["algorithm.adv_estimator=grop"], "algorithm.adv_estimator", "nearest: grpo"),
    (["+trainer.totl_training_steps=3"], "trainer.totl_training_steps", "did you mean trainer.total_training_steps"),
    ([f"+{ACTOR}.optim.lrr=1e-3"], f"{ACTOR}.optim.lrr", f"did you mean {ACTOR}.optim.lr"),
    # settings that train nothing
    ([f"{ROLLOUT}.n=1"], f"{ROLLOUT}.n", "no group"),
    ([f"{ROLLOUT}.temperature=0"], f"{ROLLOUT}.temperature", "every group-relative advantage"),
    ([f"{ROLLOUT}.do_sample=false"], f"{ROLLOUT}.do_sample", "every group-relative advantage"),
    (["trainer.critic_warmup=5"], "trainer.critic_warmup", "the actor is never updated"),
    # verl-stable's ordered sampler is verl's synchronous one
    (
        ["trainer.v1.sampler.custom_sampler.path=pkg://verl_stable.integration.replay_buffer",
         "trainer.v1.sampler.custom_sampler.name=GroupOrderedReplayBuffer", "trainer.v1.trainer_mode=separate_async"],
        "trainer.v1.trainer_mode", "does not run in an async mode",
    ),
    (
        ["trainer.v1.sampler.custom_sampler.path=pkg://verl_stable.integration.replay_buffer",
         "trainer.v1.sampler.custom_sampler.name=GroupOrderedReplayBuffer",
         "+trainer.v1.sampler.sampler_kwargs.order_within_group=tokens"],
        "trainer.v1.sampler.sampler_kwargs.order_within_group", "session, response",
    ),
]


@pytest.mark.parametrize("overrides,key,phrase", VALUES, ids=[" ".join(v[0]) for v in VALUES])
def test_out_of_range_or_meaningless_value_is_refused_naming_its_key(run_dir, overrides, key, phrase):
    refused, _ = _issues(run_dir, *overrides)
    assert phrase in _line(refused, key)


def test_the_issues_two_mistakes_are_both_refused_not_one_crash(run_dir):
    refused, _ = _issues(run_dir, f"{ACTOR}.ulysses_sequence_parallel_size=0", f"{ACTOR}.clip_ratio_low=-0.1")
    keys = [i.key for i in refused]
    assert f"{ACTOR}.ulysses_sequence_parallel_size" in keys and f"{ACTOR}.clip_ratio_low" in keys
    assert not any("could not check it" in str(i) for i in refused), [str(i) for i in refused]
    # the ref copies the actor's size by interpolation: one line, at the key that was set
    assert "actor_rollout_ref.ref.ulysses_sequence_parallel_size" not in keys


def test_values_that_are_fine_pass(run_dir):
    refused, _ = _issues(
        run_dir, "trainer.total_training_steps=null", f"{ROLLOUT}.top_k=-1", f"{ROLLOUT}.top_k=0",
        f"{ROLLOUT}.val_kwargs.temperature=0", "+trainer.v1.sampler.sampler_kwargs.poll_interval=0.1",
        "+ray_kwargs.ray_init.address=local", f"{ACTOR}.optim.lr_warmup_steps=-1",
    )
    assert refused == [], [str(i) for i in refused]


def test_every_range_row_is_well_formed_and_names_a_real_key(run_dir):
    """A typo in the table would silently check nothing: every row parses and (outside other engines' blocks)
    names a key the composed config has."""
    from omegaconf import OmegaConf

    config = _compose(run_dir)
    for row in validation.RANGES:
        assert row.allowed()
        if ".megatron." in row.key:
            continue  # model_engine=megatron's block
        assert OmegaConf.select(config, row.key, default="<absent>") != "<absent>", row.key


def test_greedy_validation_sampling_is_not_refused(run_dir):
    """val_kwargs.temperature=0 (verl's default) is greedy evaluation, not a training rollout."""
    refused, _ = _issues(run_dir, f"{ROLLOUT}.val_kwargs.temperature=0", f"{ROLLOUT}.val_kwargs.do_sample=false")
    assert refused == []


def test_rollout_n_1_is_fine_for_a_non_group_estimator(run_dir):
    refused, _ = _issues(run_dir, f"{ROLLOUT}.n=1", "algorithm.adv_estimator=reinforce_plus_plus",
                         f"{ACTOR}.ppo_micro_batch_size_per_gpu=1", f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu=4")
    assert f"{ROLLOUT}.n" not in [i.key for i in refused], [str(i) for i in refused]


# ----------------------------------------------------------------------------------------- data + model
def _parquet(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _row(data_source="verl_stable/addition_mod10", **extra):
    row = {"data_source": data_source, "prompt": [{"role": "user", "content": "1+2="}],
           "reward_model": {"ground_truth": "3", "style": "rule"}}
    row.update(extra)
    return row


def test_a_file_without_the_prompt_column_is_refused_naming_file_and_key(run_dir, tmp_path):
    row = _row()
    row["question"] = row.pop("prompt")
    bad = _parquet(tmp_path / "noprompt.parquet", [row] * 8)
    refused, _ = _issues(run_dir, f"data.train_files={bad}")
    line = _line(refused, "data.train_files")
    assert bad in line and "no column 'prompt' (data.prompt_key=prompt)" in line and "question" in line
    fixed = _issues(run_dir, f"data.train_files={bad}", f"data.val_files={bad}", "data.prompt_key=question")
    assert fixed[0] == [], [str(i) for i in fixed[0]]


def test_an_empty_parquet_and_a_zero_byte_file_are_refused_by_name(run_dir, tmp_path):
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"prompt": pd.Series([], dtype=object)}).to_parquet(empty)
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    for path, phrase in ((empty, "no rows"), (zero, "empty file (0 bytes)"), (junk, "not a readable parquet")):
        refused, _ = _issues(run_dir, f"data.val_files={path}")
        line = _line(refused, "data.val_files")
        assert str(path) in line and phrase in line, line


def test_fewer_rows_than_one_batch_is_refused(run_dir, tmp_path):
    small = _parquet(tmp_path / "small.parquet", [_row()] * 3)
    refused, _ = _issues(run_dir, f"data.train_files={small}")  # train_batch_size=4
    assert "no training step" in _line(refused, "data.train_files")


def test_a_reward_schema_the_scorer_cannot_read_is_refused(run_dir, tmp_path):
    row = _row()
    row["reward_model"] = {"answer": "3"}
    bad = _parquet(tmp_path / "schema.parquet", [row] * 8)
    refused, _ = _issues(run_dir, f"data.train_files={bad}")
    assert "no reward_model.ground_truth" in _line(refused, "data.train_files")


def test_every_data_source_needs_a_scorer(run_dir, tmp_path):
    # the custom reward (verl_stable.tasks.addition) declares SUPPORTED_DATA_SOURCES
    other = _parquet(tmp_path / "gsm.parquet", [_row("openai/gsm8k")] * 8)
    refused, _ = _issues(run_dir, f"data.train_files={other}")
    line = _line(refused, "data.train_files")
    assert "'openai/gsm8k' has no scorer in reward.custom_reward_function.path=" in line
    # verl's default scorer: its sources are read from verl's code
    default = ["reward.custom_reward_function.path=null"]
    assert _issues(run_dir, f"data.train_files={other}", f"data.val_files={other}", *default)[0] == []
    names, prefixes = validation.verl_default_sources()
    assert {"openai/gsm8k", "lighteval/MATH", "hiyouga/geometry3k"} <= names and "aime" in prefixes
    refused, _ = _issues(run_dir, *default)  # the addition data under verl's default scorer
    assert "has no scorer in verl's default_compute_score" in _line(refused, "data.train_files")


def test_a_reward_module_without_supported_sources_is_a_warning_line(run_dir, tmp_path):
    module = tmp_path / "my_reward.py"
    module.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    refused, notes = _issues(run_dir, f"reward.custom_reward_function.path={module}")
    assert refused == [], [str(i) for i in refused]
    assert any("declares no SUPPORTED_DATA_SOURCES" in str(n) for n in notes), [str(n) for n in notes]
    refused, _ = _issues(run_dir, f"reward.custom_reward_function.path={module}",
                         "reward.custom_reward_function.name=score")
    assert "defines no function score" in _line(refused, "reward.custom_reward_function.name")
    refused, _ = _issues(run_dir, f"reward.custom_reward_function.path={tmp_path / 'gone.py'}")
    assert "file not found" in _line(refused, "reward.custom_reward_function.path")


def test_a_missing_model_dir_is_refused_and_a_hub_id_is_named_as_such(run_dir, tmp_path):
    refused, _ = _issues(run_dir, f"{MODEL}={tmp_path / 'no_such_model'}")
    assert "directory not found" in _line(refused, MODEL)
    refused, notes = _issues(run_dir, f"{MODEL}=Qwen/Qwen3-30B-A3B")
    assert MODEL not in [i.key for i in refused]
    assert any(n.key == MODEL and "hub id" in str(n) for n in notes), [str(n) for n in notes]


def test_a_model_whose_top_k_exceeds_its_experts_is_refused(run_dir, tmp_path):
    config = json.loads((run_dir / "model" / "config.json").read_text())
    config["num_experts_per_tok"] = config["num_local_experts"] + 2
    bad = tmp_path / "bad_model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    refused, _ = _issues(run_dir, f"{MODEL}={bad}")
    assert "routes each token to 6 experts" in _line(refused, MODEL)
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    refused, _ = _issues(run_dir, f"{MODEL}={broken}")
    assert "does not load" in _line(refused, MODEL)


# ------------------------------------------------------------------------------------- through launchers
def _launch(cmd, cwd, extra_env=None, timeout=300):
    env = {**os.environ, "VERL_PLATFORM": "cpu", **(extra_env or {})}
    env.pop(SKIP_ENV, None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_issues_command_is_refused_before_ray_and_leaves_no_outputs_dir(run_dir, tmp_path):
    """verl_stable.main with Hydra's default run dir (outputs/<date>/<time>): refused, nothing written."""
    overrides = [o for o in cpu_overrides(run_dir, steps=1) if not o.startswith("hydra.run.dir=")]
    proc = _launch([sys.executable, "-m", "verl_stable.main", "algorithm=minirl", *overrides,
                    f"{ACTOR}.ulysses_sequence_parallel_size=0", f"{ACTOR}.clip_ratio_low=-0.1",
                    "+trainer.totl_training_steps=3", f"{CORR}.rollout_is_threshold=nan"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_CONFIG_ERROR, out[-3000:]
    for key in (f"{ACTOR}.ulysses_sequence_parallel_size", f"{ACTOR}.clip_ratio_low",
                "trainer.totl_training_steps", f"{CORR}.rollout_is_threshold"):
        assert any(line.strip().startswith(f"{key}=") for line in proc.stderr.splitlines()), proc.stderr
    assert "ray init kwargs" not in out and "Traceback" not in out and "UserWarning: Callback" not in out
    assert not (tmp_path / "outputs").exists()


def test_a_fault_injected_into_a_check_refuses_the_real_launch(run_dir, tmp_path):
    """The launcher itself, with check_clip's library call made to raise: exit 2, before Ray."""
    inject = (
        "import runpy, sys, verl_stable.validation.losses as v\n"
        "def boom(*a, **k):\n    raise RuntimeError('injected fault')\n"
        "v.check_clip_range = boom\n"
        "sys.argv = ['verl_stable.main', *sys.argv[1:]]\n"
        "runpy.run_module('verl_stable.main', run_name='__main__')\n"
    )
    proc = _launch([sys.executable, "-c", inject, "algorithm=minirl", *cpu_overrides(run_dir, steps=1)], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_CONFIG_ERROR, out[-3000:]
    assert "check_clip could not check it (RuntimeError: injected fault)" in proc.stderr, proc.stderr
    assert "ray init kwargs" not in out


@pytest.mark.parametrize("override", ["trainer.n_gpus_per_node=0", "trainer.total_training_steps=three",
                                      "trainer.total_training_steps=1.5"])
def test_the_demo_refuses_what_used_to_crash_its_arithmetic(tmp_path, override):
    proc = _launch([sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(tmp_path / "run"), override],
                   tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_CONFIG_ERROR, out[-3000:]
    assert "Traceback" not in out and f"{override.split('=')[0]}=" in proc.stderr, out[-3000:]
    assert not (tmp_path / "run" / "model").exists()  # refused before the model's warm-up


def test_the_demos_step_count_reads_anything_once_the_check_is_skipped():
    from verl_stable.apps import console
    from verl_stable.apps.demo import _int_or_none

    # with VERL_STABLE_SKIP_VALIDATION=1 nothing refused these: the demo counts no total instead of crashing
    assert [_int_or_none(v) for v in ("null", "three", "1.5", None, "4")] == [None, None, None, None, 4]
    assert "step 2" in console.step_line({"step": 2}, None)
