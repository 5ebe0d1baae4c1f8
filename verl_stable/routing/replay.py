"""Record and replay MoE routes on ONE model, as context managers. Nothing process-global.

    rr = RoutingReplay(model)                 # finds the routers (hf.py); installs nothing yet

    with rr.record() as rec:                  # R2: the pi_old pass
        model(input_ids=...)                  # one Routes per forward in rec.routes
    with rr.replay(rec.routes[0]):            # R2 update / R3: forward AND backward inside
        loss = f(model(input_ids=...)); loss.backward()

Token order. A router sees ``hidden_states.reshape(-1, hidden)``: for input ``[B, S]`` that is ``B*S`` rows,
row ``b*S + s`` = token ``[b, s]`` (padding included); for packed rmpad input ``[1, nnz]`` the ``nnz``
tokens in packed order; under Ulysses SP, this rank's slice of the padded packed sequence. Recorded
Routes have exactly these rows, and replayed Routes must (``routes.py`` moves routes between layouts).

Forwards. A forward starts when ``model`` itself is called (a forward pre-hook on it). ``replay(routes)``
with one Routes applies it to every forward inside; with a sequence of Routes, forward i uses routes[i]
and a clean exit checks that every entry was used. Gradient-checkpoint recompute in backward re-fires the
routers without a new model call, so it replays the routes of the latest forward: run each micro-batch's
backward before the next micro-batch's forward (verl's loop does), or simply re-enter ``replay`` per
micro-batch. Inside ``record`` a recompute replays what the forward recorded.

Hooks exist only while a context is open; outside, the model is the stock model, bit for bit. Inside
``record`` the gate weights are recomputed from the chosen ids by the family rule, which is bit-identical
to the stock weights (and gives the checkpoint recompute the same graph). Other models (a reference
policy, an SFT model) are never touched.

Layout recipe for verl's FSDP engine (packed input): ``routes = Routes.from_engine(mb["routed_experts"]
.values(), spec)`` (or ``pack(Routes.from_verl_batch(...), attention_mask)``), then ``.pad_tokens(n)`` for
a bucket pad appended to the packed sequence, then ``ulysses_pad_and_slice(routes, sp_size, sp_rank)``:
the same steps, in the same order, that the engine applies to ``input_ids_rmpad``. A recording under SP
holds this rank's slice; concatenate the ranks' slices and ``narrow(0, 0, nnz)`` to strip the pad.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn

from verl_stable.diagnostics import layer_agreement
from verl_stable.routing.hf import RouterSite, find_routers, route_spec
from verl_stable.routing.routes import RouteSpec, Routes, compact_dtype

__all__ = ["RoutingReplay", "Recording", "ReplayState"]


class Recording:
    """What ``RoutingReplay.record()`` collected: ``routes[i]`` is the i-th forward's Routes
    (``[tokens, moe_layers, top_k]``, tokens in the order the routers saw them, on the model's device)."""

    def __init__(self, spec: RouteSpec):
        self.spec = spec
        self._forwards: list[list[Optional[torch.Tensor]]] = []

    def _start_forward(self) -> None:
        self._forwards.append([None] * self.spec.num_layers)

    def _current(self) -> list[Optional[torch.Tensor]]:
        if not self._forwards:  # a router fired outside a call of the bound model: count it as one forward
            self._start_forward()
        return self._forwards[-1]

    @property
    def num_forwards(self) -> int:
        return len(self._forwards)

    @property
    def routes(self) -> list[Routes]:
        out = []
        for i, layers in enumerate(self._forwards):
            missing = [self.spec.moe_layers[j] for j, t in enumerate(layers) if t is None]
            if missing:
                raise RuntimeError(f"forward {i} inside record() never reached the routers of decoder layers {missing}")
            out.append(Routes(torch.stack(layers, dim=1), self.spec.num_experts))
        return out


class ReplayState:
    """The live state of one ``replay()`` context; yielded by it. ``agreement()`` reports, per MoE layer,
    how often the experts the model would have picked itself equal the replayed ones (enable with
    ``track_agreement=True``): the train-inference route mismatch under R3, the drift since recording under R2."""

    def __init__(self, routes: Union[Routes, Sequence[Routes]], spec: RouteSpec, track_agreement: bool):
        single = isinstance(routes, Routes)
        self._queue: list[Routes] = [routes] if single else list(routes)
        if not self._queue:
            raise ValueError("replay() needs at least one Routes")
        for i, r in enumerate(self._queue):
            r.check(spec, what=f"replayed routes[{i}]")
        self._single = single
        self.spec = spec
        self.num_forwards = 0
        self._current: Optional[Routes] = None
        self._fired: set[int] = set()
        self._track = track_agreement
        # per layer: [tokens with the same expert set, shared-expert fraction summed, tokens]; kept on the
        # model's device so tracking never forces a host sync inside the forward
        self._stats: Optional[torch.Tensor] = None
        # per-token "differs in at least one layer" of the running forward, folded into _tokens at its end:
        # [tokens differing somewhere, valid tokens, rows without a route]
        self._differs: Optional[torch.Tensor] = None
        self._tokens = torch.zeros(3, dtype=torch.float64)

    def _start_forward(self) -> None:
        if not self._single and self.num_forwards >= len(self._queue):
            raise ValueError(
                f"replay() was given {len(self._queue)} Routes (one per forward) but the model ran forward "
                f"#{self.num_forwards + 1}"
            )
        self._fold_forward()
        self._current = None
        self._fired = set()
        self.num_forwards += 1

    def _routes_for_this_forward(self, device: torch.device) -> Routes:
        if self.num_forwards == 0:
            self._start_forward()
        if self._current is None or self._current.device != device:
            self._current = self._queue[0 if self._single else self.num_forwards - 1].to(device)
        return self._current

    def indices(self, layer: int, native: torch.Tensor) -> torch.Tensor:
        """The expert ids MoE layer ``layer`` must use, given what the router picked (``native``)."""
        routes = self._routes_for_this_forward(native.device)
        if routes.num_tokens != native.shape[0]:
            raise ValueError(
                f"replayed routes have {routes.num_tokens} token rows but the router of decoder layer "
                f"{self.spec.moe_layers[layer]} routes {native.shape[0]} tokens in forward #{self.num_forwards}: "
                "pass routes in the layout of the model input (B*S rows for [B, S], nnz for packed [1, nnz], per "
                "micro-batch, after Ulysses slicing)"
            )
        idx = routes.layer(layer)
        if routes.valid is not None:
            idx = torch.where(routes.valid[:, None], idx, native)
        first_fire = layer not in self._fired
        self._fired.add(layer)
        if self._track and first_fire:
            self._accumulate(layer, native, idx, routes.valid)
        return idx

    @torch.no_grad()
    def _accumulate(self, layer: int, native: torch.Tensor, idx: torch.Tensor, valid: Optional[torch.Tensor]) -> None:
        if self._stats is None:
            self._stats = torch.zeros(self.spec.num_layers, 3, dtype=torch.float64, device=native.device)
        weight = torch.ones(native.shape[0], dtype=torch.float64, device=native.device)
        if valid is not None:
            weight = valid.to(torch.float64)  # masked, not indexed: boolean indexing would sync
        same, shared = layer_agreement(native, idx)
        self._stats[layer, 0] += (same * weight).sum()
        self._stats[layer, 1] += (shared * weight).sum()
        self._stats[layer, 2] += weight.sum()
        differs = ~same if valid is None else ~same & valid
        if self._differs is None:
            self._differs = differs
            self._valid_rows = weight.sum()
        else:
            self._differs = self._differs | differs

    def _fold_forward(self) -> None:
        if self._differs is not None:
            n = self._differs.shape[0]
            folded = torch.stack([self._differs.sum().double(), self._valid_rows, n - self._valid_rows])
            self._tokens = self._tokens + folded.cpu()
            self._differs = None

    def _check_all_used(self) -> None:
        if not self._single and self.num_forwards != len(self._queue):
            raise ValueError(
                f"replay() was given {len(self._queue)} Routes (one per forward) but the model ran "
                f"{self.num_forwards} forwards: micro-batches and routes are misaligned"
            )

    def agreement_counts(self) -> dict:
        """The sums behind :meth:`agreement` in :mod:`verl_stable.diagnostics`' count format (``tokens``,
        ``same_set``, ``shared`` per layer; ``any_mismatch``), to merge exactly across micro-batches.
        ``missing`` is left to the caller: which route-less rows are real tokens is a layout question.
        Raises if the latest forward did not reach every MoE layer."""
        if not self._track:
            raise RuntimeError("agreement_counts() needs replay(..., track_agreement=True)")
        if self.num_forwards and len(self._fired) != self.spec.num_layers:
            raise RuntimeError(
                f"routing replay: only MoE layers {sorted(self._fired)} of {self.spec.num_layers} were replayed in "
                "this forward"
            )
        self._fold_forward()
        stats = self._stats.cpu() if self._stats is not None else torch.zeros(self.spec.num_layers, 3, dtype=torch.float64)
        return {
            "tokens": stats[:, 2].clone(),
            "same_set": stats[:, 0].clone(),
            "shared": stats[:, 1].clone(),
            "any_mismatch": int(self._tokens[0]),
        }

    def agreement(self) -> dict[str, torch.Tensor]:
        """Per-layer ``token_match`` (fraction of tokens whose own top-k set equals the replayed set) and
        ``expert_overlap`` (mean fraction of shared experts), over the valid tokens of every forward so far
        (first firing per layer; recompute not double-counted); ``tokens``: the count per layer. Scalars:
        ``any_layer_mismatch`` (fraction of valid tokens whose own choice differs in at least one layer; the
        R3 paper's ~94% figure) and ``missing_rows`` (rows without a route, routed natively)."""
        if not self._track:
            raise RuntimeError("agreement() needs replay(..., track_agreement=True)")
        self._fold_forward()
        stats = self._stats.cpu() if self._stats is not None else torch.zeros(self.spec.num_layers, 3, dtype=torch.float64)
        count = stats[:, 2]
        return {
            "token_match": (stats[:, 0] / count.clamp_min(1)).float(),
            "expert_overlap": (stats[:, 1] / count.clamp_min(1)).float(),
            "tokens": count.clone(),
            "any_layer_mismatch": (self._tokens[0] / self._tokens[1].clamp_min(1)).float(),
            "missing_rows": self._tokens[2].clone(),
        }


class RoutingReplay:
    """Routing record/replay bound to one model.

    Attributes:
        model: the model whose routers are hooked (hooks live only inside ``record``/``replay``).
        sites: the routers, in Routes layer order (``sites[i].decoder_layer`` is MoE layer i's decoder layer).
        spec: the RouteSpec replayed Routes must match.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.sites: list[RouterSite] = find_routers(model)
        self.spec: RouteSpec = route_spec(model, self.sites)
        self._recording: Optional[Recording] = None
        self._replaying: Optional[ReplayState] = None
        self._removers: list[Callable[[], None]] = []

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Decoder-layer index of each entry of the Routes layer axis."""
        return self.spec.moe_layers

    @property
    def active(self) -> bool:
        return bool(self._removers)

    # ---------------------------------------------------------------- hooks
    def _install(self) -> None:
        if self._removers:
            return
        try:
            self._removers.append(self.model.register_forward_pre_hook(self._on_model_forward).remove)
            for layer, site in enumerate(self.sites):
                self._removers.append(site.adapter.install(site.module, self._chooser(layer)))
        except Exception:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        while self._removers:
            self._removers.pop()()

    def _on_model_forward(self, module, args) -> None:
        if self._replaying is not None:
            self._replaying._start_forward()
        if self._recording is not None:
            self._recording._start_forward()

    def _chooser(self, layer: int) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
        def choose(native: torch.Tensor) -> Optional[torch.Tensor]:
            chosen = None
            if self._replaying is not None:
                chosen = self._replaying.indices(layer, native)
            rec = self._recording
            if rec is not None:
                slots = rec._current()
                if slots[layer] is None:
                    slots[layer] = (native if chosen is None else chosen).detach().to(compact_dtype(self.spec.num_experts))
                elif chosen is None:
                    # A second firing in the same forward is a checkpoint recompute: make it use what was recorded.
                    if slots[layer].shape[0] != native.shape[0]:
                        raise RuntimeError(
                            f"router of decoder layer {self.spec.moe_layers[layer]} fired twice in one forward with "
                            f"{slots[layer].shape[0]} then {native.shape[0]} tokens: call the bound model itself so "
                            "that each forward is seen"
                        )
                    chosen = slots[layer].to(torch.int64)
                if chosen is None:
                    # Take the replay path for the recorded forward too: non-reentrant checkpointing requires the
                    # recompute (which replays) to build the same graph as the forward did.
                    chosen = native
            return chosen

        return choose

    # ---------------------------------------------------------------- contexts
    @contextmanager
    def record(self) -> Iterator[Recording]:
        """Collect the experts every forward inside uses (the replayed ones when nested in ``replay``)."""
        if self._recording is not None:
            raise RuntimeError("record() is already active on this model")
        rec = Recording(self.spec)
        self._recording = rec
        try:
            self._install()
            yield rec
        finally:
            self._recording = None
            if self._replaying is None:
                self._uninstall()

    @contextmanager
    def replay(self, routes: Union[Routes, Sequence[Routes]], *, track_agreement: bool = False) -> Iterator[ReplayState]:
        """Make every forward (and checkpoint recompute) inside use ``routes``' experts.

        ``routes``: one Routes for all forwards inside, or a sequence with one Routes per forward, in order.
        Each must match ``self.spec`` (ValueError otherwise) and have one row per token the routers see.
        Keep the backward inside the context.
        """
        if self._replaying is not None:
            raise RuntimeError("replay() is already active on this model")
        state = ReplayState(routes, self.spec, track_agreement)
        self._replaying = state
        try:
            self._install()
            yield state
            state._check_all_used()
        finally:
            self._replaying = None
            if self._recording is None:
                self._uninstall()
