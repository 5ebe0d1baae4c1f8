"""Names verl looks up: ``loss_mode`` and ``adv_estimator`` in its registries, and ``+``-added keys its config
does not have (Hydra adds them; verl never reads them)."""

from __future__ import annotations

from typing import Iterable, Iterator

from omegaconf import OmegaConf

from verl_stable.losses import LOSS_MODE_KEY
from verl_stable.validation.issues import ConfigIssue, Reading, fmt, get, nearest


def _estimator_names() -> dict:
    from verl.trainer.ppo import core_algos

    return core_algos.ADV_ESTIMATOR_REGISTRY


def check_registries(config) -> Iterator[ConfigIssue]:
    """``loss_mode`` and ``adv_estimator`` against the names verl (with verl-stable's plugin) has registered."""
    import verl_stable.plugin  # noqa: F401  (registers verl-stable's losses, as verl's entry point does)
    from verl.trainer.ppo import core_algos

    for key, registry in ((LOSS_MODE_KEY, core_algos.POLICY_LOSS_REGISTRY), ("algorithm.adv_estimator",
                                                                           _estimator_names())):
        value = get(config, key)
        if value is not None and str(value) not in registry:
            near = nearest(str(value), registry)
            hint = f"nearest: {', '.join(near)}; " if near else ""
            yield ConfigIssue(key, value, "not a name verl has registered", f"{hint}all: {fmt(sorted(registry))}")


#: Path segments under which verl passes keys through (kwargs, env vars, model config overrides): a ``+``-added
#: key there is the user's to choose.
FREE_FORM = ("ray_kwargs", "override_config", "env_vars", "runtime_env", "engine_kwargs", "reward_kwargs",
             "override_transformer_config", "extra")


def _is_free_form(segments: list[str]) -> bool:
    return any(seg in FREE_FORM or seg.endswith("kwargs") for seg in segments)


def _target_fields(node) -> set[str]:
    """The fields of the dataclass a config node is converted to (its ``_target_``): verl reads every one of them,
    whether or not its YAML lists the key (e.g. ``RolloutConfig.enable_sleep_mode``). Empty when unknown."""
    import dataclasses
    import importlib

    target = node.get("_target_") if OmegaConf.is_dict(node) else None
    if not isinstance(target, str) or "." not in target:
        return set()
    module, name = target.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return set()
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def check_added_keys(config, overrides: Iterable[str]) -> Iterator[ConfigIssue]:
    """``+key=value`` overrides verl's config has no such key for: Hydra adds them and verl never reads them."""
    overrides = [str(o) for o in overrides]
    added = {o[1:].split("=", 1)[0] for o in overrides if o.startswith("+") and not o.startswith("++")}
    for key in sorted(added):
        if "." not in key:
            continue  # +group=option: a config group, Hydra resolves it
        parent, leaf = key.rsplit(".", 1)
        if _is_free_form(parent.split(".")):
            continue
        Reading.key = key
        node = OmegaConf.select(config, parent, default=None)
        if not OmegaConf.is_dict(node) or leaf in _target_fields(node):
            continue
        siblings = [k for k in node.keys() if f"{parent}.{k}" not in added]
        if not siblings:
            continue  # the whole block is new (e.g. an extra logger's settings): nothing to compare with
        near = nearest(leaf, siblings)
        yield ConfigIssue(
            key, OmegaConf.select(config, key), f"'+' added a key verl's config does not have under {parent}: "
            "verl never reads it", f"did you mean {', '.join(f'{parent}.{k}' for k in near)}" if near
            else f"the keys of {parent} (python -m verl_stable.main --cfg job)",
        )
