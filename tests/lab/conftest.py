"""Shared fixtures of the lab tests: a weak cold start of the lab's model, built once per session (seconds)."""

from __future__ import annotations

import pytest

from verl_stable.lab import model as lab_model

#: A short SFT: the lab's architecture and task, sampled answers right only some of the time.
WEAK_COLD_START = {"seed": 0, "sft_steps": 60, "batch": 32, "lr": 3e-3, "label_smoothing": 0.0, "label_noise": 0.0,
                   "sft_threads": 1, "loss_check": None, "lr_decay_from": 1.0}


@pytest.fixture(scope="session")
def weak_lab_model_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(lab_model.COLD_STARTS, "weak_test", WEAK_COLD_START)
        return lab_model.build_lab_model(tmp_path_factory.mktemp("lab_model"), cold_start="weak_test")


@pytest.fixture(scope="session")
def ci_cold_start_models(tmp_path_factory):
    """The ``--quick`` lab's cold start, built once per session the way the lab builds it (``<out>/models/<cold>/``).
    The end-to-end tests copy it into their output directory first: the lab finds it by its recipe hash and reuses it,
    as a second lab run in the same directory would."""
    from verl_stable.lab.setup import default_setup

    models = tmp_path_factory.mktemp("ci_cold_start") / "models"
    cold = lab_model.CI_COLD_START
    default_setup().build_model(models / cold, cold_start=cold)
    return models
