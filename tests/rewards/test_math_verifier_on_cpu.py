"""verl_stable.rewards.math_verifier: binary {0, 1} scores through math-verify, loaded the way verl loads a
custom reward, safe from verl's executor threads; and verl's own default scorer's ±1 that it replaces."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from omegaconf import OmegaConf

from verl_stable.rewards import math_verifier
from verl_stable.rewards.math_verifier import SUPPORTED_DATA_SOURCES, GroundTruthError, compute_score

CASES = [
    # (response, ground truth, expected score)
    ("... so the total is \\boxed{204}.", "204", 1.0),            # boxed, right
    ("... so the total is \\boxed{205}.", "204", 0.0),            # boxed, wrong
    ("Adding them up, the answer is 204", "204", 1.0),           # plain, right
    ("Adding them up, the answer is 17", "204", 0.0),            # plain, wrong
    ("I could not finish the computation.", "204", 0.0),         # nothing to parse
    ("", "204", 0.0),                                            # empty response
    ("The probability is \\boxed{0.5}", "\\frac{1}{2}", 1.0),     # boxed decimal vs LaTeX fraction
    ("The probability is $\\frac{1}{2}$", "1/2", 1.0),            # LaTeX fraction vs plain ground truth
    ("\\boxed{\\dfrac{3}{4}}", "\\boxed{\\frac{3}{4}}", 1.0),     # a ground truth that is itself boxed
    ("\\boxed{2024}", "204", 0.0),
]


@pytest.mark.parametrize("response, truth, expected", CASES)
def test_scores_are_exactly_zero_or_one(response, truth, expected):
    out = compute_score("aime24", response, truth)
    assert out["score"] == expected and out["acc"] == expected
    assert type(out["score"]) is float and out["score"] in (0.0, 1.0)
    assert out["verify_timeout"] == 0.0


def test_scores_from_executor_threads_as_verl_calls_it():
    # verl's naive reward manager runs a sync compute_score in loop.run_in_executor (a worker thread), where
    # math-verify's signal.alarm cannot be used: the check runs in the verifier's process pool
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(compute_score, src, resp, truth) for src in SUPPORTED_DATA_SOURCES for resp, truth, _ in CASES]
        results = [f.result()["score"] for f in futures]
    assert results == [e for _ in SUPPORTED_DATA_SOURCES for _, _, e in CASES]


def test_unknown_data_source_and_bad_ground_truth_are_named():
    with pytest.raises(ValueError, match=r"data_source='openai/gsm8k'.*aime24"):
        compute_score("openai/gsm8k", "\\boxed{1}", "1")
    with pytest.raises(GroundTruthError, match=r"ground truth '\\\\frac\{'.*data_source='hmmt25'"):
        compute_score("hmmt25", "\\boxed{1}", "\\frac{")


def test_the_paper_sources_are_supported():
    assert SUPPORTED_DATA_SOURCES == ("math", "aime24", "aime25", "hmmt25")


def test_verl_loads_it_as_a_custom_reward_function():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": "pkg://verl_stable.rewards.math_verifier", "name": "compute_score", "reward_kwargs": {}}}})
    fn = get_custom_reward_fn(config)
    assert fn(data_source="aime25", solution_str="\\boxed{7}", ground_truth="7", extra_info={})["score"] == 1.0
    assert fn(data_source="aime25", solution_str="\\boxed{8}", ground_truth="7", extra_info={})["score"] == 0.0


def test_verls_default_scorer_is_plus_minus_one_for_these_sources():
    # why the recipes set this reward: verl 0.9.1 routes "math" and every "aime*" source to math_dapo (±1)
    from verl.utils.reward_score import default_compute_score

    for source in ("math", "aime24", "aime25"):
        assert default_compute_score(source, "Answer: 8", "7")["score"] == -1.0
        assert compute_score(source, "Answer: 8", "7")["score"] == 0.0


def _outlasts_the_backstop(response: str, ground_truth: str) -> tuple[float, bool]:
    """A check that would score 1.0, but only after far longer than the test's backstop (the pool's worker imports
    it from this module: the pool spawns)."""
    import time

    time.sleep(60)
    return 1.0, False


def test_a_check_past_the_backstop_scores_zero_and_is_counted(monkeypatch):
    # the pool's backstop: a check that outlives CALL_TIMEOUT_S is abandoned, counted, and the pool restarted.
    # The check itself is made slow: a zero timeout alone races a warm pool that answers before result() is asked.
    monkeypatch.setattr(math_verifier, "check_answer", _outlasts_the_backstop)
    monkeypatch.setattr(math_verifier, "CALL_TIMEOUT_S", 2)
    out = compute_score("math", "\\boxed{1}", "1")
    assert out == {"score": 0.0, "acc": 0.0, "verify_timeout": 1.0}
    monkeypatch.undo()
    assert compute_score("math", "\\boxed{1}", "1")["score"] == 1.0
