"""Random valid routes: distinct experts per row (what a router's top-k is), almost never what the routers
would pick, so replaying them visibly changes a forward."""

from __future__ import annotations

import torch


def random_expert_ids(*rows: int, num_experts: int, top_k: int, generator=None) -> torch.Tensor:
    """int64 ``[*rows, top_k]``: ``top_k`` distinct expert ids < ``num_experts`` per row."""
    return torch.rand(*rows, num_experts, generator=generator).argsort(-1)[..., :top_k]


def random_routes_idx(num_tokens, num_layers, num_experts, top_k, generator=None) -> torch.Tensor:
    """Random valid expert ids [T, L, K]."""
    return random_expert_ids(num_tokens, num_layers, num_experts=num_experts, top_k=top_k, generator=generator)
