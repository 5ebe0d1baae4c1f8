"""Fixtures for the CPU backend tests: a tiny Qwen3-MoE + tokenizer + addition data, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from verl_stable.tasks.addition import build_dataset, build_model_dir

    root = tmp_path_factory.mktemp("cpu_assets")
    model_dir = build_model_dir(root / "model", seed=0)
    train, val = build_dataset(root / "data", n_train=64, n_val=8, seed=0)
    return {"root": root, "model": model_dir, "train": train, "val": val}
