"""One validation pass over a composed trainer config, before Ray starts.

Everything verl-stable owns or depends on is checked here, in seconds, on the driver: the loss variant ×
``loss_agg_mode`` × ``algorithm.rollout_correction`` (level, threshold, bypass), clip ratios, routing
replay × strategy × route return × the model's family (read from its config), the rollout's precision,
that the data files exist, the batch-size divisibility verl's workers assert later, step counts — and then
verl's own ``validate_config``, with its assertion turned into a message. Every problem becomes one
:class:`ConfigIssue` (key, value, what is wrong, what is allowed); all of them are reported together.

It runs automatically for every launch that composes verl-stable's trainer configs — ``python -m
verl_stable.main`` and ``python -m verl.trainer.main_ppo --config-path=pkg://verl_stable.config ...`` alike
— through a Hydra callback declared in those configs (:class:`ValidateOnJobStart`), which prints the
issues and exits with status 2 instead of starting Ray. Python users call :func:`validate_trainer_config`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from verl_stable.losses import AGG_MODE_KEY, LOSS_MODE_KEY, LOSS_VARIANTS, ROLLOUT_IS_KEY, check_clip_range
from verl_stable.routing.coverage import MAX_UNROUTED_KEY
from verl_stable.routing.fsdp import FSDP_STRATEGIES, MODE_KEY, REPLAY_MODES, ROUTE_RETURN_KEY

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
CORRECTION = "algorithm.rollout_correction"
FSDP_REPLAY_KEY = MODE_KEY
#: Rollout engines that return routed experts when ``enable_rollout_routing_replay=True``.
ROUTE_RETURNING_ROLLOUTS = ("vllm", "sglang", "hf_cpu")
ROLLOUT_IS_LEVELS = ("token", "sequence", None)
#: Exit status of a launch refused by validation (Hydra's own usage errors use 1).
EXIT_CONFIG_ERROR = 2


@dataclass(frozen=True)
class ConfigIssue:
    """One refused setting: ``key=value: problem (allowed: ...)``."""

    key: str
    value: Any
    problem: str
    allowed: str = ""

    def __str__(self) -> str:
        value = "null" if self.value is None else self.value
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.key}={value}: {self.problem}{allowed}"


class ConfigError(ValueError):
    """A composed trainer config that would fail (or silently misbehave) once training starts."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def keys(self) -> list[str]:
        return [issue.key for issue in self.issues]


def _get(config: DictConfig, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(config, key, default=default)
    return default if value is None else value


def _divisors(n: int) -> str:
    return _fmt(d for d in range(1, n + 1) if n % d == 0)


def _fmt(values) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)


# ------------------------------------------------------------------------------------------------ checks
def check_steps(config) -> Iterator[ConfigIssue]:
    for key in ("trainer.total_training_steps", "trainer.total_epochs", f"{ACTOR}.ppo_epochs", f"{ROLLOUT}.n",
                "data.train_batch_size"):
        value = _get(config, key)
        if value is None and key == "trainer.total_training_steps":
            continue  # null: verl derives it from the epochs
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            yield ConfigIssue(key, value, "must be an integer >= 1")


def check_loss(config) -> Iterator[ConfigIssue]:
    loss_mode = _get(config, LOSS_MODE_KEY, "vanilla")
    variant = LOSS_VARIANTS.get(loss_mode)
    if variant is None:
        return  # verl's own losses: verl checks them
    agg_mode = _get(config, AGG_MODE_KEY)
    if agg_mode not in variant.agg_modes:
        yield ConfigIssue(
            AGG_MODE_KEY, agg_mode, f"{LOSS_MODE_KEY}={loss_mode} ({variant.summary}) does not aggregate this way",
            _fmt(variant.agg_modes),
        )
    level = _get(config, ROLLOUT_IS_KEY)
    if level not in ROLLOUT_IS_LEVELS:
        yield ConfigIssue(ROLLOUT_IS_KEY, level, "unknown importance-sampling level", _fmt(ROLLOUT_IS_LEVELS))
    elif level not in variant.rollout_is:
        yield ConfigIssue(
            ROLLOUT_IS_KEY, level,
            f"{LOSS_MODE_KEY}={loss_mode} ({variant.summary}) needs another training–inference weight",
            _fmt(variant.rollout_is),
        )
    if level is not None:
        yield from _check_is_threshold(_get(config, f"{CORRECTION}.rollout_is_threshold"))
    if _get(config, f"{CORRECTION}.bypass_mode", False):
        yield ConfigIssue(
            f"{CORRECTION}.bypass_mode", True,
            f"{LOSS_MODE_KEY}={loss_mode} needs π_old recomputed by the trainer (bypass uses the rollout's μ_old "
            "as π_old, so the training–inference factor π_old/μ_old is lost)", "false",
        )
    if not _get(config, f"{ROLLOUT}.calculate_log_probs", False) and level is not None:
        yield ConfigIssue(
            f"{ROLLOUT}.calculate_log_probs", False,
            "the training–inference weight needs the rollout engine's log-probs μ_old", "true",
        )


