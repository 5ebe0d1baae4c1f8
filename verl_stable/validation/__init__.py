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

The rules live in one module per subsystem (``losses``, ``routing``, ``rollout``, ``ranges``, ``names``,
``data``, ``model``, ``trainer``), each importing the allowed values and keys from the code that owns them;
this module only runs them (:data:`CHECKS`) and reports.

The pass fails closed: a check that raises is itself a refusal naming the check and the key it was reading,
and the other checks still run. ``VERL_STABLE_SKIP_VALIDATION=1`` is the only way past it (one line says so).

It runs automatically for every launch that composes verl-stable's trainer configs — ``python -m
verl_stable.main`` and ``python -m verl.trainer.main_ppo --config-path=pkg://verl_stable.config ...`` alike
— through a Hydra callback declared in those configs (:class:`ValidateOnJobStart`), which prints the
issues and exits with status 2 instead of starting Ray. Python users call :func:`validate_trainer_config`.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from verl_stable.routing.config import REPLAY_ENGINE_KEYS, ROUTE_RETURN_KEY, replay_mode, replay_mode_key
from verl_stable.validation.compose import compose_trainer_config
from verl_stable.validation.data import check_data, verl_default_sources
from verl_stable.validation.issues import (
    EXIT_CONFIG_ERROR,
    SKIP_ENV,
    ConfigError,
    ConfigIssue,
    Reading,
    announce_skip,
    skip_requested,
)
from verl_stable.validation.losses import ROLLOUT_IS_LEVELS, check_clip, check_loss
from verl_stable.validation.model import check_model, check_model_shape
from verl_stable.validation.names import FREE_FORM, check_added_keys, check_registries
from verl_stable.validation.ranges import RANGES, Range, check_finite, check_ranges, check_steps
from verl_stable.validation.rollout import check_rollout
from verl_stable.validation.routing import ROUTE_RETURNING_ROLLOUTS, check_routing_replay, check_unrouted_tolerance
from verl_stable.validation.trainer import (
    GROUP_ESTIMATORS,
    check_batch_sizes,
    check_meaningless,
    check_sampler,
    check_verl,
)

__all__ = [
    "CHECKS", "EXIT_CONFIG_ERROR", "FREE_FORM", "GROUP_ESTIMATORS", "RANGES", "REPLAY_ENGINE_KEYS",
    "ROLLOUT_IS_LEVELS", "ROUTE_RETURNING_ROLLOUTS", "ROUTE_RETURN_KEY", "SKIP_ENV", "ConfigError", "ConfigIssue",
    "Range", "ValidateOnJobStart", "announce_skip", "check_added_keys", "check_batch_sizes", "check_clip",
    "check_data", "check_finite", "check_loss", "check_meaningless", "check_sampler", "check_model", "check_model_shape",
    "check_ranges", "check_registries", "check_rollout", "check_routing_replay", "check_steps",
    "check_unrouted_tolerance", "check_verl", "compose_trainer_config", "replay_mode", "replay_mode_key", "report",
    "report_warnings", "run_checks", "skip_requested", "validate_overrides", "validate_trainer_config",
    "verl_default_sources",
]

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
    check_sampler,
)


def _guarded(check, config, *args) -> list[ConfigIssue]:
    """The issues of one check; a check that raises becomes a refusal naming it and the key it was reading."""
    Reading.key = None
    try:
        return list(check(config, *args))
    except Exception as exc:  # fail closed: an unverified setting is never launched
        key = Reading.key or f"check {check.__name__}"
        value = OmegaConf.select(config, key, default=None) if Reading.key else type(exc).__name__
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
