"""One validation pass over a composed trainer config, before Ray starts.

Everything verl-stable owns or depends on is checked here, in seconds, on the driver: the loss variant ×
``loss_agg_mode`` × ``algorithm.rollout_correction`` (level, threshold, bypass), clip ratios, routing
replay × strategy × route return × the model's family (read from its config), the rollout's precision,
every number verl reads that has a valid range (:data:`RANGES`, one row per key) and NaN / inf anywhere,
``loss_mode`` / ``adv_estimator`` against verl's registries, ``+``-added keys verl's config does not have, the
data files (opened: schema, rows, the columns the dataset and the reward read, a scorer for every
``data_source``), the model directory (its config read), settings that would train nothing, the batch-size
divisibility verl's workers assert later — and then verl's own ``validate_config``, with its assertion turned
into a message. Every problem becomes one :class:`ConfigIssue` (key, value, what is wrong, what is allowed);
all of them are reported together.

The pass fails closed: a check that raises is itself a refusal naming the check and the key it was reading,
and the other checks still run. ``VERL_STABLE_SKIP_VALIDATION=1`` is the only way past it (one line says so).

It runs automatically for every launch that composes verl-stable's trainer configs — ``python -m
verl_stable.main`` and ``python -m verl.trainer.main_ppo --config-path=pkg://verl_stable.config ...`` alike
— through a Hydra callback declared in those configs (:class:`ValidateOnJobStart`), which prints the
issues and exits with status 2 instead of starting Ray. Python users call :func:`validate_trainer_config`.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import inspect
import io
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

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


#: The only way past the pass; every entry point honours it and says so in one line.
SKIP_ENV = "VERL_STABLE_SKIP_VALIDATION"


@dataclass(frozen=True)
class ConfigIssue:
    """One refused setting: ``key=value: problem (allowed: ...)``; ``warning=True``: reported, not refused."""

    key: str
    value: Any
    problem: str
    allowed: str = ""
    warning: bool = False

    def __str__(self) -> str:
        value = "null" if self.value is None else self.value
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.key}={value}: {self.problem}{allowed}"


class ConfigError(ValueError):
    """A composed trainer config that would fail (or silently misbehave) once training starts."""

    def __init__(self, issues: list[ConfigIssue], warnings: Iterable[ConfigIssue] = ()):
        self.issues = list(issues)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def keys(self) -> list[str]:
        return [issue.key for issue in self.issues]


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes")


def announce_skip(file=None) -> None:
    print(f"verl-stable: {SKIP_ENV}=1: the pre-launch check was skipped; mistakes surface after start-up",
          file=file or sys.stderr, flush=True)


class _Reading:
    """The key a check read last: a check that raises is refused naming it (the guarded pass)."""

    key: Optional[str] = None


def _get(config: DictConfig, key: str, default: Any = None) -> Any:
    _Reading.key = key
    value = OmegaConf.select(config, key, default=default)
    return default if value is None else value


_MISSING = object()


def _select(config: DictConfig, key: str) -> Any:
    """The value at ``key`` (None kept), or ``_MISSING`` where the composed config has no such key."""
    _Reading.key = key
    return OmegaConf.select(config, key, default=_MISSING, throw_on_missing=False)


def _nearest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=n, cutoff=0.6)


def _divisors(n: int) -> str:
    return _fmt(d for d in range(1, n + 1) if n % d == 0)


def _fmt(values) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)


# ------------------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """One value verl reads and its valid range: ``Range("trainer.nnodes", "int >= 1")``.

    ``spec`` is ``"<int|float>"`` alone (any finite value), ``"<kind> <op> <bound>"`` (``>``, ``>=``, ``<=``) or
    ``"<kind> in [a, b]"`` (brackets say which ends are included). ``nullable``: null is allowed (verl derives
    the value); ``also``: sentinels allowed outside the range (top_k=-1: off). A key the composed config does
    not have (another engine's block) is skipped.
    """

    key: str
    spec: str
    why: str = ""
    nullable: bool = False
    also: tuple = ()

    def _parse(self):
        match = re.fullmatch(r"(int|float)(?: (>=|>|<=) (\S+)| in ([\[(])(\S+), (\S+)([\])]))?", self.spec)
        if match is None:
            raise ValueError(f"bad range spec {self.spec!r} for {self.key}")
        kind, op, bound, left, low, high, right = match.groups()
        if op == ">=":
            return kind, float(bound), None, True, True
        if op == ">":
            return kind, float(bound), None, False, True
        if op == "<=":
            return kind, None, float(bound), True, True
        if left:
            return kind, float(low), float(high), left == "[", right == "]"
        return kind, None, None, True, True

    def allowed(self) -> str:
        kind, _, _, _, _ = self._parse()
        noun = "an integer" if kind == "int" else "a finite number"
        rest = self.spec[len(kind):].strip()
        extra = [*(["null"] if self.nullable else []), *(str(v) for v in self.also)]
        return f"{noun} {rest}".strip() + (f", or {', '.join(extra)}" if extra else "")

    def problem(self, value) -> Optional[str]:
        if value is None:
            return None if self.nullable else "must be set"
        if value in self.also and not isinstance(value, bool):
            return None
        kind, low, high, low_in, high_in = self._parse()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "not a finite number"
        if kind == "int" and not isinstance(value, int):
            return "must be an integer"
        if low is not None and (value < low or (value == low and not low_in)):
            return "out of range" + (f": {self.why}" if self.why else "")
        if high is not None and (value > high or (value == high and not high_in)):
            return "out of range" + (f": {self.why}" if self.why else "")
        return None


def _optim(prefix: str) -> list[Range]:
    return [
        Range(f"{prefix}.lr", "float > 0", "a learning rate of 0 (or below) trains nothing"),
        Range(f"{prefix}.weight_decay", "float >= 0"),
        Range(f"{prefix}.clip_grad", "float > 0", "0 scales every gradient to 0", nullable=True),
        Range(f"{prefix}.lr_warmup_steps_ratio", "float in [0, 1]", "a fraction of the training steps"),
        Range(f"{prefix}.lr_warmup_steps", "int >= -1", "-1 uses lr_warmup_steps_ratio", nullable=True),
        Range(f"{prefix}.min_lr_ratio", "float in [0, 1]", nullable=True),
        Range(f"{prefix}.num_cycles", "float >= 0"),
    ]


def _sampling(prefix: str) -> list[Range]:
    return [
        Range(f"{prefix}.temperature", "float >= 0", "0 is greedy decoding"),
        Range(f"{prefix}.top_p", "float in (0, 1]"),
        Range(f"{prefix}.top_k", "int >= -1", "-1 (or 0) turns top-k off"),
        Range(f"{prefix}.n", "int >= 1", "responses per prompt"),
    ]


def _megatron(prefix: str) -> list[Range]:
    sizes = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
             "expert_model_parallel_size")
    return [
        *(Range(f"{prefix}.megatron.{size}", "int >= 1") for size in sizes),
        Range(f"{prefix}.megatron.expert_tensor_parallel_size", "int >= 1", nullable=True),
        Range(f"{prefix}.megatron.virtual_pipeline_model_parallel_size", "int >= 1", nullable=True),
    ]


_STEP_KEYS = ("trainer.total_training_steps", "trainer.total_epochs", f"{ACTOR}.ppo_epochs", f"{ROLLOUT}.n",
              "data.train_batch_size")

#: Every value verl reads that has a valid range, one row per key (a new one is one line).
RANGES: tuple[Range, ...] = (
    # steps and batches
    Range("trainer.total_training_steps", "int >= 1", nullable=True),  # null: verl derives it from the epochs
    Range("trainer.total_epochs", "int >= 1"),
    Range("trainer.critic_warmup", "int >= 0"),
    Range("trainer.save_freq", "int"),
    Range("trainer.test_freq", "int"),
    Range("data.train_batch_size", "int >= 1", "prompts per step"),
    Range("data.val_batch_size", "int >= 1", nullable=True),
    Range("data.max_prompt_length", "int >= 1"),
    Range("data.max_response_length", "int >= 1", "a response of 0 tokens has nothing to train on"),
    Range(f"{ACTOR}.ppo_epochs", "int >= 1", "0 epochs never update the policy"),
    Range(f"{ACTOR}.ppo_mini_batch_size", "int >= 1"),
    Range(f"{ACTOR}.ppo_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range(f"{ACTOR}.ppo_max_token_len_per_gpu", "int >= 1"),
    Range(f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range(f"{ROLLOUT}.prompt_length", "int >= 1"),
    Range(f"{ROLLOUT}.response_length", "int >= 1"),
    # optimisation
    *_optim(f"{ACTOR}.optim"),
    *_optim("critic.optim"),
    Range(f"{ACTOR}.grad_clip", "float > 0", "0 scales every gradient to 0", nullable=True),
    Range("critic.grad_clip", "float > 0", "0 scales every gradient to 0", nullable=True),
    Range(f"{ACTOR}.clip_ratio_c", "float > 1", "verl's dual-clip bound must exceed 1"),
    Range(f"{ACTOR}.entropy_coeff", "float"),
    Range(f"{ACTOR}.kl_loss_coef", "float >= 0"),
    Range("critic.cliprange_value", "float >= 0"),
    Range("algorithm.gamma", "float in [0, 1]"),
    Range("algorithm.lam", "float in [0, 1]"),
    Range("algorithm.kl_ctrl.kl_coef", "float >= 0"),
    # sampling (training rollouts and validation)
    *_sampling(ROLLOUT),
    *_sampling(f"{ROLLOUT}.val_kwargs"),
    Range(f"{ROLLOUT}.gpu_memory_utilization", "float in (0, 1]"),
    # parallel sizes and devices
    Range("trainer.nnodes", "int >= 1"),
    Range("trainer.n_gpus_per_node", "int >= 1", "devices per node (the CPU backend counts one)"),
    Range(f"{ACTOR}.ulysses_sequence_parallel_size", "int >= 1"),
    Range(f"{ACTOR}.fsdp_config.ulysses_sequence_parallel_size", "int >= 1"),
    Range("actor_rollout_ref.ref.ulysses_sequence_parallel_size", "int >= 1"),
    Range("critic.ulysses_sequence_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.tensor_model_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.data_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.expert_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.pipeline_model_parallel_size", "int >= 1"),
    *_megatron(ACTOR),
    *_megatron("actor_rollout_ref.ref"),
    *_megatron("critic"),
)


def _interpolated(config, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None) if parent else config
    return OmegaConf.is_dict(node) and leaf in node and OmegaConf.is_interpolation(node, leaf)


def _check_rows(config, rows: Iterable[Range]) -> Iterator[ConfigIssue]:
    for row in rows:
        value = _select(config, row.key)
        if value is _MISSING or _interpolated(config, row.key):
            continue  # another engine's block; or a copy of a key checked where it is set
        problem = row.problem(value)
        if problem is not None:
            yield ConfigIssue(row.key, value, problem, row.allowed())


def check_ranges(config) -> Iterator[ConfigIssue]:
    yield from _check_rows(config, RANGES)


def check_steps(config) -> Iterator[ConfigIssue]:
    """The step and batch counts alone (a subset of :func:`check_ranges`)."""
    yield from _check_rows(config, (row for row in RANGES if row.key in _STEP_KEYS))


def _leaves(node, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if OmegaConf.is_dict(node):
        for key in node.keys():
            yield from _leaves(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
    elif OmegaConf.is_list(node):
        for index in range(len(node)):
            yield from _leaves(node._get_node(index), f"{prefix}[{index}]")
    else:
        yield prefix, node


def check_finite(config) -> Iterator[ConfigIssue]:
    """NaN / inf anywhere in the config: nothing verl reads as a float means either."""
    for key, node in _leaves(config):
        _Reading.key = key
        if node._is_interpolation():
            continue  # a copy: the key it copies is reported
        value = node._value()
        if isinstance(value, float) and not math.isfinite(value):
            yield ConfigIssue(key, value, "not a finite number (it would reach the loss or the optimizer as "
                              "NaN)", "a finite number")


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
ROUTER_REPLAY_CONFIG = "verl_stable.integration.fsdp_engine.RouterReplayConfig"


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


# ------------------------------------------------------------------------------------------- data + model
#: verl's registered reward managers all read ``reward_model.ground_truth`` and the data-source column.
_GROUND_TRUTH = ("reward_model", "ground_truth")


def _data_files(config, key: str) -> list[str]:
    files = _get(config, key)
    if files is None:
        return []
    return [str(item) for item in ([files] if isinstance(files, str) else list(files))]


def verl_default_sources() -> tuple[frozenset, tuple]:
    """The ``data_source`` values verl's ``default_compute_score`` scores, read from its code: the names it
    compares with (``==`` / ``in [...]``) and the prefixes it accepts (``startswith``)."""
    from verl.utils import reward_score

    tree = ast.parse(inspect.getsource(reward_score.default_compute_score))
    names, prefixes = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "data_source":
            for comparator in node.comparators:
                names.update(c.value for c in ast.walk(comparator) if isinstance(c, ast.Constant)
                             and isinstance(c.value, str))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "data_source"):
            prefixes.extend(a.value for a in node.args if isinstance(a, ast.Constant))
    return frozenset(names), tuple(prefixes)


def _reward_function_key(config) -> Optional[str]:
    for key in ("reward.custom_reward_function", "custom_reward_function"):  # verl 0.9.1, then the legacy spot
        if _get(config, f"{key}.path"):
            return key
    return None


def _scorer(config) -> tuple[str, Any]:
    """(who scores, the data sources it takes): (key, tuple | None = any | "unknown"), or verl's default."""
    key = _reward_function_key(config)
    if key is None:
        return "verl's default_compute_score", verl_default_sources()
    from verl.utils.import_utils import load_module

    path, name = str(_get(config, f"{key}.path")), _get(config, f"{key}.name", "compute_score")
    if "://" not in path and not Path(path).expanduser().is_file():
        raise _RewardFunctionError(ConfigIssue(f"{key}.path", path, "file not found"))
    _Reading.key = f"{key}.path"
    module = load_module(path)
    if not callable(getattr(module, str(name), None)):
        raise _RewardFunctionError(ConfigIssue(f"{key}.name", name, f"{path} defines no function {name}"))
    return f"{key}.path={path}", getattr(module, "SUPPORTED_DATA_SOURCES", "unknown")


class _RewardFunctionError(Exception):
    def __init__(self, issue: ConfigIssue):
        super().__init__(str(issue))
        self.issue = issue


def _unscored(sources: set, supported) -> list:
    if supported is None:
        return []
    if isinstance(supported, tuple) and len(supported) == 2 and isinstance(supported[0], frozenset):
        names, prefixes = supported
        return sorted(s for s in sources if s not in names and not str(s).startswith(prefixes))
    return sorted(s for s in sources if s not in tuple(supported))


def _check_parquet(config, key: str, item: str, scorer) -> Iterator[ConfigIssue]:
    import pyarrow.parquet as pq

    path = Path(item).expanduser()
    if path.is_dir():
        yield ConfigIssue(key, item, "a directory; verl reads one parquet / json file per entry")
        return
    if path.stat().st_size == 0:
        yield ConfigIssue(key, item, "empty file (0 bytes)", "a parquet file with at least one row")
        return
    if path.suffix in (".json", ".jsonl"):
        yield ConfigIssue(key, item, "a json file: its columns are not checked before start-up", warning=True)
        return
    if path.suffix != ".parquet":
        yield ConfigIssue(key, item, "verl reads only .parquet / .json / .jsonl files (by the name's ending)")
        return
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        yield ConfigIssue(key, item, f"not a readable parquet file ({type(exc).__name__}: {exc})".replace("\n", " "))
        return
    rows, columns = parquet.metadata.num_rows, parquet.schema_arrow
    if rows == 0:
        yield ConfigIssue(key, item, "no rows", "a parquet file with at least one row")
        return
    if key == "data.train_files":
        batch = _get(config, "data.train_batch_size")
        if isinstance(batch, int) and 0 < batch and rows < batch and len(_data_files(config, key)) == 1:
            yield ConfigIssue(
                key, item, f"{rows} rows, fewer than data.train_batch_size={batch}: verl drops the incomplete "
                "batch, so the run would have no training step", f"data.train_batch_size <= {rows}",
            )
    prompt_key = _get(config, "data.prompt_key", "prompt")
    if prompt_key not in columns.names:
        yield ConfigIssue(
            key, item, f"no column {prompt_key!r} (data.prompt_key={prompt_key}); the file has "
            f"{', '.join(columns.names)}", "data.prompt_key=<one of the columns>, or a file with that column",
        )
    if _get(config, "reward.reward_manager.source", "register") != "register":
        return  # a custom reward manager reads what it likes
    source_key = _get(config, "data.reward_fn_key", "data_source")
    reward_type = columns.field(_GROUND_TRUTH[0]).type if _GROUND_TRUTH[0] in columns.names else None
    if reward_type is None or not hasattr(reward_type, "names") or _GROUND_TRUTH[1] not in reward_type.names:
        yield ConfigIssue(
            key, item, "no reward_model.ground_truth column (a struct column reward_model with a field ground_truth)"
            ": verl's reward managers pass it to the scorer", "rows like {'reward_model': {'ground_truth': ...}}",
        )
    if source_key not in columns.names:
        yield ConfigIssue(key, item, f"no column {source_key!r} (data.reward_fn_key): the reward needs each row's "
                          "data source")
        return
    who, supported = scorer
    if supported == "unknown":
        yield ConfigIssue(key, item, f"{who} declares no SUPPORTED_DATA_SOURCES: whether it scores this file's "
                          "data sources could not be checked", warning=True)
        return
    sources = set(parquet.read(columns=[source_key]).column(0).to_pylist())
    missing = _unscored(sources, supported)
    if missing:
        known = sorted(supported[0]) if isinstance(supported[0], frozenset) else list(supported)
        yield ConfigIssue(
            key, item, f"{source_key} {', '.join(map(repr, missing[:5]))} has no scorer in {who}",
            f"{', '.join(map(str, known[:12]))}{', ...' if len(known) > 12 else ''}; or set "
            "reward.custom_reward_function.path / .name to a scorer for it",
        )


def check_data(config) -> Iterator[ConfigIssue]:
    """Every train / val file opened: schema, rows, the columns the dataset and the reward need."""
    scorer = None
    for key in ("data.train_files", "data.val_files"):
        files = _data_files(config, key)
        if not files and key == "data.train_files":
            yield ConfigIssue(key, None, "no training data given", "a parquet file or a list of them")
        for item in files:
            if "://" in item:
                continue  # hdfs:// and friends: verl copies them to local disk itself
            if not Path(item).expanduser().exists():
                yield ConfigIssue(key, item, "file not found")
                continue
            if scorer is None:
                try:
                    scorer = _scorer(config)
                except _RewardFunctionError as exc:
                    yield exc.issue
                    scorer = ("", None)  # reported once; the files are still checked
            yield from _check_parquet(config, key, item, scorer)


#: A hub id: ``org/name``, nothing more (a local path that does not exist has more parts, or starts with / . ~).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_topk", "moe_top_k", "top_k")


def check_model(config) -> Iterator[ConfigIssue]:
    """The actor's model: a local directory is read (its config, the router's top-k within its experts); a hub id
    is named as such and left to the workers (no hub traffic before Ray)."""
    key = "actor_rollout_ref.model.path"
    path = _get(config, key)
    if path is None:
        yield ConfigIssue(key, None, "no model given", "a model directory or a hub id org/name")
        return
    local = Path(str(path)).expanduser()
    if not local.exists():
        if _HUB_ID.fullmatch(str(path)):
            yield ConfigIssue(key, path, "not a directory here: taken as a hub id, not read before start-up (the "
                              "workers download it)", warning=True)
        else:
            yield ConfigIssue(key, path, "directory not found", "a model directory (config.json) or a hub id org/name")
        return
    if not local.is_dir() or not (local / "config.json").is_file():
        yield ConfigIssue(key, path, "not a model directory: no config.json in it")
        return
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(
            str(local), local_files_only=True,
            trust_remote_code=bool(_get(config, "actor_rollout_ref.model.trust_remote_code", False)),
        )
    except Exception as exc:
        yield ConfigIssue(key, path, f"its config.json does not load ({type(exc).__name__}: {exc})".replace("\n", " "))
        return
    text = getattr(hf_config, "text_config", None) or hf_config
    experts = next((getattr(text, a) for a in _EXPERT_COUNTS if isinstance(getattr(text, a, None), int)), None)
    top_k = next((getattr(text, a) for a in _TOP_K if isinstance(getattr(text, a, None), int)), None)
    if experts is not None and top_k is not None and not 1 <= top_k <= max(experts, 1) and experts > 0:
        yield ConfigIssue(
            key, path, f"its config routes each token to {top_k} experts (num_experts_per_tok) of {experts}",
            f"1 <= num_experts_per_tok <= {experts}",
        )


def check_model_shape(config) -> Iterator[ConfigIssue]:
    """The run against its model's config.json (a local directory, or the copy shipped for a known hub id):
    context vs positions, the routes' shape, sequence parallelism the family supports."""
    # imported here: the model-file checks live beside the shipped model configs, which import this module
    from verl_stable.apps.recipes import checks

    for check in checks.CHECKS:
        yield from check(config)


def _estimator_names() -> dict:
    from verl.trainer.ppo import core_algos

    return core_algos.ADV_ESTIMATOR_REGISTRY


#: verl's estimators whose baseline is the other responses of the same prompt (verl falls back to a baseline of 0
#: for a one-response group, so ``rollout.n=1`` is no longer the algorithm asked for).
GROUP_ESTIMATORS = ("grpo", "grpo_vectorized", "grpo_passk", "rloo", "rloo_vectorized", "opo", "gpg", "gdpo",
                    "reinforce_plus_plus_baseline", "optimal_token_baseline", "tir_optimal_token_baseline")


def check_registries(config) -> Iterator[ConfigIssue]:
    """``loss_mode`` and ``adv_estimator`` against the names verl (with verl-stable's plugin) has registered."""
    import verl_stable.plugin  # noqa: F401  (registers verl-stable's losses, as verl's entry point does)
    from verl.trainer.ppo import core_algos

    for key, registry in ((LOSS_MODE_KEY, core_algos.POLICY_LOSS_REGISTRY), ("algorithm.adv_estimator",
                                                                           _estimator_names())):
        value = _get(config, key)
        if value is not None and str(value) not in registry:
            near = _nearest(str(value), registry)
            hint = f"nearest: {', '.join(near)}; " if near else ""
            yield ConfigIssue(key, value, "not a name verl has registered", f"{hint}all: {_fmt(sorted(registry))}")


#: Rollout settings that decode greedily (the same response n times).
_GREEDY = ((f"{ROLLOUT}.temperature", 0), (f"{ROLLOUT}.top_k", 1), (f"{ROLLOUT}.do_sample", False))


def _same(value, target) -> bool:
    return value is not None and isinstance(value, bool) == isinstance(target, bool) and value == target


def check_meaningless(config) -> Iterator[ConfigIssue]:
    """Settings that run but train nothing, or not what was asked for."""
    estimator = str(_get(config, "algorithm.adv_estimator", ""))
    n = _get(config, f"{ROLLOUT}.n")
    if estimator in GROUP_ESTIMATORS and n == 1:
        yield ConfigIssue(
            f"{ROLLOUT}.n", 1, f"algorithm.adv_estimator={estimator} compares each response with the other "
            "responses to the same prompt; with one response per prompt there is no group (verl then uses a "
            "baseline of 0 and the raw reward as advantage)", "rollout.n >= 2 (the paper's recipes use 8 or 16)",
        )
    greedy = next(((key, value) for key, value in _GREEDY if _same(_get(config, key), value)), None)
    if estimator in GROUP_ESTIMATORS and isinstance(n, int) and n > 1 and greedy is not None:
        yield ConfigIssue(
            greedy[0], greedy[1], f"greedy rollouts give the {n} responses to a prompt the same text, so every "
            f"group-relative advantage ({estimator}) is 0 and nothing is learned",
            "sampling: temperature > 0, top_k != 1, do_sample=true",
        )
    warmup, steps = _get(config, "trainer.critic_warmup", 0), _get(config, "trainer.total_training_steps")
    if isinstance(warmup, int) and isinstance(steps, int) and not isinstance(warmup, bool) and warmup > steps:
        yield ConfigIssue(
            "trainer.critic_warmup", warmup, f"verl updates the actor only from step critic_warmup on; with "
            f"trainer.total_training_steps={steps} the actor is never updated", f"<= {steps}",
        )
    if _get(config, f"{ACTOR}.use_kl_loss", False) and _get(config, f"{ACTOR}.kl_loss_coef") == 0:
        yield ConfigIssue(f"{ACTOR}.kl_loss_coef", 0, "use_kl_loss=true with a coefficient of 0 computes the "
                          "reference policy's log-probs for nothing", "> 0, or use_kl_loss=false", warning=True)


def check_batch_sizes(config) -> Iterator[ConfigIssue]:
    """The divisibility verl's workers assert mid-run (engine micro-batching), checked up front."""
    if _get(config, f"{ACTOR}.use_dynamic_bsz", False):
        return
    sizes = [_get(config, k, 1) for k in ("trainer.n_gpus_per_node", "trainer.nnodes",
                                           f"{ACTOR}.ulysses_sequence_parallel_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        return  # reported by check_ranges
    if _get(config, f"{ACTOR}.strategy") not in FSDP_STRATEGIES:
        return  # Megatron's data-parallel size depends on TP/PP/CP: verl's validate_config covers it
    dp = max(1, sizes[0] * sizes[1] // sizes[2])
    n = _get(config, f"{ROLLOUT}.n", 1)
    prompts = _get(config, "data.train_batch_size", 1)
    mini = _get(config, f"{ACTOR}.ppo_mini_batch_size")
    micro = _get(config, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
    if not all(isinstance(v, int) and v >= 1 for v in (n, prompts)):
        return  # reported by check_ranges
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


#: The pass, in order: every check is ``check(config) -> Iterator[ConfigIssue]``; adding one is one line here.
CHECKS: tuple[Callable[[DictConfig], Iterator[ConfigIssue]], ...] = (
    check_ranges,
    check_finite,
    check_registries,
    check_loss,
    check_clip,
    check_routing_replay,
    check_rollout,
    check_data,
    check_model,
    check_model_shape,
    check_meaningless,
    check_batch_sizes,
)

#: Path segments under which verl passes keys through (kwargs, env vars, model config overrides): a ``+``-added
#: key there is the user's to choose.
FREE_FORM = ("ray_kwargs", "override_config", "env_vars", "runtime_env", "engine_kwargs", "reward_kwargs",
             "override_transformer_config", "extra")


def _is_free_form(segments: list[str]) -> bool:
    return any(seg in FREE_FORM or seg.endswith("kwargs") for seg in segments)


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
        _Reading.key = key
        node = OmegaConf.select(config, parent, default=None)
        if not OmegaConf.is_dict(node):
            continue
        siblings = [k for k in node.keys() if f"{parent}.{k}" not in added]
        if not siblings:
            continue  # the whole block is new (e.g. an extra logger's settings): nothing to compare with
        near = _nearest(leaf, siblings)
        yield ConfigIssue(
            key, OmegaConf.select(config, key), f"'+' added a key verl's config does not have under {parent}: "
            "verl never reads it", f"did you mean {', '.join(f'{parent}.{k}' for k in near)}" if near
            else f"the keys of {parent} (python -m verl_stable.main --cfg job)",
        )


def _guarded(check, config, *args) -> list[ConfigIssue]:
    """The issues of one check; a check that raises becomes a refusal naming it and the key it was reading."""
    _Reading.key = None
    try:
        return list(check(config, *args))
    except Exception as exc:  # fail closed: an unverified setting is never launched
        key = _Reading.key or f"check {check.__name__}"
        value = OmegaConf.select(config, key, default=None) if _Reading.key else type(exc).__name__
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        return [ConfigIssue(
            key, value, f"{check.__name__} could not check it ({message[:300]}); refused rather than launched "
            "unchecked", f"a valid value, or {SKIP_ENV}=1 to launch without the check",
        )]


def run_checks(config: DictConfig, overrides: Iterable[str] = (), *, with_verl: bool = True,
               checks: Optional[Iterable[Callable]] = None) -> list[ConfigIssue]:
    """Every check's issues (refusals and warnings), each check guarded (``checks``: :data:`CHECKS` unless
    given); a key one check refused is not refused again by a later one."""
    issues = [issue for check in (CHECKS if checks is None else checks) for issue in _guarded(check, config)]
    issues += _guarded(check_added_keys, config, list(overrides))
    if with_verl and not any(not issue.warning for issue in issues):
        issues += _guarded(check_verl, config)
    seen, unique = set(), []
    for issue in issues:
        if issue.key in seen and not issue.warning:
            continue
        seen.add(issue.key)
        unique.append(issue)
    return unique


def validate_trainer_config(config: DictConfig, *, with_verl: bool = True, overrides: Iterable[str] = (),
                            checks: Optional[Iterable[Callable]] = None) -> list[ConfigIssue]:
    """Raise :class:`ConfigError` listing every problem of a composed trainer config; return the warnings if none.

    ``with_verl`` also runs verl's own ``validate_config`` (only when ours found nothing: its messages assume
    the basics hold). ``overrides``: the command line's, for the ``+``-added-key check.
    """
    issues = run_checks(config, overrides, with_verl=with_verl, checks=checks)
    errors = [issue for issue in issues if not issue.warning]
    notes = [issue for issue in issues if issue.warning]
    if errors:
        raise ConfigError(errors, notes)
    return notes


def report(error: ConfigError, file=None) -> None:
    file = file or sys.stderr
    noun = "setting" if len(error.issues) == 1 else "settings"
    print(f"verl-stable: refused before start-up, {len(error.issues)} {noun} to fix:", file=file)
    for issue in error.issues:
        print(f"  {issue}", file=file)
    report_warnings(error.warnings, file=file)


def report_warnings(notes: Iterable[ConfigIssue], file=None) -> None:
    file = file or sys.stderr
    for issue in notes:
        print(f"verl-stable: warning: {issue}", file=file)
    file.flush()


try:  # Hydra >= 1.1; verl requires 1.3
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class ValidateOnJobStart(_HydraCallback):
    """Hydra callback (``hydra.callbacks`` in verl-stable's trainer configs): validate before the job runs.

    Hydra calls it for whichever entry point composed our config, so verl's own ``main_ppo`` gets the same
    checks as ``verl_stable.main``. It runs at ``on_run_start``, before Hydra creates the run directory, so a
    refused launch leaves nothing behind (``on_job_start`` covers ``--multirun``'s jobs). A refused config
    prints the issues and exits with status 2 — no Ray start, no traceback. Hydra turns an exception of a
    callback into a warning and carries on, so nothing may escape here: anything unexpected is a refusal too.
    ``VERL_STABLE_SKIP_VALIDATION=1`` turns it off (e.g. to reproduce a verl error) and says so.
    """

    def __init__(self) -> None:
        self._checked_run = False

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._checked_run = True
        self._validate(config)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if not self._checked_run:  # a --multirun job: each has its own config
            self._validate(config)

    def _validate(self, config: DictConfig) -> None:
        if skip_requested():
            announce_skip()
            return
        try:
            overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
            task_config = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            notes = validate_trainer_config(task_config, overrides=overrides)
        except ConfigError as error:
            report(error)
            sys.exit(EXIT_CONFIG_ERROR)
        except Exception as exc:  # noqa: BLE001 -- fail closed whatever went wrong
            report(ConfigError([ConfigIssue("check", type(exc).__name__, f"the pre-launch check failed: {exc}",
                                            f"{SKIP_ENV}=1 to launch without it")]))
            sys.exit(EXIT_CONFIG_ERROR)
        report_warnings(notes)


def compose_trainer_config(overrides: list[str], config_name: str = "minirl_trainer") -> DictConfig:
    """Compose a verl-stable trainer config as ``python -m verl_stable.main`` would (no Hydra run dir)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl_stable.config", version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def validate_overrides(overrides: list[str], config_name: str = "minirl_trainer", *,
                       checks: Optional[Iterable[Callable]] = None) -> Optional[ConfigError]:
    """Compose and validate; return the error (for launchers that report it their own way) or None.

    Honours ``VERL_STABLE_SKIP_VALIDATION`` like the Hydra callback (one line says the check was skipped)."""
    if skip_requested():
        announce_skip(sys.__stderr__)  # the caller may be silencing library output: this line must show
        return None
    config = compose_trainer_config(overrides, config_name)
    try:
        notes = validate_trainer_config(config, overrides=overrides, checks=checks)
    except ConfigError as error:
        return error
    report_warnings(notes, sys.__stderr__)
    return None
