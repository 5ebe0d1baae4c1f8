"""Compose a trainer config as the launchers do, without a Hydra run directory: the one place that resets Hydra's
global state (the validation pass, the recipes app and the tests all compose through it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from omegaconf import DictConfig


def compose_trainer_config(overrides: list[str], config_name: str = "minirl_trainer", *,
                           config_dir: Optional[Union[str, Path]] = None) -> DictConfig:
    """Compose ``config_name`` from verl-stable's config package as ``python -m verl_stable.main`` would, or from
    ``config_dir`` as ``--config-path=<config_dir>`` would (no Hydra run dir)."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    if config_dir is not None:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_module(config_module="verl_stable.config", version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
