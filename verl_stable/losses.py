"""verl adapters for the losses in :mod:`verl_stable.objectives`.

Each adapter has verl's exact policy-loss signature, reads the actor config, validates its inputs,
calls a pure per-token function and aggregates with verl's own ``agg_loss`` and the configured
``loss_agg_mode``. Registered names are the YAML values of ``actor_rollout_ref.actor.policy_loss.loss_mode``.

| loss_mode            | what                                                    | preset                    |
|----------------------|---------------------------------------------------------|---------------------------|
| minirl               | MiniRL, paper Eq. 7: token IS (TIS) + decoupled clip    | algorithm=minirl          |
| minirl_no_is         | ablation: without the training–inference IS weight      | algorithm=minirl_no_is    |
| minirl_length_norm   | ablation: MiniRL with 1/|y| length normalisation         | algorithm=minirl_length_norm |
| minirl_no_clip       | ablation: token IS objective without clipping           | algorithm=minirl_no_clip  |
| seq_is               | sequence-level objective J_seq (theory reference)       | algorithm=seq_is          |
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from verl_stable import objectives

#: loss_agg_mode values that divide each response by its length ("w/ length-norm" in the paper).
LENGTH_NORMALISING_AGG_MODES = ("seq-mean-token-mean", "token-mean")
#: MiniRL's aggregation: per-response token SUM, mean over responses.
MINIRL_AGG_MODE = "seq-mean-token-sum"

_LOSS_MODE_KEY = "actor_rollout_ref.actor.policy_loss.loss_mode"
_AGG_MODE_KEY = "actor_rollout_ref.actor.loss_agg_mode"


class LengthNormalisationWarning(UserWarning):
    """``minirl`` with a length-normalising ``loss_agg_mode``: the paper's worse-training ablation."""


# ----------------------------------------------------------------------------------------------------
# Validation shared by every adapter


def _check_inputs(
    loss_mode: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is_weights: Optional[torch.Tensor],
) -> None:
    tensors = {"old_log_prob": old_log_prob, "log_prob": log_prob, "advantages": advantages}
    if rollout_is_weights is not None:
        tensors["rollout_is_weights"] = rollout_is_weights
    for name, tensor in tensors.items():
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"loss_mode={loss_mode}: {name} has shape {tuple(tensor.shape)} but response_mask has "
                f"{tuple(response_mask.shape)}; every per-token input must be (batch_size, response_length)."
            )
    valid = response_mask.bool()
    hints = {
        "old_log_prob": "π_old recomputation (check the model dtype and actor_rollout_ref.actor.optim.lr)",
        "log_prob": "the current policy's forward (the policy has diverged; check actor_rollout_ref.actor.optim.lr "
        "and actor_rollout_ref.actor.grad_clip)",
        "advantages": "the advantage estimator (check algorithm.adv_estimator and the reward function)",
        "rollout_is_weights": "the training–inference weights (check algorithm.rollout_correction)",
    }
    # One reduction and one host sync for all inputs: this runs on every micro-batch.
    bad_counts = torch.stack([(~torch.isfinite(t) & valid).sum() for t in tensors.values()]).tolist()
    for (name, _), count in zip(tensors.items(), bad_counts):
        if count:
            raise FloatingPointError(
                f"loss_mode={loss_mode}: {count} NaN/inf value(s) in {name} on response tokens, from {hints[name]}."
            )


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


def _metrics(stats: objectives.MiniRLStats) -> dict[str, float]:
    metrics = {
        "actor/pg_clipfrac": stats.clipfrac,
        "actor/pg_clipfrac_pos_adv": stats.clipfrac_pos_adv,
        "actor/pg_clipfrac_neg_adv": stats.clipfrac_neg_adv,
        "actor/ppo_kl": stats.staleness_kl_k1,
        "actor/staleness_kl_k3": stats.staleness_kl_k3,
        "actor/staleness_ratio_mean": stats.staleness_ratio_mean,
        "actor/staleness_ratio_max": stats.staleness_ratio_max,
        "actor/staleness_ratio_min": stats.staleness_ratio_min,
    }
    if stats.is_weight_mean is not None:
        metrics["actor/is_weight_mean"] = stats.is_weight_mean
    if stats.is_truncated_frac is not None:
        metrics["actor/is_truncated_frac"] = stats.is_truncated_frac
    return metrics


