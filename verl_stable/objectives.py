"""MiniRL and its ablations as pure functions of tensors (no verl import).

Notation (docs/method.md §1-2), all tensors of shape (batch_size, response_length) unless stated:
    log_prob      log π_θ(y_t)        current policy, carries gradient
    old_log_prob  log π_old(y_t)      training engine's recomputation before the update (proximal policy)
    is_weight     w_t ≈ π_old/μ_old   training–inference correction, already truncated (TIS) by the caller
    advantages    Â (x, y)            broadcast over the response tokens
    mask          response_mask       1 for tokens that count

Every function returns a per-token loss matrix; the caller aggregates (verl's ``agg_loss``). The
stop-gradient always sits on the importance weight: gradient flows only through log π_θ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# verl clamps log-ratios at ±20 before exponentiating; same bound, so metrics agree with verl's.
LOG_RATIO_BOUND = 20.0


def magic_box(log_prob: torch.Tensor) -> torch.Tensor:
    """exp(log π − sg[log π]): equals 1, with gradient ∇log π (DiCE's "magic box").

    Multiplying a detached coefficient c by it gives a loss whose value is c and whose gradient is
    c · ∇log π — the paper's sg[·]·log π form, while the logged value stays the IS-weighted surrogate
    (comparable with verl's ``vanilla`` pg_loss) instead of a meaningless multiple of log π.
    """
    return torch.exp(log_prob - log_prob.detach())


def staleness_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """log r_t = log π_θ − log π_old, clamped to ±20 (verl's bound) so exp never overflows."""
    return torch.clamp(log_prob - old_log_prob, min=-LOG_RATIO_BOUND, max=LOG_RATIO_BOUND)


def decoupled_clip_sides(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip rule of MiniRL (decoupled PPO clipping on the staleness ratio r_t), the only copy.

    Returns two bool tensors, the tokens clipped on each side:
        high = Â > 0 and r_t > 1 + ε_high        low = Â < 0 and r_t < 1 − ε_low
    Tokens with Â = 0 are never clipped (they contribute zero anyway). No dual clip.
    """
    clipped_high = (advantages > 0) & (ratio > 1.0 + clip_high)
    clipped_low = (advantages < 0) & (ratio < 1.0 - clip_low)
    return clipped_high, clipped_low


def decoupled_clip_keep_mask(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    """Binary gradient mask M_t of MiniRL: 0 where :func:`decoupled_clip_sides` clips, else 1.

    Returns a bool tensor (True = keep).
    """
    clipped_high, clipped_low = decoupled_clip_sides(ratio, advantages, clip_low, clip_high)
    return ~(clipped_high | clipped_low)


def minirl_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    is_weight: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    clip: bool = True,
) -> torch.Tensor:
    """Per-token MiniRL loss (paper Eq. 7), negated for minimisation.

        loss_t = − M_t · sg[ w_t · r_t ] · Â · log π_θ(y_t)       (gradient)
               = − M_t · w_t · r_t · Â                            (value, via :func:`magic_box`)

    where r_t = π_θ/π_old and w_t the truncated training–inference weight (π_old/μ_old clamped at C),
    so w_t · r_t ≈ π_θ/μ_old. ``is_weight=None`` is the "w/o train-infer IS" ablation (w ≡ 1);
    ``clip=False`` the "no clipping" ablation (M ≡ 1).
    """
    ratio = torch.exp(staleness_log_ratio(log_prob, old_log_prob))
    coefficient = ratio * advantages
    if is_weight is not None:
        coefficient = coefficient * is_weight
    if clip:
        keep = decoupled_clip_keep_mask(ratio, advantages, clip_low, clip_high)
        coefficient = coefficient * keep.to(coefficient.dtype)
    return -coefficient.detach() * magic_box(log_prob)


def sequence_is_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    seq_is_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token loss of the sequence-level objective J_seq = E[(π_θ(y)/μ_old(y)) · Â].

        ∇J_seq = sg[ρ(y)] · Â · Σ_t ∇log π_θ(y_t),   ρ(y) = w_seq · Π_t π_θ(y_t)/π_old(y_t)

    Summed over each response's tokens (``seq-mean-token-sum``) this is exactly J_seq's gradient; the
    value of each response's token sum is −ρ(y)·Â. ``seq_is_weight`` is the sequence-level
    training–inference weight Π_t π_old/μ_old (constant over a response), ``None`` for w_seq ≡ 1.
    The product of token ratios is unbounded: this is the theory reference, not a recipe.
    """
    seq_log_ratio = ((log_prob - old_log_prob) * mask).sum(dim=-1, keepdim=True)
    seq_ratio = torch.exp(torch.clamp(seq_log_ratio, max=LOG_RATIO_BOUND))
    coefficient = seq_ratio * advantages
    if seq_is_weight is not None:
        coefficient = coefficient * seq_is_weight
    # The value −ρ·Â is put on the response's first valid token only, so token-sum gives it once.
    first_token = mask.cumsum(dim=-1).eq(1) & mask.bool()
    value = torch.where(first_token, -coefficient.detach(), torch.zeros_like(coefficient))
    return value + (-coefficient.detach()) * (magic_box(log_prob) - 1.0)


# ----------------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class MiniRLStats:
    """Token statistics of one MiniRL micro-batch, all means over valid tokens."""

    clipfrac: float
    clipfrac_pos_adv: float
    clipfrac_neg_adv: float
    staleness_kl_k1: float
    staleness_kl_k3: float
    staleness_ratio_mean: float
    staleness_ratio_max: float
    staleness_ratio_min: float
    is_weight_mean: float | None
    is_truncated_frac: float | None


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = mask.sum()
    if count == 0:
        return 0.0
    return float((values * mask).sum() / count)


@torch.no_grad()
def minirl_stats(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    is_weight: torch.Tensor | None = None,
    is_threshold: float | None = None,
) -> MiniRLStats:
    """Clip fractions by advantage sign, staleness ratio and KL(π_old‖π_θ), IS truncation.

    Staleness KL estimators on samples from π_old: k1 = −log r, k3 = r − 1 − log r (non-negative).
    ``is_truncated_frac`` counts tokens whose weight reached the TIS threshold C. An all-masked batch
    gives zeros, never NaN.
    """
    mask_f = mask.to(torch.float32)
    valid = mask.bool()
    log_ratio = staleness_log_ratio(log_prob, old_log_prob).float()
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    clipped_high, clipped_low = (side.float() for side in decoupled_clip_sides(ratio, adv, clip_low, clip_high))
    columns = [clipped_high + clipped_low, clipped_high, clipped_low, -log_ratio, ratio - 1.0 - log_ratio, ratio]
    if is_weight is not None:
        columns.append(is_weight.float())
        if is_threshold is not None:
            columns.append((is_weight.float() >= is_threshold * (1 - 1e-6)).float())
    count = mask_f.sum()
    # Every statistic in one tensor and one device-to-host copy: this runs on every micro-batch.
    means = torch.stack([(c * mask_f).sum() for c in columns]) / count.clamp_min(1.0)
    if ratio.numel():
        extremes = torch.stack([ratio.masked_fill(~valid, -torch.inf).max(), ratio.masked_fill(~valid, torch.inf).min()])
    else:
        extremes = torch.full((2,), torch.inf)
    *means, ratio_max, ratio_min, n = torch.cat([means, extremes, count[None]]).tolist()
    if n == 0:
        ratio_max = ratio_min = 1.0
    is_mean = means[6] if is_weight is not None else None
    truncated = means[7] if is_weight is not None and is_threshold is not None else None
    return MiniRLStats(
        clipfrac=means[0],
        clipfrac_pos_adv=means[1],
        clipfrac_neg_adv=means[2],
        staleness_kl_k1=means[3],
        staleness_kl_k3=means[4],
        staleness_ratio_mean=means[5],
        staleness_ratio_max=ratio_max,
        staleness_ratio_min=ratio_min,
        is_weight_mean=is_mean,
        is_truncated_frac=truncated,
    )


@torch.no_grad()
def training_inference_kl(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, mask: torch.Tensor) -> dict:
    """KL(μ_old‖π_old) on samples from μ_old (the rollout): k1 = log μ − log π_old, k3 = k − 1 − log k.

    Same estimators as verl's ``rollout_corr/kl`` and ``rollout_corr/k3_kl`` (k = π_old/μ_old).
    """
    log_k = (old_log_prob - rollout_log_prob).float()
    log_k = torch.clamp(log_k, min=-LOG_RATIO_BOUND, max=LOG_RATIO_BOUND)
    mask_f = mask.to(torch.float32)
    return {
        "k1": _masked_mean(-log_k, mask_f),
        "k3": _masked_mean(torch.exp(log_k) - 1.0 - log_k, mask_f),
    }
