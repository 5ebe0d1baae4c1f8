"""Record and replay MoE routes on ONE model, as context managers. Nothing process-global.

    rr = RoutingReplay(model)                 # finds the routers (hf.py); installs nothing yet

    with rr.record() as rec:                  # R2: the pi_old pass
        model(input_ids=...)                  # one Routes per forward in rec.routes
    with rr.replay(rec.routes[0]):            # R2 update / R3: forward AND backward inside
        loss = f(model(input_ids=...)); loss.backward()

Token order. A router sees ``hidden_states.reshape(-1, hidden)``: for input ``[B, S]`` that is ``B*S`` rows,
row ``b*S + s`` = token ``[b, s]`` (padding included); for packed rmpad input ``[1, nnz]`` the ``nnz``
tokens in packed order; under Ulysses SP, this rank's slice of the padded packed sequence. Recorded
Routes have exactly these rows, and replayed Routes must (``layouts.py`` moves routes between layouts).

Forwards. A forward starts when ``model`` itself is called (a forward pre-hook on it). ``replay(routes)``
with one Routes applies it to every forward inside; with a sequence of Routes, forward i uses routes[i];
with none, a training loop ``push``-es each micro-batch's Routes before its forward (one context per batch):

    with rr.replay(track_agreement=True) as state:
        for mb in micro_batches:
            state.push(routes_of(mb)); loss = f(model(**mb)); loss.backward()
    state.agreement()                         # counts over the whole batch

A clean exit checks that every forward had its Routes and every Routes its forward. Every Routes is checked when
given or pushed: layer count, top-k and ``num_experts`` against the model, and ids in range and distinct within a
row (``Routes.check_ids``) unless they were checked when the Routes were built (``ids_checked``:
``Routes.from_indices`` and the codecs, e.g. ``codecs.from_nested`` at the FSDP engine's boundary). A forward never
reuses another forward's routes: a model call beyond the Routes given raises, and so does a router that fires again
outside backward within one forward (a submodule called instead of the bound model). Only gradient-checkpoint
recompute, which re-fires the routers inside backward without a model call, reuses routes: those of the forward
whose output the backward is running through (the latest forward when that output cannot be seen); inside
``record`` a recompute replays what that forward recorded.

One context per model at a time: a second ``record``/``replay`` binding routers that another open context
(of this or another ``RoutingReplay``) has hooked is refused with a RuntimeError; the one exception is
``record`` nested in ``replay`` of the same ``RoutingReplay``, which records what is replayed.

Hooks exist only while a context is open; outside, the model is the stock model, bit for bit. Inside
``record`` the gate weights are recomputed from the chosen ids by the family rule, which is bit-identical
to the stock weights (and gives the checkpoint recompute the same graph). Other models (a reference
policy, an SFT model) are never touched.

Layouts: ``layouts.py`` moves routes between token layouts (pack, unpack, sequence selection);
``verl_stable.routing.fsdp`` decodes verl's nested field (``codecs.from_nested``) and lays it out as its model
input (``model_input_rows``, ``strip_model_input_pad``) per micro-batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn

from verl_stable.routing.agreement import AgreementCounter, AgreementCounts
from verl_stable.routing.hf import RouterSite, find_routers, route_spec
from verl_stable.routing.routes import RouteSpec, Routes, compact_dtype

__all__ = ["RoutingReplay", "Recording", "ReplayState"]

# Instance attribute a router module carries while an open context has hooked it: a weak reference to that
# RoutingReplay. It lives on the model, never in this module (a copy of the model made meanwhile shares the
# reference, and a claim whose owner does not hold that very module is void).
_CLAIM = "_routing_replay_claim"


def _in_backward() -> bool:
    """True while the autograd engine runs a backward on this thread: a router firing then is a
    gradient-checkpoint recompute (reentrant or not), not a forward."""
    return torch._C._current_graph_task_id() != -1


def _grad_outputs(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Tensors requiring grad in a model's output (a tensor, a ModelOutput / dict, a tuple / list of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if depth > 2:
        return []
    if isinstance(obj, Mapping):
        items = obj.values()
    elif isinstance(obj, tuple | list):
        items = obj
    else:
        return []
    return [t for item in items for t in _grad_outputs(item, depth + 1)]


def _second_firing(decoder_layer: int, forward: int) -> RuntimeError:
    return RuntimeError(
        f"routing replay: the router of decoder layer {decoder_layer} fired a second time in forward #{forward} "
        "outside backward, i.e. a forward the context did not see (a submodule called instead of the model the "
        "RoutingReplay is bound to). Call the bound model for every forward, with its own routes (replay(): "
        "state.push(routes) before each forward); only gradient-checkpoint recompute in backward reuses a "
        "forward's routes"
    )


class Recording:
    """What ``RoutingReplay.record()`` collected: ``routes[i]`` is the i-th forward's Routes
    (``[tokens, moe_layers, top_k]``, tokens in the order the routers saw them, on the model's device): the
    experts each MoE layer used. With ``record(native=True)``, ``native[i]`` holds what each router picked
    itself in that forward (its own top-k given its input; under ``replay`` that input follows the replayed
    earlier layers)."""

    def __init__(self, spec: RouteSpec, native: bool = False):
        self.spec = spec
        self._keep_native = native
        self._forwards: list[list[Optional[torch.Tensor]]] = []
        self._native: list[list[Optional[torch.Tensor]]] = []
        self._backward_of: Optional[int] = None  # forward (1-based) whose output a running backward reached

    def _start_forward(self) -> None:
        self._backward_of = None
        self._forwards.append([None] * self.spec.num_layers)
        if self._keep_native:
            self._native.append([None] * self.spec.num_layers)

    def _slots(self) -> tuple[list[Optional[torch.Tensor]], Optional[list[Optional[torch.Tensor]]]]:
        if not self._forwards:  # a router fired outside a call of the bound model: count it as one forward
            self._start_forward()
        return self._forwards[-1], (self._native[-1] if self._keep_native else None)

    def _recorded_for_recompute(self, layer: int, native: torch.Tensor) -> torch.Tensor:
        """What MoE layer ``layer`` recorded in the forward a checkpoint recompute (in backward) belongs to."""
        forward = self._backward_of or len(self._forwards)
        slots = self._forwards[forward - 1] if forward else [None] * self.spec.num_layers
        recorded = slots[layer]
        if recorded is None or recorded.shape[0] != native.shape[0]:
            have = "nothing" if recorded is None else f"{recorded.shape[0]} tokens"
            raise RuntimeError(
                f"routing record: a checkpoint recompute in backward re-ran the router of decoder layer "
                f"{self.spec.moe_layers[layer]} on {native.shape[0]} tokens, but forward #{forward} recorded "
                f"{have} there: call the bound model itself so that each forward is seen"
            )
        return recorded.to(torch.int64)

    @property
    def num_forwards(self) -> int:
        return len(self._forwards)

    def _assemble(self, forwards: list[list[Optional[torch.Tensor]]], i: int) -> Routes:
        layers = forwards[i]
        missing = [self.spec.moe_layers[j] for j, t in enumerate(layers) if t is None]
        if missing:
            raise RuntimeError(f"forward {i} inside record() never reached the routers of decoder layers {missing}")
        return Routes(torch.stack(layers, dim=1), self.spec.num_experts)

    def forward_routes(self, i: int) -> Routes:
        """Routes of forward ``i`` (negative: from the end), without assembling the others."""
        return self._assemble(self._forwards, range(len(self._forwards))[i])

    @property
    def routes(self) -> list[Routes]:
        return [self._assemble(self._forwards, i) for i in range(len(self._forwards))]

    @property
    def native(self) -> list[Routes]:
        if not self._keep_native:
            raise RuntimeError("Recording.native needs record(native=True)")
        return [self._assemble(self._native, i) for i in range(len(self._native))]


class ReplayState:
    """The live state of one ``replay()`` context; yielded by it.

    Which Routes a forward uses: one Routes for every forward, or one per forward in order, given up front or
    :meth:`push`-ed before each forward (a training loop that lays out each micro-batch's routes as it goes).
    A forward beyond the Routes given or pushed raises; so does a router firing twice in one forward outside
    backward. A gradient-checkpoint recompute (in backward) replays the routes of the forward whose output
    the backward runs through (the latest forward if no output of the model was seen).

    With ``track_agreement=True``, :meth:`agreement` reports how often the experts the model would have picked
    itself equal the replayed ones (:class:`verl_stable.routing.agreement.AgreementCounts`): the train-inference
    route mismatch under R3, the drift since recording under R2."""

    def __init__(self, routes: Union[Routes, Sequence[Routes], None], spec: RouteSpec, track_agreement: bool):
        self.spec = spec
        self._single = isinstance(routes, Routes)
        self._pushed = routes is None
        self._queue: list[Routes] = []
        if routes is None:
            pass  # pushed per forward
        else:
            queue = [routes] if self._single else list(routes)
            if not queue:
                raise ValueError("replay() needs at least one Routes (or none at all, then push() one per forward)")
            for r in queue:
                self._append(r)
        self.num_forwards = 0
        self._on_device: Optional[tuple[int, Routes]] = None  # (queue index, that Routes on the routers' device)
        self._fired: set[int] = set()
        self._backward_of: Optional[int] = None  # forward (1-based) whose output a running backward reached
        self._counter = AgreementCounter(spec.num_layers) if track_agreement else None

    def _append(self, routes: Routes) -> None:
        what = f"replayed routes[{len(self._queue)}]"
        routes.check(self.spec, what=what)
        if not routes.ids_checked:  # the codecs and from_indices checked theirs at the boundary
            routes.check_ids(what=what)
        self._queue.append(routes)

    def push(self, routes: Routes) -> None:
        """Queue ``routes`` for the next forward that has none yet (in the order pushed)."""
        if self._single:
            raise RuntimeError("push() on a replay() given one Routes for every forward")
        self._append(routes)

    def _start_forward(self) -> None:
        if not self._single and self.num_forwards >= len(self._queue):
            how = "had" if self._pushed else "was given"
            fix = (
                "push() the routes of every forward before it runs"
                if self._pushed
                else "give one Routes per forward, or replay(routes) with one Routes to use it for every forward"
            )
            raise ValueError(
                f"replay() {how} {len(self._queue)} Routes (one per forward) but the model ran forward "
                f"#{self.num_forwards + 1}: {fix}; a forward never reuses another forward's routes"
            )
        self._end_forward()
        self._on_device = None
        self._fired = set()
        self._backward_of = None
        self.num_forwards += 1

    def _end_forward(self) -> None:
        if self._counter is not None and self.num_forwards:
            if len(self._fired) != self.spec.num_layers:
                raise RuntimeError(
                    f"routing replay: only MoE layers {sorted(self._fired)} of {self.spec.num_layers} were replayed "
                    f"in forward #{self.num_forwards}"
                )
            self._counter.end_forward()

    def _routes_of(self, forward: int, device: torch.device) -> Routes:
        """The Routes of forward ``forward`` (1-based) on ``device`` (one copy kept: the latest one used)."""
        i = 0 if self._single else forward - 1
        if self._on_device is None or self._on_device[0] != i or self._on_device[1].device != device:
            self._on_device = (i, self._queue[i].to(device))
        return self._on_device[1]

    def indices(self, layer: int, native: torch.Tensor) -> torch.Tensor:
        """The expert ids MoE layer ``layer`` must use, given what the router picked (``native``)."""
        recompute = _in_backward()
        if recompute:
            forward = self._backward_of or self.num_forwards
            if forward == 0:
                raise RuntimeError("routing replay: a router fired in backward before any forward of the context")
        else:
            if self.num_forwards == 0:
                self._start_forward()  # the routers fired without a call of the bound model: that is forward #1
            elif layer in self._fired:
                raise _second_firing(self.spec.moe_layers[layer], self.num_forwards)
            forward = self.num_forwards
        routes = self._routes_of(forward, native.device)
        if routes.num_tokens != native.shape[0]:
            raise ValueError(
                f"replayed routes have {routes.num_tokens} token rows but the router of decoder layer "
                f"{self.spec.moe_layers[layer]} routes {native.shape[0]} tokens in forward #{forward}"
                f"{' (checkpoint recompute)' if recompute else ''}: pass routes in the layout of the model input "
                "(B*S rows for [B, S], nnz for packed [1, nnz], per micro-batch, after Ulysses slicing)"
            )
        idx = routes.layer(layer)
        if routes.valid is not None:
            idx = torch.where(routes.valid[:, None], idx, native)
        if not recompute:  # a checkpoint recompute is not counted twice
            if self._counter is not None:
                self._counter.add_layer(layer, native, idx, routes.valid)
            self._fired.add(layer)
        return idx

    def _check_all_used(self) -> None:
        if not self._single and self.num_forwards != len(self._queue):
            raise ValueError(
                f"replay() was given {len(self._queue)} Routes (one per forward) but the model ran "
                f"{self.num_forwards} forwards: micro-batches and routes are misaligned"
            )

    def agreement(self) -> AgreementCounts:
        """Agreement of each router's own top-k with the replayed experts over every forward so far (first
        firing per layer and forward; recompute not double-counted), as counts with their rates (``agreement``,
        ``expert_overlap``, ``tokens_mismatch_any_layer``, ``tokens_without_route``). ``without_route`` counts
        the rows without a route (routed natively), pad rows included. Raises if the latest forward did not
        reach every MoE layer."""
        if self._counter is None:
            raise RuntimeError("agreement() needs replay(..., track_agreement=True)")
        self._end_forward()
        return self._counter.counts()


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
    def _claimant(self, module: nn.Module) -> Optional["RoutingReplay"]:
        """The RoutingReplay whose open context has hooked ``module`` (None: free)."""
        ref = vars(module).get(_CLAIM)
        owner = ref() if ref is not None else None
        if owner is None or not owner.active or not any(s.module is module for s in owner.sites):
            return None
        return owner

    def _claim_routers(self) -> None:
        """Refuse to hook routers that another open context has hooked (its choices and ours would stack:
        forward hooks chain, the last one wins), then mark them as ours."""
        for site in self.sites:
            owner = self._claimant(site.module)
            if owner is not None and owner is not self:
                raise RuntimeError(
                    f"routing replay: the router {site.name!r} (decoder layer {site.decoder_layer}) of "
                    f"{type(self.model).__name__} is already hooked by an open record()/replay() context of another "
                    "RoutingReplay: two routing replay contexts on one model at once. Use one RoutingReplay per "
                    "model (nest record() inside its replay() to record what is replayed), or close the other "
                    "context first"
                )
        for site in self.sites:
            vars(site.module)[_CLAIM] = weakref.ref(self)

    def _release_routers(self) -> None:
        for site in self.sites:
            ref = vars(site.module).get(_CLAIM)
            if ref is not None and ref() is self:
                del vars(site.module)[_CLAIM]

    def _install(self) -> None:
        if self._removers:
            return
        self._claim_routers()
        try:
            self._removers.append(self.model.register_forward_pre_hook(self._on_model_forward).remove)
            self._removers.append(self.model.register_forward_hook(self._on_model_output).remove)
            for layer, site in enumerate(self.sites):
                self._removers.append(site.adapter.install(site.module, self._chooser(layer)))
        except Exception:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        while self._removers:
            self._removers.pop()()
        self._release_routers()

    def _on_model_forward(self, module, args) -> None:
        if self._replaying is not None:
            self._replaying._start_forward()
        if self._recording is not None:
            self._recording._start_forward()

    def _on_model_output(self, module, args, output) -> None:
        """Tag this forward's output: when a backward reaches it, the checkpoint recomputes that follow belong
        to this forward (a training loop may run forward 1, forward 2, then backward 1)."""
        contexts = [c for c in (self._replaying, self._recording) if c is not None]
        tensors = _grad_outputs(output) if contexts else []
        if not tensors:
            return None
        tags = [(c, c.num_forwards) for c in contexts]

        def backward_reached(_grad):
            for context, forward in tags:
                context._backward_of = forward

        for t in tensors:
            t.register_hook(backward_reached)
        return None

    def _chooser(self, layer: int) -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
        def choose(native: torch.Tensor) -> Optional[torch.Tensor]:
            chosen = None
            if self._replaying is not None:
                chosen = self._replaying.indices(layer, native)
            rec = self._recording
            if rec is not None:
                if _in_backward():
                    # A checkpoint recompute: make it use what its forward recorded (replayed or not).
                    if chosen is None:
                        chosen = rec._recorded_for_recompute(layer, native)
                    return chosen
                slots, native_slots = rec._slots()
                if slots[layer] is not None:
                    raise _second_firing(self.spec.moe_layers[layer], rec.num_forwards)
                dtype = compact_dtype(self.spec.num_experts)
                slots[layer] = (native if chosen is None else chosen).detach().to(dtype)
                if native_slots is not None:
                    native_slots[layer] = native.detach().to(dtype)
                if chosen is None:
                    # Take the replay path for the recorded forward too: non-reentrant checkpointing requires the
                    # recompute (which replays) to build the same graph as the forward did.
                    chosen = native
            return chosen

        return choose

    # ---------------------------------------------------------------- contexts
    @contextmanager
    def record(self, *, native: bool = False) -> Iterator[Recording]:
        """Collect the experts every forward inside uses (the replayed ones when nested in ``replay``), and with
        ``native=True`` also what each router picked itself (``Recording.native``)."""
        if self._recording is not None:
            raise RuntimeError("record() is already active on this model")
        rec = Recording(self.spec, native=native)
        self._recording = rec
        try:
            self._install()
            yield rec
        finally:
            self._recording = None
            if self._replaying is None:
                self._uninstall()

    @contextmanager
    def replay(
        self, routes: Union[Routes, Sequence[Routes], None] = None, *, track_agreement: bool = False
    ) -> Iterator[ReplayState]:
        """Make every forward (and checkpoint recompute) inside use ``routes``' experts.

        ``routes``: one Routes for all forwards inside, a sequence with one Routes per forward, in order, or
        None: ``state.push(routes)`` one per forward before it runs. Each must match ``self.spec`` (ValueError
        otherwise) and have one row per token the routers see. Keep the backward inside the context; a clean
        exit checks that every forward had its Routes and every Routes its forward.
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