def _check_is_threshold(threshold) -> Iterator[ConfigIssue]:
    from verl.trainer.ppo.rollout_corr_helper import _parse_rollout_is_threshold

    try:
        _parse_rollout_is_threshold(threshold)
    except (TypeError, ValueError) as exc:
        yield ConfigIssue(
            f"{CORRECTION}.rollout_is_threshold", threshold, str(exc).rstrip("."),
            "an upper bound C > 0 (TIS, the paper uses 5.0) or 'lower_upper' with 0 < lower <= upper",
        )


def check_clip(config) -> Iterator[ConfigIssue]:
    clip = _get(config, f"{ACTOR}.clip_ratio")
    low, high = _get(config, f"{ACTOR}.clip_ratio_low", clip), _get(config, f"{ACTOR}.clip_ratio_high", clip)
    try:
        check_clip_range(low, high)  # the loss functions' own rule, one place
    except ValueError as exc:
        message = str(exc)  # "<key>=<value> is out of range: <why>"
        key = message.split("=", 1)[0]
        yield ConfigIssue(key, low if key.endswith("_low") else high, message.split(": ", 1)[-1].rstrip("."))


#: verl's routing-replay switch per actor strategy: the engine config each strategy reads (verl 0.9.1's
#: ``ActorRolloutRefWorker`` reads megatron / veomni; verl-stable's FSDP engine mixin reads fsdp_config).
REPLAY_ENGINE_KEYS = {
    "fsdp": "fsdp_config",
    "fsdp2": "fsdp_config",
    "megatron": "megatron",
    "veomni": "veomni",
}
#: Engine configs that carry verl's EngineRouterReplayConfig (the field lives on the shared EngineConfig base).
_ENGINE_CONFIG_KEYS = ("fsdp_config", "megatron", "veomni", "torchtitan", "automodel")


def replay_mode_key(strategy) -> Optional[str]:
    """The full key of verl's routing-replay switch for an actor strategy; None for a strategy without replay."""
    engine = REPLAY_ENGINE_KEYS.get(str(strategy))
    return None if engine is None else f"{ACTOR}.{engine}.router_replay.mode"


def _requested_modes(config) -> dict[str, str]:
    """Every ``actor_rollout_ref.actor.<engine>.router_replay.mode`` in the config, by full key."""
    modes = {}
    for engine in _ENGINE_CONFIG_KEYS:
        mode = _get(config, f"{ACTOR}.{engine}.router_replay.mode")
        if mode is not None:
            modes[f"{ACTOR}.{engine}.router_replay.mode"] = str(mode)
    return modes


def replay_mode(config) -> str:
    """The routing-replay mode the composed config asks for: the switch of the actor strategy's own engine, or
    (for a strategy without replay) the first switch that is on anywhere."""
    key = replay_mode_key(_get(config, f"{ACTOR}.strategy"))
    modes = _requested_modes(config)
    if key is not None:
        return modes.get(key, "disabled")
    return next((mode for mode in modes.values() if mode != "disabled"), "disabled")


#: The router_replay block class that carries ``max_unrouted_fraction`` (verl's own class has no such field).
ROUTER_REPLAY_CONFIG = "verl_stable.routing.fsdp_plugin.RouterReplayConfig"


