"""The lab task: exact verification, difficulty, determinism by seed, held-out split disjoint from train."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.reward import get_custom_reward_fn

from verl_stable.lab import task
from verl_stable.tasks.addition import build_tokenizer


def _pairs(path) -> set[tuple[int, int]]:
    frame = pd.read_parquet(path)
    return {(min(e["a"], e["b"]), max(e["a"], e["b"])) for e in frame["extra_info"]}


def test_reward_is_exact_match_of_the_sum_through_verls_loader():
    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": task.REWARD_FN[0],
                    "name": task.REWARD_FN[1],
                    "reward_kwargs": {},
                }
            }
        }
    )
    score = get_custom_reward_fn(config)
    src = task.DATA_SOURCE
    assert score(src, "82", "82") == 1.0
    assert score(src, " 82\n", "82") == 1.0  # blanks around the answer do not count
    for wrong in ("8", "822", "28", "8 2", "", "82+", "082"):
        assert score(src, wrong, "82") == 0.0, wrong
    with pytest.raises(ValueError, match="data_source"):
        score("other/task", "82", "82")


@pytest.mark.parametrize("difficulty", task.DIFFICULTIES)
def test_rows_are_correct_sums_of_the_difficultys_digits(tmp_path, difficulty):
    train, held_out = task.build_datasets(
        tmp_path, seed=3, difficulty=difficulty, n_train=40, n_eval=10
    )
    tokenizer = build_tokenizer()
    for path, n in ((train, 40), (held_out, 10)):
        frame = pd.read_parquet(path)
        assert len(frame) == n
        for _, row in frame.iterrows():
            a, b = row["extra_info"]["a"], row["extra_info"]["b"]
            assert 0 <= a < 10**difficulty and 0 <= b < 10**difficulty
            content = row["prompt"][0]["content"]
            assert content == f"{a:0{difficulty}d}+{b:0{difficulty}d}="
            assert row["reward_model"]["ground_truth"] == str(a + b)
            assert (
                task.compute_score(
                    row["data_source"], str(a + b), row["reward_model"]["ground_truth"]
                )
                == 1.0
            )
            ids = tokenizer.apply_chat_template(
                list(row["prompt"]), add_generation_prompt=True
            )["input_ids"]
            assert len(ids) == task.prompt_length(difficulty)
            # the longest answer and the end token fit the response budget
            assert len(str(a + b)) + 1 <= task.response_length(difficulty)
    assert len(str(2 * (10**difficulty - 1))) + 1 == task.response_length(
        difficulty
    )  # and it is tight


def test_difficulty_is_checked():
    for bad in (0, 4, "2", 2.0, True):
        with pytest.raises(ValueError, match="difficulty"):
            task.build_datasets("/nonexistent", difficulty=bad)


@pytest.mark.parametrize("difficulty", task.DIFFICULTIES)
def test_eval_split_is_disjoint_from_train_even_with_commuted_operands(difficulty):
    n_eval = 10 if difficulty == 1 else task.N_EVAL
    train, held_out = task.split_problems(
        seed=0, difficulty=difficulty, n_train=task.N_TRAIN, n_eval=n_eval
    )
    unordered = lambda ps: {(min(a, b), max(a, b)) for a, b in ps}  # noqa: E731
    assert (
        len(held_out) == n_eval and len(unordered(held_out)) == n_eval
    )  # eval problems are distinct
    assert not unordered(train) & unordered(held_out)
    assert len(train) == task.N_TRAIN
    if difficulty == 1:  # 55 problems: train covers all that eval leaves
        assert unordered(train) | unordered(held_out) == {
            (a, b) for a in range(10) for b in range(a, 10)
        }
    else:
        assert len(unordered(train)) == task.N_TRAIN  # large spaces: no repeats


def test_too_large_an_eval_split_is_refused():
    with pytest.raises(ValueError, match="n_eval"):
        task.split_problems(seed=0, difficulty=1, n_train=10, n_eval=55)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = task.build_datasets(tmp_path / "a", seed=5)
    again = task.build_datasets(tmp_path / "b", seed=5)
    other = task.build_datasets(tmp_path / "c", seed=6)
    for x, y in zip(first, again, strict=True):
        assert pd.read_parquet(x).equals(pd.read_parquet(y))
    assert _pairs(first[1]) != _pairs(other[1])
    assert not _pairs(first[0]) & _pairs(first[1])


def test_one_reward_file_scores_the_demos_and_the_labs_rows_by_their_rule():
    from verl_stable.tasks import addition

    assert set(addition.SUPPORTED_DATA_SOURCES) == {addition.DATA_SOURCE, task.DATA_SOURCE}
    # the demo's member: the first non-blank character is the digit (mod 10)
    demo = addition.make_rows(1, seed=0, split="train")[0]
    a, b = demo["extra_info"]["a"], demo["extra_info"]["b"]
    assert demo["prompt"][0]["content"] == f"{a}+{b}=" and demo["reward_model"]["ground_truth"] == str((a + b) % 10)
    assert addition.compute_score(addition.DATA_SOURCE, " 7<junk>", "7") == 1.0
    assert addition.compute_score(addition.DATA_SOURCE, "17", "7") == 0.0
    # the lab's member: exactly the full sum
    assert addition.compute_score(task.DATA_SOURCE, "17", "17") == 1.0
    assert addition.compute_score(task.DATA_SOURCE, "7", "17") == 0.0
