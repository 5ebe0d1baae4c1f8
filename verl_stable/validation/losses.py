"""The loss variant × ``loss_agg_mode`` × ``algorithm.rollout_correction`` (level, threshold, bypass) and the
clip ratios. What each variant accepts is declared once, in :data:`verl_stable.losses.LOSS_VARIANTS`, and read
here as the loss functions read it; the clip range is the loss functions' own rule."""

from __future__ import annotations

from typing import Iterator

from verl_stable.losses import AGG_MODE_KEY, LOSS_MODE_KEY, LOSS_VARIANTS, ROLLOUT_IS_KEY, check_clip_range
from verl_stable.validation.issues import ACTOR, CORRECTION, ROLLOUT, ConfigIssue, fmt, get

ROLLOUT_IS_LEVELS = ("token", "sequence", None)


def check_loss(config) -> Iterator[ConfigIssue]:
    loss_mode = get(config, LOSS_MODE_KEY, "vanilla")
    variant = LOSS_VARIANTS.get(loss_mode)
    if variant is None:
        return  # verl's own losses: verl checks them
    agg_mode = get(config, AGG_MODE_KEY)
    if agg_mode not in variant.agg_modes:
        yield ConfigIssue(
            AGG_MODE_KEY, agg_mode, f"{LOSS_MODE_KEY}={loss_mode} ({variant.summary}) does not aggregate this way",
            fmt(variant.agg_modes),
        )
    level = get(config, ROLLOUT_IS_KEY)
    if level not in ROLLOUT_IS_LEVELS:
        yield ConfigIssue(ROLLOUT_IS_KEY, level, "unknown importance-sampling level", fmt(ROLLOUT_IS_LEVELS))
    elif level not in variant.rollout_is:
        yield ConfigIssue(
            ROLLOUT_IS_KEY, level,
            f"{LOSS_MODE_KEY}={loss_mode} ({variant.summary}) needs another training–inference weight",
            fmt(variant.rollout_is),
        )
    if level is not None:
        yield from _check_is_threshold(get(config, f"{CORRECTION}.rollout_is_threshold"))
    if get(config, f"{CORRECTION}.bypass_mode", False):
        yield ConfigIssue(
            f"{CORRECTION}.bypass_mode", True,
            f"{LOSS_MODE_KEY}={loss_mode} needs π_old recomputed by the trainer (bypass uses the rollout's μ_old "
            "as π_old, so the training–inference factor π_old/μ_old is lost)", "false",
        )
    if not get(config, f"{ROLLOUT}.calculate_log_probs", False) and level is not None:
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
    clip = get(config, f"{ACTOR}.clip_ratio")
    low, high = get(config, f"{ACTOR}.clip_ratio_low", clip), get(config, f"{ACTOR}.clip_ratio_high", clip)
    try:
        check_clip_range(low, high)  # the loss functions' own rule, one place
    except ValueError as exc:
        message = str(exc)  # "<key>=<value> is out of range: <why>"
        key = message.split("=", 1)[0]
        yield ConfigIssue(key, low if key.endswith("_low") else high, message.split(": ", 1)[-1].rstrip("."))
