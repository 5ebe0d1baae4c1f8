"""verl policy losses for MiniRL and its ablations, declared as data.

Each variant is one row of :data:`LOSS_VARIANTS` (name → uses the training–inference IS weight, clips,
token or sequence level, allowed ``loss_agg_mode`` and ``rollout_is`` values). One adapter,
:func:`_policy_loss`, serves every row: it validates the inputs against the row, calls a pure per-token
function of :mod:`verl_stable.objectives` and aggregates with verl's own ``agg_loss``. The functions
registered into verl (:data:`LOSS_MODES`) are generated from the rows with verl's exact policy-loss
signature. Registered names are the YAML values of ``actor_rollout_ref.actor.policy_loss.loss_mode``.

| loss_mode            | what                                                    | preset                    |
|----------------------|---------------------------------------------------------|---------------------------|
| minirl               | MiniRL, paper Eq. 7: token IS (TIS) + decoupled clip    | algorithm=minirl          |
| minirl_no_is         | ablation: without the training–inference IS weight      | algorithm=minirl_no_is    |
| minirl_length_norm   | ablation: MiniRL with 1/|y| length normalisation         | algorithm=minirl_length_norm |
| minirl_no_clip       | ablation: token IS objective without clipping           | algorithm=minirl_no_clip  |
| seq_is               | sequence-level objective J_seq (theory reference)       | algorithm=seq_is          |
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import torch

from verl_stable import objectives

if TYPE_CHECKING:
    from verl.workers.config import ActorConfig

#: verl's policy-loss signature: (old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
#: rollout_is_weights) -> (loss, metrics).
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]

LOSS_MODE_KEY = "actor_rollout_ref.actor.policy_loss.loss_mode"
AGG_MODE_KEY = "actor_rollout_ref.actor.loss_agg_mode"
ROLLOUT_IS_KEY = "algorithm.rollout_correction.rollout_is"
CLIP_LOW_KEY = "actor_rollout_ref.actor.clip_ratio_low"
CLIP_HIGH_KEY = "actor_rollout_ref.actor.clip_ratio_high"

#: loss_agg_mode values that divide by a token count ("w/ length-norm" in the paper, or a global token mean).
LENGTH_NORMALISING_AGG_MODES = ("seq-mean-token-mean", "token-mean")
#: MiniRL's aggregation: per-response token SUM, mean over responses.
MINIRL_AGG_MODE = "seq-mean-token-sum"

#: What each of verl's loss_agg_mode values does with a batch of responses (for messages).
AGG_MODE_MEANING: dict[str, str] = {
    "seq-mean-token-sum": "per-response token sum, mean over responses",
    "seq-mean-token-sum-norm": "per-response token sum divided by a constant horizon, mean over responses",
    "seq-mean-token-mean": "each response divided by its length (1/|y|), mean over responses",
    "token-mean": "mean over all tokens of the batch (a global token mean, not 1/|y|)",
    "token-sum": "sum over all tokens of the batch (the update scales with the batch size)",
}


@dataclass(frozen=True)
class LossVariant:
    """One registered policy loss: what it computes and which settings it accepts.

    ``agg_modes`` and ``rollout_is`` are what a preset may set (the config validation before Ray starts
    checks them); the first ``agg_modes`` entry is the preset's. ``use_is`` says the loss multiplies by
    ``rollout_is_weights`` when the batch carries them; whether they are required follows from
    ``rollout_is`` (``None`` in it: the weight is optional; only ``None``: the batch must not carry one).
    """

    name: str  # == loss_mode YAML value
    use_is: bool  # uses the training–inference weight (rollout_is_weights)
    clip: bool  # decoupled clip mask on π_θ/π_old
    level: Literal["token", "sequence"]  # token objective (Eq. 7) or J_seq
    agg_modes: tuple[str, ...]  # allowed actor_rollout_ref.actor.loss_agg_mode values, first = the preset's
    rollout_is: tuple[Optional[str], ...]  # allowed algorithm.rollout_correction.rollout_is values (None = null)
    summary: str  # one line, used in error messages and docs

    def __post_init__(self) -> None:
        if self.level not in ("token", "sequence"):
            raise ValueError(f"LossVariant {self.name}: level must be 'token' or 'sequence', not {self.level!r}")
        if not self.agg_modes or any(mode not in AGG_MODE_MEANING for mode in self.agg_modes):
            raise ValueError(f"LossVariant {self.name}: agg_modes {self.agg_modes} must be verl loss_agg_mode values")
        if not self.rollout_is or self.use_is != any(level is not None for level in self.rollout_is):
            raise ValueError(f"LossVariant {self.name}: use_is={self.use_is} contradicts rollout_is={self.rollout_is}")

    @property
    def requires_is_weights(self) -> bool:
        """The batch must carry ``rollout_is_weights`` (``rollout_is`` cannot be null)."""
        return None not in self.rollout_is


_MINIRL_AGG_MODES = (MINIRL_AGG_MODE, "seq-mean-token-sum-norm")

#: The single source of truth for what verl-stable registers: presets, config validation and the
#: registered functions are all checked against it. Keys = names = loss_mode values.
LOSS_VARIANTS: dict[str, LossVariant] = {
    v.name: v
    for v in (
        LossVariant("minirl", use_is=True, clip=True, level="token", agg_modes=_MINIRL_AGG_MODES,
                    rollout_is=("token",),
                    summary="MiniRL, paper Eq. 7: token-level TIS weight, decoupled clip mask, per-response token sum"),
        LossVariant("minirl_no_is", use_is=False, clip=True, level="token", agg_modes=_MINIRL_AGG_MODES,
                    rollout_is=(None,),
                    summary="ablation 'w/o train-infer IS': MiniRL with the training–inference weight ≡ 1"),
        LossVariant("minirl_length_norm", use_is=True, clip=True, level="token", agg_modes=("seq-mean-token-mean",),
                    rollout_is=("token",),
                    summary="ablation 'w/ length-norm': MiniRL with each response divided by its length 1/|y|"),
        LossVariant("minirl_no_clip", use_is=True, clip=False, level="token", agg_modes=_MINIRL_AGG_MODES,
                    rollout_is=("token",),
                    summary="ablation 'no clipping': MiniRL's token IS objective with the clip mask ≡ 1"),
        LossVariant("seq_is", use_is=True, clip=False, level="sequence", agg_modes=(MINIRL_AGG_MODE,),
                    rollout_is=("sequence", None),
                    summary="sequence-level objective J_seq = E[π_θ(y)/μ_old(y)·Â] (theory reference, "
                    "clip statistics only)"),
    )
}

#: Loss level only: loss_agg_mode values a preset refuses but the loss still runs, with a warning
#: (:class:`AggregationWarning`), for Python-API users' ablations and cross-checks. Anything else
#: outside a variant's ``agg_modes`` is refused.
TOLERATED_AGG_MODES: dict[str, tuple[str, ...]] = {
    "minirl": ("seq-mean-token-mean", "token-mean", "token-sum"),
    "minirl_no_is": ("seq-mean-token-mean", "token-mean", "token-sum"),
    "minirl_no_clip": ("seq-mean-token-mean", "token-mean", "token-sum"),
    "minirl_length_norm": ("token-mean",),
    "seq_is": (),
}


class AggregationWarning(UserWarning):
    """A loss ran with a ``loss_agg_mode`` its preset refuses (see :data:`TOLERATED_AGG_MODES`)."""


class LengthNormalisationWarning(AggregationWarning):
    """A token-sum variant (``minirl``…) with a length-normalising ``loss_agg_mode``: the paper's
    worse-training ablation."""


# ----------------------------------------------------------------------------------------------------
# Checks of settings: pure functions of the values, shared with the config validation before Ray starts


def check_clip_range(low: float, high: float) -> None:
    """Refuse clip ratios outside 0 ≤ ε_low < 1 and 0 ≤ ε_high < 1, naming the key to change.

    A negative ε masks tokens on an on-policy step (r = 1: ``clip_ratio_low=-1`` masks every
    negative-advantage token); ε_low ≥ 1 makes the lower bound 1 − ε_low ≤ 0, so it never fires. PPO
    itself would run with ε_high ≥ 1 (r may exceed 2), but MiniRL's trust region is small and the same
    range on both sides is the rule here, so ε_high ≥ 1 is refused too. NaN and non-numbers are refused.
    A null ``clip_ratio_low/high`` falls back to ``actor_rollout_ref.actor.clip_ratio``: resolve it first.
    Shared by the loss functions and the config validation before Ray starts.
    """
    for key, value, symbol in ((CLIP_LOW_KEY, low, "ε_low"), (CLIP_HIGH_KEY, high, "ε_high")):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0.0 <= number < 1.0:
            raise ValueError(
                f"{key}={value} is out of range: MiniRL needs 0 ≤ {symbol} < 1 (the preset uses 0.2 / 0.27; "
                "a null value falls back to actor_rollout_ref.actor.clip_ratio)."
            )


def _check_agg_mode(variant: LossVariant, loss_agg_mode: str) -> None:
    """Refuse a ``loss_agg_mode`` the loss does not run; warn for one only the loss tolerates."""
    if loss_agg_mode in variant.agg_modes:
        return
    allowed = ", ".join(variant.agg_modes)
    if loss_agg_mode not in TOLERATED_AGG_MODES.get(variant.name, ()):
        meaning = AGG_MODE_MEANING.get(loss_agg_mode, "not one of verl's loss_agg_mode values")
        raise ValueError(
            f"{LOSS_MODE_KEY}={variant.name} ({variant.summary}) does not take {AGG_MODE_KEY}={loss_agg_mode} "
            f"({meaning}); set {AGG_MODE_KEY}={variant.agg_modes[0]} (allowed: {allowed})."
        )
    length_norm = loss_agg_mode in LENGTH_NORMALISING_AGG_MODES and not any(
        mode in LENGTH_NORMALISING_AGG_MODES for mode in variant.agg_modes
    )
    hint = ""
    if length_norm:
        ablations = [v.name for v in LOSS_VARIANTS.values() if v.agg_modes[0] in LENGTH_NORMALISING_AGG_MODES]
        hint = " The length-normalised ablation, run on purpose: " + ", ".join(f"algorithm={n}" for n in ablations)
        hint += "."
    warnings.warn(
        f"{LOSS_MODE_KEY}={variant.name} with {AGG_MODE_KEY}={loss_agg_mode}: {AGG_MODE_MEANING[loss_agg_mode]}, "
        f"which its preset refuses (allowed: {allowed}); set {AGG_MODE_KEY}={variant.agg_modes[0]}.{hint}",
        LengthNormalisationWarning if length_norm else AggregationWarning,
        stacklevel=4,
    )


def _check_is_weights_presence(variant: LossVariant, rollout_is_weights: Optional[torch.Tensor]) -> None:
    allowed = " or ".join("null" if level is None else level for level in variant.rollout_is)
    if variant.requires_is_weights and rollout_is_weights is None:
        without = ", ".join(f"loss_mode={v.name}" for v in LOSS_VARIANTS.values() if not v.use_is)
        raise ValueError(
            f"{LOSS_MODE_KEY}={variant.name} needs training–inference IS weights, but the batch has none. Set "
            f"{ROLLOUT_IS_KEY}={allowed} (the preset uses rollout_is_threshold=5.0) and "
            f"actor_rollout_ref.rollout.calculate_log_probs=True, or use {without} for the ablation."
        )
    if not variant.use_is and rollout_is_weights is not None:
        with_is = ", ".join(
            f"loss_mode={v.name}" for v in LOSS_VARIANTS.values() if v.use_is and v.level == variant.level
        )
        raise ValueError(
            f"{LOSS_MODE_KEY}={variant.name} ({variant.summary}) takes no training–inference weight, but the batch "
            f"carries rollout_is_weights; set {ROLLOUT_IS_KEY}={allowed} (or use {with_is})."
        )


# ----------------------------------------------------------------------------------------------------
# Checks of tensors


_HINTS = {
    "old_log_prob": "π_old recomputation (check the model dtype and actor_rollout_ref.actor.optim.lr)",
    "log_prob": "the current policy's forward (the policy has diverged; check actor_rollout_ref.actor.optim.lr "
    "and actor_rollout_ref.actor.grad_clip)",
    "advantages": "the advantage estimator (check algorithm.adv_estimator and the reward function)",
    "rollout_is_weights": "the training–inference weights (check algorithm.rollout_correction)",
}


def _check_shapes(loss_mode: str, response_mask: torch.Tensor, tensors: dict[str, Optional[torch.Tensor]]) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.shape != response_mask.shape:
            raise ValueError(
                f"loss_mode={loss_mode}: {name} has shape {tuple(tensor.shape)} but response_mask has "
                f"{tuple(response_mask.shape)}; every per-token input must be (batch_size, response_length)."
            )


def _check_values(loss_mode: str, response_mask: torch.Tensor, padded: dict[str, Optional[torch.Tensor]]) -> bool:
    """NaN/inf on response tokens in any input, negative IS weights: one host sync per micro-batch,
    which also answers whether the micro-batch has any response token (the return value).

    ``padded`` holds the inputs with padding already zeroed (:func:`_zero_padding`), so a plain sum per
    tensor is finite exactly when its response tokens are (NaN and ±inf propagate) and the smallest
    weight is negative exactly when a response token's is. Only when that one reduction flags something
    (or a sum overflows) are the exact counts computed, for the message.
    """
    tensors = {name: t for name, t in padded.items() if t is not None}
    weights = padded.get("rollout_is_weights")
    summaries = [response_mask.any().to(torch.float32)] + [t.sum().to(torch.float32) for t in tensors.values()]
    has_weights = weights is not None and weights.numel() > 0
    if has_weights:
        summaries.append(weights.amin().to(torch.float32))
    any_token, *sums = torch.stack(summaries).tolist()
    smallest = sums.pop() if has_weights else 0.0
    if all(math.isfinite(s) for s in sums) and smallest >= 0:
        return bool(any_token)
    valid = response_mask.bool()
    for name, tensor in tensors.items():
        count = int((~torch.isfinite(tensor) & valid).sum())
        if count:
            raise FloatingPointError(
                f"loss_mode={loss_mode}: {count} NaN/inf value(s) in {name} on response tokens, from {_HINTS[name]}."
            )
    negative = 0 if weights is None else int(((weights < 0) & valid).sum())
    if negative:
        raise ValueError(
            f"loss_mode={loss_mode}: {negative} negative value(s) in rollout_is_weights on response tokens; an "
            "importance weight is a ratio of probabilities and a negative one flips the loss's sign. Check "
            "algorithm.rollout_correction (and whoever computes the weights passed to the loss)."
        )
    return bool(any_token)


def _sequence_weight(rollout_is_weights: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The one training–inference weight of each response, (batch_size, 1); refuses per-token weights."""
    valid = response_mask.bool()
    seq_weight = rollout_is_weights.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    seq_min = rollout_is_weights.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    has_tokens = valid.any(dim=-1, keepdim=True)
    if not torch.allclose(seq_weight[has_tokens], seq_min[has_tokens]):
        raise ValueError(
            f"{LOSS_MODE_KEY}=seq_is needs one training–inference weight per response, but rollout_is_weights "
            f"vary within a response; set {ROLLOUT_IS_KEY}=sequence (or null)."
        )
    return torch.where(has_tokens, seq_weight, torch.zeros_like(seq_weight))


