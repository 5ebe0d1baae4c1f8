"""Route-agreement diagnostics for routing replay, as metrics on verl's metric path. The one place where route
agreement is computed.

While a forward replays routes, every MoE router still computes the experts it *would* pick (its native
top-k). Comparing the two per layer measures what replay is fixing:

* R3, π_old pass and first mini-batch: the train–inference route mismatch (training engine vs rollout
  engine at the same weights);
* R2 (and R3 after the first update): drift of the routing across mini-batch updates.

One vocabulary, from the counts to the logged metrics (:class:`AgreementCounts`):

=========================  ==========================================  =============================================
count (summed over tokens)  rate (count / ``tokens``)                   metric (``prefix`` defaults to ``routing/``)
=========================  ==========================================  =============================================
``tokens`` [layers]         --                                           --
``same_set`` [layers]       ``agreement`` [layers]: native expert set    ``{prefix}agreement_layer_{i}``,
                            equals the replayed one (order ignored)      ``{prefix}agreement_mean``
``shared`` [layers]         ``expert_overlap`` [layers]: fraction of     ``{prefix}expert_overlap_mean``
                            the top-k experts shared
``mismatch_any_layer``      ``tokens_mismatch_any_layer``: set differs   ``{prefix}tokens_mismatch_any_layer``
                            in at least one layer
``without_route``           ``tokens_without_route``: no route to        ``{prefix}tokens_without_route``
                            replay (routed natively), over all tokens
=========================  ==========================================  =============================================

Layer ``i`` is position ``i`` on the Routes layer axis (MoE layers only). Only tokens with a route are compared.
Counts, not means, so micro-batches and forwards of different sizes merge exactly (``a + b``).

Where the metrics appear (verl's v1 trainer logs the update's metrics with ``actor/`` in front):

* ``actor/routing/...``: every update mini-batch (R2: drift since the π_old pass; at mini-batch one it is 1.0
  by construction. R3: mismatch to the rollout's routes at the current weights);
* ``actor/routing/old_pass/...``: the π_old pass (R3 only: the train–inference route mismatch at θ_old). verl
  drops the π_old pass's own metrics, so the engine hands them to the next update, once.

:class:`AgreementCounter` accumulates the counts layer by layer as routers fire, on their device without host
syncs (what ``RoutingReplay.replay(track_agreement=True)`` uses); :func:`count_agreement` and
:func:`route_agreement` are the same computation on whole tensors / Routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # the container never imports this module; this module only reads Routes
    from verl_stable.routing.routes import Routes

__all__ = ["METRICS", "AgreementCounts", "AgreementCounter", "count_agreement", "route_agreement"]


def _same_and_shared(native: torch.Tensor, replayed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token agreement of two routings ``[..., top_k]`` (order within the top-k ignored): ``same`` (bool,
    the expert sets are equal) and ``shared`` (float64, fraction of the top-k experts the two share)."""
    x = native.to(torch.int64).sort(-1).values
    y = replayed.to(torch.int64).sort(-1).values
    same = (x == y).all(-1)
    shared = (x.unsqueeze(-1) == y.unsqueeze(-2)).any(-1).sum(-1).double() / max(native.shape[-1], 1)
    return same, shared


class METRICS:
    """The names :meth:`AgreementCounts.to_metrics` logs, and where they land in verl's step metrics: readers
    import these (``METRICS.logged(METRICS.AGREEMENT_MEAN)`` is ``actor/routing/agreement_mean``)."""

    #: ``to_metrics`` prefixes: every update mini-batch, and the π_old pass
    UPDATE = "routing/"
    OLD_PASS = "routing/old_pass/"
    #: what verl's v1 trainer puts in front of the update's metrics
    ACTOR = "actor/"
    TOKENS_WITHOUT_ROUTE = "tokens_without_route"
    AGREEMENT_LAYER = "agreement_layer_"  # + the layer's position on the Routes layer axis
    AGREEMENT_MEAN = "agreement_mean"
    EXPERT_OVERLAP_MEAN = "expert_overlap_mean"
    TOKENS_MISMATCH_ANY_LAYER = "tokens_mismatch_any_layer"

    @staticmethod
    def logged(name: str, prefix: str = UPDATE) -> str:
        """The key verl's step metrics carry for ``name`` under ``prefix`` (:attr:`UPDATE` or :attr:`OLD_PASS`)."""
        return f"{METRICS.ACTOR}{prefix}{name}"


