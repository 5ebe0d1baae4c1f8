"""Compose verl-stable's top-level configs exactly as ``python -m verl_stable.main`` does."""

from __future__ import annotations


def compose(config_name: str = "minirl_trainer", overrides: list[str] | None = None):
    """Compose a top-level verl-stable config exactly as ``python -m verl_stable.main`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl_stable.config", version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides or [])