def check_unrouted_tolerance(config) -> Iterator[ConfigIssue]:
    """R3's coverage guard tolerance: a fraction, on a router_replay block whose class has the field."""
    value = OmegaConf.select(config, MAX_UNROUTED_KEY, default=None)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        yield ConfigIssue(
            MAX_UNROUTED_KEY, value, "R3's tolerance for real tokens without a rollout route (beyond one final "
            "token per sequence and the tool/environment tokens) is a fraction of the real tokens",
            "a number in [0, 1]; 0.0 stops on any unexpected unrouted token",
        )
    target = OmegaConf.select(config, FSDP_REPLAY_KEY.rsplit(".", 1)[0] + "._target_", default=None)
    if target is not None and target != ROUTER_REPLAY_CONFIG:
        yield ConfigIssue(
            FSDP_REPLAY_KEY.rsplit(".", 1)[0] + "._target_", target, f"{MAX_UNROUTED_KEY} is a field of "
            f"verl-stable's router_replay class, not of {target}", ROUTER_REPLAY_CONFIG,
        )


def check_routing_replay(config) -> Iterator[ConfigIssue]:
    yield from check_unrouted_tolerance(config)
    strategy = _get(config, f"{ACTOR}.strategy")
    own_key = replay_mode_key(strategy)
    modes = _requested_modes(config)
    for key, value in modes.items():
        if value not in REPLAY_MODES:
            yield ConfigIssue(key, value, "unknown routing-replay mode", _fmt(REPLAY_MODES))
            return
    for key, value in modes.items():
        if key != own_key and value != "disabled":
            if own_key is None:
                yield ConfigIssue(
                    f"{ACTOR}.strategy", strategy, f"{key}={value} asks for routing replay, but verl's {strategy} "
                    "engine has none (routing_replay=R2|R3 works on model_engine=dp (FSDP, verl-stable) and "
                    "model_engine=megatron / veomni (verl's own))", _fmt(REPLAY_ENGINE_KEYS),
                )
            else:
                yield ConfigIssue(
                    key, value, f"actor_rollout_ref.actor.strategy={strategy} never reads this switch; its engine's "
                    f"is {own_key} (routing_replay=R2|R3 sets the right one for model_engine)", "disabled",
                )
    mode = replay_mode(config)
    if mode == "disabled" or own_key is None:
        return
    returns_routes = bool(_get(config, ROUTE_RETURN_KEY, False))
    if mode == "R3" and not returns_routes:
        yield ConfigIssue(
            ROUTE_RETURN_KEY, False, f"{own_key}=R3 replays the rollout engine's routes, but the rollout returns "
            "none (the routing_replay=R3 preset sets it; or use routing_replay=R2)", "true",
        )
    rollout_name = _get(config, f"{ROLLOUT}.name")  # None: still '???' in verl's default, verl asks for it
    if mode == "R3" and rollout_name is not None and rollout_name not in ROUTE_RETURNING_ROLLOUTS:
        yield ConfigIssue(
            f"{ROLLOUT}.name", rollout_name, "routing_replay=R3 needs a rollout that returns "
            "routed experts", _fmt(ROUTE_RETURNING_ROLLOUTS),
        )
    if mode == "R2" and returns_routes:
        yield ConfigIssue(
            ROUTE_RETURN_KEY, True, f"{own_key}=R2 records the training engine's routes in the π_old pass; rollout "
            "routes would arrive under the same batch field (use routing_replay=R3 for rollout routes)", "false",
        )
    if mode == "R2" and _get(config, f"{CORRECTION}.bypass_mode", False):
        yield ConfigIssue(
            f"{CORRECTION}.bypass_mode", True, f"{own_key}=R2 records routes in the π_old recomputation, which "
            "bypass mode skips", "false",
        )
    yield from _check_model_routes(config, mode, fsdp=strategy in FSDP_STRATEGIES)