@dataclass(frozen=True)
class AgreementCounts:
    """Sums of route agreement over tokens (see the module docstring for the vocabulary). Tensors are float64;
    per-layer fields have shape ``[layers]``, the others are 0-dim."""

    tokens: torch.Tensor
    same_set: torch.Tensor
    shared: torch.Tensor
    mismatch_any_layer: torch.Tensor
    without_route: torch.Tensor

    @classmethod
    def zeros(cls, num_layers: int, device=None) -> "AgreementCounts":
        z = torch.zeros(num_layers, dtype=torch.float64, device=device)
        s = torch.zeros((), dtype=torch.float64, device=device)
        return cls(z, z.clone(), z.clone(), s, s.clone())

    def __add__(self, other: "AgreementCounts") -> "AgreementCounts":
        other = other.to(self.tokens.device)
        return AgreementCounts(*(a + b for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.tokens, self.same_set, self.shared, self.mismatch_any_layer, self.without_route

    def to(self, device) -> "AgreementCounts":
        return AgreementCounts(*(t.to(device) for t in self._fields()))

    def with_without_route(self, n: int) -> "AgreementCounts":
        """The same counts with ``without_route = n`` (which route-less rows are real tokens is a layout
        question: the FSDP engine counts them, pad rows excluded)."""
        return AgreementCounts(self.tokens, self.same_set, self.shared, self.mismatch_any_layer,
                               torch.tensor(float(n), dtype=torch.float64, device=self.tokens.device))

    # ---- rates (NaN where nothing was compared)
    @property
    def compared(self) -> float:
        """Tokens compared (the same in every layer: a token has a route in all layers or in none)."""
        return float(self.tokens.max()) if self.tokens.numel() else 0.0

    @property
    def agreement(self) -> torch.Tensor:
        return (self.same_set / self.tokens).float()

    @property
    def expert_overlap(self) -> torch.Tensor:
        return (self.shared / self.tokens).float()

    @property
    def tokens_mismatch_any_layer(self) -> torch.Tensor:
        return (self.mismatch_any_layer / self.compared).float() if self.compared else torch.tensor(float("nan"))

    @property
    def tokens_without_route(self) -> torch.Tensor:
        total = self.compared + float(self.without_route)
        return (self.without_route / total).float() if total else torch.tensor(float("nan"))

    def to_metrics(self, prefix: str = METRICS.UPDATE) -> dict[str, float]:
        """The metric dict of the module docstring. NaN-free: counts with no compared token report only
        ``tokens_without_route``."""
        out: dict[str, float] = {}
        compared, without = self.compared, float(self.without_route)
        if compared + without:
            out[f"{prefix}{METRICS.TOKENS_WITHOUT_ROUTE}"] = without / (compared + without)
        if compared == 0:
            return out
        per_layer = self.same_set / self.tokens.clamp_min(1)
        for i, v in enumerate(per_layer.tolist()):
            out[f"{prefix}{METRICS.AGREEMENT_LAYER}{i}"] = v
        out[f"{prefix}{METRICS.AGREEMENT_MEAN}"] = float(per_layer.mean())
        out[f"{prefix}{METRICS.EXPERT_OVERLAP_MEAN}"] = float((self.shared / self.tokens.clamp_min(1)).mean())
        out[f"{prefix}{METRICS.TOKENS_MISMATCH_ANY_LAYER}"] = float(self.mismatch_any_layer) / compared
        return out


class AgreementCounter:
    """Accumulates :class:`AgreementCounts` layer by layer (a router fires), forward by forward, on the
    routers' device: nothing here forces a host sync until :meth:`counts`."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._sums: Optional[torch.Tensor] = None  # [layers, 3]: tokens, same_set, shared
        self._scalars: Optional[torch.Tensor] = None  # [2]: mismatch_any_layer, without_route
        self._differs: Optional[torch.Tensor] = None  # [tokens] of the running forward: differs in some layer
        self._without_route: Optional[torch.Tensor] = None

    def add_layer(self, layer: int, native: torch.Tensor, replayed: torch.Tensor,
                  valid: Optional[torch.Tensor] = None) -> None:
        """One MoE layer of the running forward: ``native`` / ``replayed`` int ``[tokens, top_k]``, ``valid``
        ``[tokens]`` (False: no route, not compared; None: all have one)."""
        device = native.device
        if self._sums is None:
            self._sums = torch.zeros(self.num_layers, 3, dtype=torch.float64, device=device)
            self._scalars = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            same, shared = _same_and_shared(native, replayed.to(device))
            # masked, not indexed: boolean indexing would sync
            weight = (torch.ones(native.shape[0], dtype=torch.float64, device=device) if valid is None
                      else valid.to(device=device, dtype=torch.float64))
            self._sums[layer, 0] += weight.sum()
            self._sums[layer, 1] += (same * weight).sum()
            self._sums[layer, 2] += (shared * weight).sum()
            differs = ~same if valid is None else ~same & valid.to(device=device, dtype=torch.bool)
            if self._differs is None:
                self._differs = differs
                self._without_route = native.shape[0] - weight.sum()
            else:
                self._differs = self._differs | differs

    def end_forward(self) -> None:
        """Fold the running forward's per-token "differs in some layer" into the counts."""
        if self._differs is not None:
            self._scalars[0] += self._differs.sum()
            self._scalars[1] += self._without_route
            self._differs = self._without_route = None

    def counts(self) -> AgreementCounts:
        """The counts so far, on the CPU (ends the running forward)."""
        self.end_forward()
        if self._sums is None:
            return AgreementCounts.zeros(self.num_layers)
        sums, scalars = self._sums.cpu(), self._scalars.cpu()
        return AgreementCounts(sums[:, 0].clone(), sums[:, 1].clone(), sums[:, 2].clone(), scalars[0].clone(),
                               scalars[1].clone())


def count_agreement(native: torch.Tensor, replayed: torch.Tensor,
                    valid: Optional[torch.Tensor] = None) -> AgreementCounts:
    """Agreement counts of two routings of the same tokens, ``[tokens, layers, top_k]`` int each, same token
    order; ``valid`` ``[tokens]`` bool marks the rows with a route (None: all)."""
    if native.shape != replayed.shape or native.dim() != 3:
        raise ValueError(
            f"count_agreement: native {tuple(native.shape)} and replayed {tuple(replayed.shape)} must both be "
            "[tokens, layers, top_k] in the same token layout"
        )
    counter = AgreementCounter(native.shape[1])
    for layer in range(native.shape[1]):
        counter.add_layer(layer, native[:, layer], replayed[:, layer], valid)
    return counter.counts()


def route_agreement(a: "Routes", b: "Routes") -> AgreementCounts:
    """Agreement of two Routes of the same tokens over the rows valid in both: e.g. the experts training picks
    vs the rollout's (train-inference route mismatch), or this step's vs the recorded ones (R2 drift). Rows
    without a route in either are counted in ``without_route``."""
    if a.experts.shape != b.experts.shape or a.num_experts != b.num_experts:
        raise ValueError(f"route_agreement: shapes differ {tuple(a.experts.shape)} vs {tuple(b.experts.shape)}")
    both = a.valid_mask() & b.valid_mask().to(a.device)
    return count_agreement(a.experts, b.experts.to(a.device), both)