# ----------------------------------------------------------------------------------------------------
# Adapters


def _token_is_loss(
    loss_mode: str,
    use_is: bool,
    clip: bool,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: Optional[torch.Tensor],
) -> tuple[torch.Tensor, dict[str, Any]]:
    if config is None:
        raise ValueError(f"loss_mode={loss_mode} needs the actor config (clip_ratio_low/high, global_batch_info).")
    _check_inputs(loss_mode, old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    if use_is and rollout_is_weights is None:
        raise ValueError(
            f"{_LOSS_MODE_KEY}={loss_mode} needs training–inference IS weights, but the batch has none. Set "
            "algorithm.rollout_correction.rollout_is=token (the preset uses rollout_is_threshold=5.0) and "
            "actor_rollout_ref.rollout.calculate_log_probs=True, or use loss_mode=minirl_no_is for the ablation."
        )
    if not use_is and rollout_is_weights is not None:
        raise ValueError(
            f"{_LOSS_MODE_KEY}={loss_mode} is the 'without training–inference IS' ablation, but the batch carries "
            "rollout_is_weights; set algorithm.rollout_correction.rollout_is=null (or use loss_mode=minirl)."
        )
    clip_low, clip_high = _clip_range(config)
    log_prob, old_log_prob, advantages, rollout_is_weights = _zero_padding(
        response_mask, log_prob, old_log_prob, advantages, rollout_is_weights
    )
    is_weight = rollout_is_weights if use_is else None
    stats = objectives.minirl_stats(
        log_prob, old_log_prob, advantages, response_mask, clip_low, clip_high, is_weight, _is_threshold(config)
    )
    if not response_mask.any():
        return _zero_loss(log_prob), _metrics(stats)
    loss_mat = objectives.minirl_token_loss(
        log_prob, old_log_prob, advantages, is_weight, clip_low, clip_high, clip=clip
    )
    return _aggregate(loss_mat, response_mask, loss_agg_mode, config), _metrics(stats)


def compute_policy_loss_minirl(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = MINIRL_AGG_MODE,
    config: Optional[Any] = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """MiniRL (paper Eq. 7): −M_t · sg[w_t · π_θ/π_old] · Â · log π_θ, aggregated by ``loss_agg_mode``.

    Args (all (batch_size, response_length)): old_log_prob = log π_old, log_prob = log π_θ,
    advantages = Â, response_mask, rollout_is_weights = w_t from algorithm.rollout_correction (TIS).
    Clip range from config.clip_ratio_low / clip_ratio_high (ε_low, ε_high); no dual clip.
    """
    if loss_agg_mode in LENGTH_NORMALISING_AGG_MODES:
        warnings.warn(
            f"{_LOSS_MODE_KEY}=minirl with {_AGG_MODE_KEY}={loss_agg_mode} normalises by response length, the "
            f"paper's worse-training ablation; use algorithm=minirl_length_norm to run it on purpose, or "
            f"{_AGG_MODE_KEY}={MINIRL_AGG_MODE} for MiniRL.",
            LengthNormalisationWarning,
            stacklevel=2,
        )
    return _token_is_loss(
        "minirl", True, True,
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
    )


def compute_policy_loss_minirl_no_is(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=MINIRL_AGG_MODE, config=None, rollout_is_weights=None
):
    """Ablation "w/o train-infer IS": MiniRL with w_t ≡ 1 (collapses quickly in the paper)."""
    return _token_is_loss(
        "minirl_no_is", False, True,
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
    )


def compute_policy_loss_minirl_length_norm(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-mean", config=None,
    rollout_is_weights=None,
):
    """Ablation "w/ length-norm": MiniRL whose per-response sum is divided by |y| (stable but worse)."""
    if loss_agg_mode not in LENGTH_NORMALISING_AGG_MODES:
        raise ValueError(
            f"{_LOSS_MODE_KEY}=minirl_length_norm is the length-normalised ablation but {_AGG_MODE_KEY}="
            f"{loss_agg_mode} does not normalise by length; set {_AGG_MODE_KEY}=seq-mean-token-mean."
        )
    return _token_is_loss(
        "minirl_length_norm", True, True,
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
    )


def compute_policy_loss_minirl_no_clip(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=MINIRL_AGG_MODE, config=None, rollout_is_weights=None
):
    """Ablation "no clipping": the token-level IS objective sg[π_θ/μ_old]·Â·log π_θ, M_t ≡ 1."""
    return _token_is_loss(
        "minirl_no_clip", True, False,
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
    )


def compute_policy_loss_seq_is(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=MINIRL_AGG_MODE, config=None, rollout_is_weights=None
):
    """Sequence-level objective J_seq = E[(π_θ(y)/μ_old(y)) · Â] (SPEC §1), the theory reference.

    The training–inference factor must be sequence-level (algorithm.rollout_correction.rollout_is=sequence,
    constant over each response) or absent.
    """
    if config is None:
        raise ValueError("loss_mode=seq_is needs the actor config (global_batch_info).")
    _check_inputs("seq_is", old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    if loss_agg_mode != MINIRL_AGG_MODE:
        raise ValueError(
            f"{_LOSS_MODE_KEY}=seq_is is a per-response objective; set {_AGG_MODE_KEY}={MINIRL_AGG_MODE} "
            f"(got {loss_agg_mode})."
        )
    log_prob, old_log_prob, advantages, rollout_is_weights = _zero_padding(
        response_mask, log_prob, old_log_prob, advantages, rollout_is_weights
    )
    seq_weight = None
    if rollout_is_weights is not None:
        valid = response_mask.bool()
        seq_weight = rollout_is_weights.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
        seq_min = rollout_is_weights.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
        has_tokens = valid.any(dim=-1, keepdim=True)
        if not torch.allclose(seq_weight[has_tokens], seq_min[has_tokens]):
            raise ValueError(
                f"{_LOSS_MODE_KEY}=seq_is needs one training–inference weight per response, but rollout_is_weights "
                "vary within a response; set algorithm.rollout_correction.rollout_is=sequence (or null)."
            )
        seq_weight = torch.where(has_tokens, seq_weight, torch.zeros_like(seq_weight))
    clip_low, clip_high = _clip_range(config)
    stats = objectives.minirl_stats(log_prob, old_log_prob, advantages, response_mask, clip_low, clip_high)
    metrics = _metrics(stats)
    if not response_mask.any():
        return _zero_loss(log_prob), metrics
    loss_mat = objectives.sequence_is_token_loss(log_prob, old_log_prob, advantages, response_mask, seq_weight)
    return _aggregate(loss_mat, response_mask, loss_agg_mode, config), metrics


#: The single source of truth for what verl-stable registers (tests check presets against it).
LOSS_MODES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, Any]]]] = {
    "minirl": compute_policy_loss_minirl,
    "minirl_no_is": compute_policy_loss_minirl_no_is,
    "minirl_length_norm": compute_policy_loss_minirl_length_norm,
    "minirl_no_clip": compute_policy_loss_minirl_no_clip,
    "seq_is": compute_policy_loss_seq_is,
}


def register_all() -> None:
    """Register every loss in :data:`LOSS_MODES` into verl's registry; refuse to overwrite a foreign one.

    verl's own ``register_policy_loss`` silently overwrites; a name clash with another plugin must be loud.
    Re-registering our own function (module reload) is a no-op.
    """
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    for name, fn in LOSS_MODES.items():
        existing = POLICY_LOSS_REGISTRY.get(name)
        if existing is not None:
            if (existing.__module__, existing.__qualname__) == (fn.__module__, fn.__qualname__):
                continue
            raise RuntimeError(
                f"verl-stable cannot register policy loss {name!r}: it is already registered by "
                f"{existing.__module__}.{existing.__qualname__}. Uninstall the conflicting plugin or set "
                "VERL_USE_EXTERNAL_PLUGINS to exclude it."
            )
        register_policy_loss(name)(fn)