def _check_model_routes(config, mode: str, fsdp: bool) -> Iterator[ConfigIssue]:
    """Read the model's config (local directories only: a hub id on a cluster is left to the engine, no hub traffic
    before Ray) and refuse models without routers; on FSDP also router types verl-stable has no adapter for."""
    from verl_stable.routing.hf import ADAPTERS, num_routed_experts

    path = _get(config, "actor_rollout_ref.model.path")
    hf_config = _load_model_config(path, bool(_get(config, "actor_rollout_ref.model.trust_remote_code", False)))
    if hf_config is None:
        return  # not readable locally (hub id on a cluster): the engine checks when it builds the model
    model_type = getattr(hf_config, "model_type", "?")
    if not num_routed_experts(hf_config):
        yield ConfigIssue(
            "routing_replay", mode, f"the model at actor_rollout_ref.model.path={path} (model_type {model_type}) is "
            "dense: it has no routed experts to replay; drop routing_replay (or set "
            f"{replay_mode_key(_get(config, f'{ACTOR}.strategy'))}=disabled)",
        )
        return
    if not fsdp:
        return  # Megatron / VeOmni build the model themselves and patch their own routers
    module = _modeling_module(model_type)
    if module is None:
        return
    known = {name for adapter in ADAPTERS for name in adapter.class_names}
    if not known & set(vars(module)):
        families = sorted({adapter.family for adapter in ADAPTERS})
        yield ConfigIssue(
            "routing_replay", mode, f"model_type {model_type} has a router type verl-stable cannot replay on FSDP "
            f"(supported router families: {', '.join(families)}); drop routing_replay for this model",
        )


def _load_model_config(path, trust_remote_code: bool):
    if not path or not Path(str(path)).expanduser().is_dir():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:  # unreadable here: the engine reports it with transformers' own message
        return None


def _modeling_module(model_type: str):
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except Exception:
        return None


def check_rollout(config) -> Iterator[ConfigIssue]:
    name = _get(config, f"{ROLLOUT}.name")
    if name != "hf_cpu":
        return  # vLLM / SGLang validate their own dtype and quantisation names
    from verl_stable.cpu.hf_engine import _DTYPES, SUPPORTED_QUANTIZATION

    dtype = _get(config, f"{ROLLOUT}.dtype")
    if str(dtype).lower().replace("torch.", "") not in _DTYPES:
        yield ConfigIssue(f"{ROLLOUT}.dtype", dtype, "not a precision the hf_cpu rollout runs", _fmt(sorted(_DTYPES)))
    quantization = _get(config, f"{ROLLOUT}.quantization")
    if quantization not in SUPPORTED_QUANTIZATION:
        yield ConfigIssue(
            f"{ROLLOUT}.quantization", quantization, "not a quantisation the hf_cpu rollout implements",
            _fmt(SUPPORTED_QUANTIZATION),
        )


def check_data(config) -> Iterator[ConfigIssue]:
    for key in ("data.train_files", "data.val_files"):
        files = _get(config, key)
        if files is None:
            if key == "data.train_files":
                yield ConfigIssue(key, None, "no training data given", "a parquet file or a list of them")
            continue
        for item in [files] if isinstance(files, str) else list(files):
            item = str(item)
            if "://" in item:
                continue  # hdfs:// and friends: verl copies them to local disk itself
            if not Path(item).expanduser().exists():
                yield ConfigIssue(key, item, "file not found")


