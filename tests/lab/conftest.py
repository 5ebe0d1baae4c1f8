"""Shared fixtures of the lab tests: a weak cold start of the lab's model, built once per session (seconds)."""

from __future__ import annotations

import pytest

from verl_stable.lab import model as lab_model

#: A short SFT: the lab's architecture and task, sampled answers right only some of the time.
WEAK_COLD_START = {"seed": 0, "sft_steps": 60, "batch": 32, "lr": 3e-3, "label_smoothing": 0.0, "label_noise": 0.0, "stop_at_loss": None}


@pytest.fixture(scope="session")
def weak_lab_model_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(lab_model.COLD_STARTS, "weak_test", WEAK_COLD_START)
        return lab_model.build_lab_model(tmp_path_factory.mktemp("lab_model"), cold_start="weak_test")
