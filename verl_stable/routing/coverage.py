"""R3's guard against silent no-replay: did the rollout engine return a route for the tokens it should have?

Routes treats an all-zero route row as "no route" (the agent loop's filler for tokens the engine never routed)
and lets the router pick natively there. That is right for the few tokens no engine routes -- the final
sampled token of each sequence (never fed through the model) and, in multi-turn rollouts, tool/environment
tokens appended after the last generation -- but an engine whose MoE kernels bypass route capture returns
all-zero rows for EVERY token (vLLM's FlashInfer TRT-LLM MoE kernels, BF16/FP8/NVFP4 on Blackwell:
vllm-project/vllm#44116, fixed only after vLLM 0.26), and R3 then silently becomes no replay at all.

:func:`route_coverage` counts (tensors in, counts out); :meth:`RouteCoverage.check` is the verdict: more real
tokens without a route than expected (one per sequence plus the tool/environment tokens, i.e. real response
tokens with ``response_mask`` 0), beyond a tolerated fraction of the real tokens, is an error that names the
likely cause, the measured fraction and the switches to fall back. Pure torch, no verl.

With ``top_k == 1`` an all-zero row is a real route (expert 0), so nothing is counted as missing there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from verl_stable.routing.config import MAX_UNROUTED_KEY, MODE_KEY, ROUTE_RETURN_KEY
from verl_stable.routing.routes import missing_rows

__all__ = ["MAX_UNROUTED_KEY", "RouteCoverage", "UnroutedTokensError", "check_unrouted_fraction", "route_coverage"]


def check_unrouted_fraction(value) -> None:
    """The one rule for the tolerance switch: a number in [0, 1] (a bool is not one). Shared by the
    router_replay config block, :meth:`RouteCoverage.check` and the launch-time config validation."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{MAX_UNROUTED_KEY}={value!r}: must be a fraction in [0, 1]")


# Rows scanned at a time: bounds the bool temporary of the all-zero test on a whole rollout batch.
_CHUNK_ROWS = 1 << 16


class UnroutedTokensError(ValueError):
    """The rollout returned routes, but far more real tokens lack one than any engine convention explains."""


@dataclass(frozen=True)
class RouteCoverage:
    """Route coverage of one batch of real tokens (padding excluded).

    Attributes:
        tokens: real tokens (prompt + response) with a route row.
        without_route: of those, rows that are all zero in every layer (no route: routed natively).
        sequences: sequences in the batch (each may lack a route for its final sampled token).
        environment_tokens: real response tokens with ``response_mask`` 0 (tool / environment tokens of a
            multi-turn rollout; the engine may never have routed them).
    """

    tokens: int
    without_route: int
    sequences: int
    environment_tokens: int = 0

    @property
    def expected_without_route(self) -> int:
        """Tokens any engine convention leaves without a route: one per sequence plus the environment tokens."""
        return min(self.tokens, self.sequences + self.environment_tokens)

    @property
    def unexpected(self) -> int:
        return max(0, self.without_route - self.expected_without_route)

    @property
    def fraction_without_route(self) -> float:
        return self.without_route / self.tokens if self.tokens else 0.0

    @property
    def unexpected_fraction(self) -> float:
        """Tokens without a route beyond the expected ones, as a fraction of the real tokens."""
        return self.unexpected / self.tokens if self.tokens else 0.0

    def ok(self, max_unrouted_fraction: float = 0.0) -> bool:
        return self.unexpected_fraction <= max_unrouted_fraction

    def check(self, max_unrouted_fraction: float = 0.0) -> "RouteCoverage":
        """Raise :class:`UnroutedTokensError` unless :meth:`ok`; return self."""
        check_unrouted_fraction(max_unrouted_fraction)
        if self.ok(max_unrouted_fraction):
            return self
        raise UnroutedTokensError(
            f"R3 ({MODE_KEY}=R3): the rollout returned routes, but {self.without_route:,} of {self.tokens:,} real "
            f"tokens ({100 * self.fraction_without_route:.1f} %) have none (all-zero route rows) -- "
            f"{self.unexpected:,} ({100 * self.unexpected_fraction:.1f} % of the tokens) more than the "
            f"{self.expected_without_route:,} expected ({self.sequences:,} final sampled tokens + "
            f"{self.environment_tokens:,} tool/environment tokens), above the tolerated "
            f"{MAX_UNROUTED_KEY}={max_unrouted_fraction}. Replay would silently route those tokens natively. "
            "Likely cause: the rollout engine's MoE kernel path does not capture routes -- vLLM's FlashInfer "
            "TRT-LLM MoE kernels (BF16/FP8/NVFP4 on Blackwell) return all-zero routes (vllm-project/vllm#44116, "
            "fixed only after vLLM 0.26; vLLM's CPU MoE kernel too: kernels that route internally skip the "
            "router's capture); vLLM returns no routes with pipeline parallel > 1 or KV connectors. "
            "Use an engine version / MoE backend that returns routes (vLLM: --moe-backend triton, i.e. "
            "actor_rollout_ref.rollout.engine_kwargs.vllm.moe_backend=triton), or fall back: routing_replay=R2 "
            f"({MODE_KEY}=R2, {ROUTE_RETURN_KEY}=False) or no replay ({MODE_KEY}=disabled); to accept the "
            f"gap, raise {MAX_UNROUTED_KEY}."
        )


def count_without_route(routed_experts: torch.Tensor) -> int:
    """Rows of ``routed_experts`` ``[tokens, layers, top_k]`` (any integer dtype) that are all zero (no route)."""
    if routed_experts.dim() != 3:
        raise ValueError(f"routed_experts must be [tokens, layers, top_k], got shape {tuple(routed_experts.shape)}")
    total = 0
    for start in range(0, routed_experts.shape[0], _CHUNK_ROWS):
        total += int(missing_rows(routed_experts[start : start + _CHUNK_ROWS]).sum())
    return total


def route_coverage(
    routed_experts: torch.Tensor, sequences: int, environment_tokens: int | torch.Tensor = 0
) -> RouteCoverage:
    """Coverage of a batch's real tokens by rollout routes.

    Args:
        routed_experts: ``[tokens, layers, top_k]`` route rows of the real tokens (e.g. the ``values()`` of
            verl's nested ``batch["routed_experts"]``), all-zero rows = no route.
        sequences: number of sequences.
        environment_tokens: real response tokens with ``response_mask`` 0 (a count, or a tensor to sum).
    """
    if isinstance(environment_tokens, torch.Tensor):
        environment_tokens = int(environment_tokens.sum())
    return RouteCoverage(
        tokens=int(routed_experts.shape[0]),
        without_route=count_without_route(routed_experts),
        sequences=int(sequences),
        environment_tokens=int(environment_tokens),
    )