def check_batch_sizes(config) -> Iterator[ConfigIssue]:
    """The divisibility verl's workers assert mid-run (engine micro-batching), checked up front."""
    if _get(config, f"{ACTOR}.use_dynamic_bsz", False):
        return
    n_gpus = int(_get(config, "trainer.n_gpus_per_node", 1)) * int(_get(config, "trainer.nnodes", 1))
    if _get(config, f"{ACTOR}.strategy") not in FSDP_STRATEGIES:
        return  # Megatron's data-parallel size depends on TP/PP/CP: verl's validate_config covers it
    dp = max(1, n_gpus // int(_get(config, f"{ACTOR}.ulysses_sequence_parallel_size", 1)))
    n = _get(config, f"{ROLLOUT}.n", 1)
    prompts = _get(config, "data.train_batch_size", 1)
    mini = _get(config, f"{ACTOR}.ppo_mini_batch_size")
    micro = _get(config, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
    if not all(isinstance(v, int) and v >= 1 for v in (n, prompts)):
        return  # reported by check_steps
    if isinstance(mini, int) and mini >= 1:
        if prompts % mini:
            yield ConfigIssue(
                f"{ACTOR}.ppo_mini_batch_size", mini, f"must divide data.train_batch_size={prompts} (prompts per "
                "step; the step makes train_batch_size / ppo_mini_batch_size updates)",
                _divisors(prompts),
            )
        elif isinstance(micro, int) and micro >= 1 and (mini * n) % (dp * micro):
            per_rank = mini * n // dp
            yield ConfigIssue(
                f"{ACTOR}.ppo_micro_batch_size_per_gpu", micro, f"must divide the {per_rank} responses each rank "
                f"gets per mini-batch (ppo_mini_batch_size={mini} × rollout.n={n} / {dp} ranks)",
                _divisors(per_rank),
            )
    log_micro = _get(config, f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu")
    per_rank = prompts * n // dp
    if isinstance(log_micro, int) and log_micro >= 1 and per_rank and per_rank % log_micro:
        yield ConfigIssue(
            f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", log_micro, f"must divide the {per_rank} responses each "
            f"rank scores per step (data.train_batch_size={prompts} × rollout.n={n} / {dp} ranks)",
            _divisors(per_rank),
        )


def check_verl(config) -> Iterator[ConfigIssue]:
    """verl's own ``validate_config`` (the one its main runs), its assertions turned into one line each."""
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        # it prints a success banner and notices, and warns about the critic it disables
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    except InstantiationException as exc:  # a key verl's dataclass does not have (a typo), or a wrong type
        cause = exc.__cause__ or exc
        where = str(exc).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(exc) else "?"
        yield ConfigIssue("verl validate_config", type(cause).__name__, f"{where}: {cause}".replace("\n", " "))
    except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
        yield ConfigIssue("verl validate_config", type(exc).__name__, str(exc) or repr(exc))


CHECKS = (check_steps, check_loss, check_clip, check_routing_replay, check_rollout, check_data, check_batch_sizes)


def validate_trainer_config(config: DictConfig, *, with_verl: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of a composed trainer config; return if none.

    ``with_verl`` also runs verl's own ``validate_config`` (only when ours found nothing: its messages assume
    the basics hold).
    """
    issues = [issue for check in CHECKS for issue in check(config)]
    if not issues and with_verl:
        issues = list(check_verl(config))
    if issues:
        raise ConfigError(issues)


def report(error: ConfigError, file=None) -> None:
    file = file or sys.stderr
    noun = "setting" if len(error.issues) == 1 else "settings"
    print(f"verl-stable: refused before start-up, {len(error.issues)} {noun} to fix:", file=file)
    for issue in error.issues:
        print(f"  {issue}", file=file)
    file.flush()


try:  # Hydra >= 1.1; verl requires 1.3
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class ValidateOnJobStart(_HydraCallback):
    """Hydra callback (``hydra.callbacks`` in verl-stable's trainer configs): validate before the job runs.

    Hydra calls it for whichever entry point composed our config, so verl's own ``main_ppo`` gets the same
    checks as ``verl_stable.main``. A refused config prints the issues and exits with status 2 — no Ray
    start, no traceback. ``VERL_STABLE_SKIP_VALIDATION=1`` turns it off (e.g. to reproduce a verl error).
    """

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if os.environ.get("VERL_STABLE_SKIP_VALIDATION", "").strip() in ("1", "true", "yes"):
            return
        task_config = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate_trainer_config(task_config)
        except ConfigError as error:
            report(error)
            sys.exit(EXIT_CONFIG_ERROR)


def compose_trainer_config(overrides: list[str], config_name: str = "minirl_trainer") -> DictConfig:
    """Compose a verl-stable trainer config as ``python -m verl_stable.main`` would (no Hydra run dir)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl_stable.config", version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def validate_overrides(overrides: list[str], config_name: str = "minirl_trainer") -> Optional[ConfigError]:
    """Compose and validate; return the error (for launchers that report it their own way) or None."""
    try:
        validate_trainer_config(compose_trainer_config(overrides, config_name))
    except ConfigError as error:
        return error
    return None