def _zero_padding(response_mask: torch.Tensor, *tensors: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """Replace padding positions by 0 so values there (NaN included) reach neither loss nor gradient.

    ``torch.where`` rather than multiplication: NaN·0 is NaN, and a NaN behind a masked product still
    poisons the backward pass.
    """
    valid = response_mask.bool()
    return [None if t is None else torch.where(valid, t, torch.zeros_like(t)) for t in tensors]


def _zero_loss(log_prob: torch.Tensor) -> torch.Tensor:
    # Finite zero that still joins the graph, so every data-parallel rank runs the same backward.
    return (log_prob * 0.0).sum()


# ----------------------------------------------------------------------------------------------------
# Reading verl's actor config


def _clip_range(config: Any) -> tuple[float, float]:
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    return float(low), float(high)


def _is_threshold(config: Any) -> Optional[float]:
    """The TIS threshold C, when the preset wired algorithm.rollout_correction into the actor config."""
    policy_loss = getattr(config, "policy_loss", None)
    correction = policy_loss.get("rollout_correction", None) if policy_loss is not None else None
    if correction is None or correction.get("rollout_is", None) != "token":
        return None
    threshold = correction.get("rollout_is_threshold", None)
    try:
        return float(threshold)
    except (TypeError, ValueError):  # IcePop "lower_upper": no truncation, tokens are dropped instead
        return None


def _aggregate(loss_mat, response_mask, loss_agg_mode, config) -> torch.Tensor:
    from verl.trainer.ppo.core_algos import agg_loss

    return agg_loss(
        loss_mat=loss_mat,
        loss_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        **(getattr(config, "global_batch_info", None) or {}),
    )


class METRICS:
    """The keys :func:`_metrics` logs, as verl's actor reports them (readers import these, never the strings)."""

    CLIPFRAC = "actor/pg_clipfrac"
    CLIPFRAC_POS_ADV = "actor/pg_clipfrac_pos_adv"
    CLIPFRAC_NEG_ADV = "actor/pg_clipfrac_neg_adv"
    #: verl's name for the k1 staleness KL (π_θ vs π_old), kept so verl's own readers find it
    STALENESS_KL_K1 = "actor/ppo_kl"
    STALENESS_KL_K3 = "actor/staleness_kl_k3"
    STALENESS_RATIO_MEAN = "actor/staleness_ratio_mean"
    STALENESS_RATIO_MAX = "actor/staleness_ratio_max"
    STALENESS_RATIO_MIN = "actor/staleness_ratio_min"
    #: only with token-level truncated IS (rollout_correction.rollout_is=token)
    IS_WEIGHT_MEAN = "actor/is_weight_mean"
    IS_TRUNCATED_FRAC = "actor/is_truncated_frac"


def _metrics(stats: objectives.MiniRLStats) -> dict[str, float]:
    metrics = {
        METRICS.CLIPFRAC: stats.clipfrac,
        METRICS.CLIPFRAC_POS_ADV: stats.clipfrac_pos_adv,
        METRICS.CLIPFRAC_NEG_ADV: stats.clipfrac_neg_adv,
        METRICS.STALENESS_KL_K1: stats.staleness_kl_k1,
        METRICS.STALENESS_KL_K3: stats.staleness_kl_k3,
        METRICS.STALENESS_RATIO_MEAN: stats.staleness_ratio_mean,
        METRICS.STALENESS_RATIO_MAX: stats.staleness_ratio_max,
        METRICS.STALENESS_RATIO_MIN: stats.staleness_ratio_min,
    }
    if stats.is_weight_mean is not None:
        metrics[METRICS.IS_WEIGHT_MEAN] = stats.is_weight_mean
    if stats.is_truncated_frac is not None:
        metrics[METRICS.IS_TRUNCATED_FRAC] = stats.is_truncated_frac
    return metrics


# ----------------------------------------------------------------------------------------------------
# The one adapter


def _policy_loss(
    variant: LossVariant,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Optional[ActorConfig],
    rollout_is_weights: Optional[torch.Tensor],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Validate against ``variant``, compute its per-token loss, aggregate with verl's ``agg_loss``."""
    if config is None:
        raise ValueError(
            f"loss_mode={variant.name} needs the actor config (clip_ratio_low/high, global_batch_info)."
        )
    _check_agg_mode(variant, loss_agg_mode)
    _check_is_weights_presence(variant, rollout_is_weights)
    clip_low, clip_high = _clip_range(config)
    check_clip_range(clip_low, clip_high)
    inputs = {"old_log_prob": old_log_prob, "log_prob": log_prob, "advantages": advantages,
              "rollout_is_weights": rollout_is_weights}
    _check_shapes(variant.name, response_mask, inputs)
    padded = dict(zip(inputs, _zero_padding(response_mask, *inputs.values())))
    has_tokens = _check_values(variant.name, response_mask, padded)
    old_log_prob, log_prob, advantages, rollout_is_weights = padded.values()
    token_level = variant.level == "token"
    # J_seq reports the staleness and clip statistics only: its training–inference weight is per response.
    stats = objectives.minirl_stats(
        log_prob, old_log_prob, advantages, response_mask, clip_low, clip_high,
        rollout_is_weights if token_level else None, _is_threshold(config) if token_level else None,
    )
    if not has_tokens:
        return _zero_loss(log_prob), _metrics(stats)
    if token_level:
        loss_mat = objectives.minirl_token_loss(
            log_prob, old_log_prob, advantages, rollout_is_weights, clip_low, clip_high, clip=variant.clip
        )
    else:
        seq_weight = None if rollout_is_weights is None else _sequence_weight(rollout_is_weights, response_mask)
        loss_mat = objectives.sequence_is_token_loss(log_prob, old_log_prob, advantages, response_mask, seq_weight)
    return _aggregate(loss_mat, response_mask, loss_agg_mode, config), _metrics(stats)


def make_policy_loss(variant: LossVariant) -> PolicyLossFn:
    """verl's policy-loss function for ``variant``: a plain module-level function named
    ``compute_policy_loss_<name>``, with verl's signature and the preset's ``loss_agg_mode`` as default."""

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = variant.agg_modes[0],
        config: Optional[ActorConfig] = None,
        rollout_is_weights: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return _policy_loss(
            variant, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights
        )

    policy_loss.__name__ = policy_loss.__qualname__ = f"compute_policy_loss_{variant.name}"
    rollout_is = ", ".join("null" if level is None else level for level in variant.rollout_is)
    policy_loss.__doc__ = (
        f"verl policy loss ``{variant.name}``: {variant.summary}.\n\n"
        "Args (all (batch_size, response_length)): old_log_prob = log π_old, log_prob = log π_θ (the only\n"
        "input carrying gradient), advantages = Â, response_mask, rollout_is_weights = the truncated\n"
        f"training–inference weight from algorithm.rollout_correction (rollout_is: {rollout_is}).\n"
        f"loss_agg_mode: {', '.join(variant.agg_modes)}; config: verl's ActorConfig (clip_ratio_low/high,\n"
        "global_batch_info). Returns (loss, metrics) with ``actor/``-namespaced metrics.\n"
    )
    return policy_loss


#: name -> the function registered into verl's POLICY_LOSS_REGISTRY under that name.
LOSS_MODES: dict[str, PolicyLossFn] = {name: make_policy_loss(variant) for name, variant in LOSS_VARIANTS.items()}

# Module attributes under the functions' own names: ``module.qualname`` resolves, so they pickle by reference.
compute_policy_loss_minirl: PolicyLossFn = LOSS_MODES["minirl"]
compute_policy_loss_minirl_no_is: PolicyLossFn = LOSS_MODES["minirl_no_is"]
compute_policy_loss_minirl_length_norm: PolicyLossFn = LOSS_MODES["minirl_length_norm"]
compute_policy_loss_minirl_no_clip: PolicyLossFn = LOSS_MODES["minirl_no_clip"]
compute_policy_loss_seq_is: PolicyLossFn = LOSS_MODES["seq_is"]


#: Where the upstream patch series puts these losses in verl's tree (scripts/make_patches.py).
PATCHED_VERL_MODULE = "verl.trainer.ppo.minirl_losses"


def register_all() -> None:
    """Register every loss in :data:`LOSS_MODES` into verl's registry; refuse to overwrite a foreign one.

    verl's own ``register_policy_loss`` silently overwrites; a name clash with another plugin must be loud.
    Re-registering our own function (module reload) is a no-op, and so is meeting the same loss from a verl
    that carries this project's upstream patch (``patches/``): verl's copy is kept.
    """
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    for name, fn in LOSS_MODES.items():
        existing = POLICY_LOSS_REGISTRY.get(name)
        if existing is not None:
            if existing.__qualname__ == fn.__qualname__ and existing.__module__ in (fn.__module__, PATCHED_VERL_MODULE):
                continue
            raise RuntimeError(
                f"verl-stable cannot register policy loss {name!r}: it is already registered by "
                f"{existing.__module__}.{existing.__qualname__}. Uninstall the conflicting plugin or set "
                "VERL_USE_EXTERNAL_PLUGINS to exclude it."
            )
        register_policy_loss(name)(fn)
