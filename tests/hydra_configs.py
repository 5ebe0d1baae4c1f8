"""Compose verl-stable's top-level configs exactly as ``python -m verl_stable.main`` does."""

from __future__ import annotations

from verl_stable.validation import compose_trainer_config


def compose(config_name: str = "minirl_trainer", overrides: list[str] | None = None):
    """Compose a top-level verl-stable config exactly as ``python -m verl_stable.main`` does."""
    return compose_trainer_config(overrides or [], config_name)
