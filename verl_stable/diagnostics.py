"""Route-agreement diagnostics for routing replay, as metrics on verl's metric path.

While a forward replays routes, every MoE router still computes the experts it *would* pick (its native
top-k). Comparing the two per layer measures what replay is fixing:

* R3, π_old pass and first mini-batch: the train–inference route mismatch (training engine vs rollout
  engine at the same weights);
* R2 (and R3 after the first update): drift of the routing across mini-batch updates.

Metric names (``prefix`` defaults to ``routing/``; the update path puts verl's ``actor/`` in front):

* ``{prefix}agreement_mean``: mean over MoE layers of the fraction of tokens whose native expert set equals
  the replayed one (order within the top-k ignored);
* ``{prefix}agreement_layer_{i}``: the same for MoE layer ``i`` (position on the Routes layer axis);
* ``{prefix}expert_overlap_mean``: mean fraction of the top-k experts shared;
* ``{prefix}tokens_mismatch_any_layer``: fraction of tokens whose set differs in at least one layer;
* ``{prefix}tokens_without_route``: fraction of real tokens that had no route to replay (they were routed
  natively; e.g. the last sampled token, which a rollout engine never feeds through the model).

Where they appear (verl's v1 trainer logs the update's metrics with ``actor/`` in front):

* ``actor/routing/...``: every update mini-batch (R2: drift since the π_old pass; at mini-batch one it is 1.0
  by construction. R3: mismatch to the rollout's routes at the current weights);
* ``actor/routing/old_pass/...``: the π_old pass (R3 only: the train–inference route mismatch at θ_old). verl
  drops the π_old pass's own metrics, so the engine hands them to the next update, once.

Only real tokens with a route count (padding and tokens without a route are excluded). Counts are merged over
micro-batches before dividing, so the metrics are per token, not per micro-batch. Pure functions on tensors;
the FSDP engine (``verl_stable.routing.fsdp``) calls them per micro-batch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["layer_agreement", "agreement_counts", "counts_to_metrics", "merge_counts"]


def layer_agreement(native: torch.Tensor, replayed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token agreement of two routings ``[..., top_k]`` (order within the top-k ignored).

    Returns ``same`` (bool, the expert sets are equal) and ``shared`` (float64, fraction of the top-k experts
    the two share), both of shape ``native.shape[:-1]``.
    """
    x = native.to(torch.int64).sort(-1).values
    y = replayed.to(torch.int64).sort(-1).values
    same = (x == y).all(-1)
    shared = (x.unsqueeze(-1) == y.unsqueeze(-2)).any(-1).sum(-1).double() / max(native.shape[-1], 1)
    return same, shared


def agreement_counts(
    native: torch.Tensor, replayed: torch.Tensor, replayed_valid: Optional[torch.Tensor] = None
) -> dict:
    """Sufficient statistics of route agreement for one forward, from both routings of the same tokens.

    Args:
        native: ``[tokens, layers, top_k]`` int expert ids the routers picked themselves.
        replayed: ``[tokens, layers, top_k]`` int expert ids that were replayed, same token order.
        replayed_valid: ``[tokens]`` bool, False for rows with no route (padding, unrouted tokens); None = all.

    Returns:
        dict: ``tokens`` ``[layers]`` (rows compared per layer), ``missing`` (rows without a route),
        ``same_set`` ``[layers]`` (rows whose expert sets agree), ``shared`` ``[layers]`` (sum of
        shared-expert fractions), ``any_mismatch`` (rows differing in some layer). Counts, not means, so
        micro-batches of different sizes merge exactly (:func:`merge_counts`).
    """
    if native.shape != replayed.shape or native.dim() != 3:
        raise ValueError(
            f"agreement_counts: native {tuple(native.shape)} and replayed {tuple(replayed.shape)} must both be "
            "[tokens, layers, top_k] in the same token layout"
        )
    valid = (
        torch.ones(native.shape[0], dtype=torch.bool, device=native.device)
        if replayed_valid is None
        else replayed_valid.to(device=native.device, dtype=torch.bool)
    )
    same, shared = layer_agreement(native[valid], replayed.to(native.device)[valid])  # [T, L] each
    n = int(valid.sum())
    return {
        "tokens": torch.full((native.shape[1],), float(n), dtype=torch.float64),
        "missing": int((~valid).sum()),
        "same_set": same.sum(0).double().cpu(),
        "shared": shared.sum(0).cpu(),
        "any_mismatch": int((~same.all(-1)).sum()),
    }


def merge_counts(a: Optional[dict], b: dict) -> dict:
    """Sum two count dicts (micro-batches); keys present in only one side are dropped."""
    if a is None:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
    return {k: a[k] + b[k] for k in a if k in b}


def counts_to_metrics(counts: dict, prefix: str = "routing/") -> dict[str, float]:
    """Turn merged counts into the metric dict described in the module docstring. NaN-free: a forward with
    no comparable token reports only ``tokens_without_route``."""
    out: dict[str, float] = {}
    tokens = counts["tokens"]
    compared = float(tokens.max()) if tokens.numel() else 0.0
    if compared + counts["missing"]:
        out[f"{prefix}tokens_without_route"] = counts["missing"] / (compared + counts["missing"])
    if compared == 0:
        return out
    per_layer = counts["same_set"] / tokens.clamp_min(1)
    for i, v in enumerate(per_layer.tolist()):
        out[f"{prefix}agreement_layer_{i}"] = v
    out[f"{prefix}agreement_mean"] = float(per_layer.mean())
    out[f"{prefix}expert_overlap_mean"] = float((counts["shared"] / tokens.clamp_min(1)).mean())
    out[f"{prefix}tokens_mismatch_any_layer"] = counts["any_mismatch"] / compared
    return out
