"""Routing replay (R2 / R3) for verl's FSDP / FSDP2 training engine.

verl 0.9.1 replays MoE routes on its Megatron and VeOmni engines only. This module adds it to the FSDP LM
engine (``FSDPEngineWithLMHead``, or whatever FSDP LM engine is registered for the device, e.g. the CPU
backend's) as a subclass registered in verl's ``EngineRegistry``, switched by the key the FSDP engine config
already carries:

    actor_rollout_ref.actor.fsdp_config.router_replay.mode = disabled | R2 | R3

* R2: the π_old pass (``compute_log_prob`` → ``infer_batch``) RECORDS the experts the training engine picks
  and returns them as ``model_output["routed_experts"]``; verl writes that field into the batch, and every
  mini-batch forward and backward of ``update_actor`` REPLAYS them.
* R3: the rollout engine's routes (``routed_experts``, produced when
  ``actor_rollout_ref.rollout.enable_rollout_routing_replay=True``) are REPLAYED in the π_old pass and in
  every update.

How routes follow their tokens. verl carries ``batch["routed_experts"]`` as a per-token field, nested
``[b, j, layers, top_k]`` aligned with the nested ``input_ids``, and its own ``prepare_micro_batches`` (fixed
or dynamic batch sizes, with re-ordering) and ``postprocess_batch_func`` move it with its sequence. The only
layout done here is the one the engine does at model-input time (``prepare_model_inputs``): packing, the
static bucket pad, Ulysses pad + slice, or padded ``[b, S]`` -- :func:`model_input_rows` and its inverse
:func:`strip_model_input_pad` below, on the packed Routes that ``codecs.from_nested`` decodes (and checks, once)
from the micro-batch's field; :class:`MicroBatchLayout` says which apply to one micro-batch.

The replay lifecycle, per ``forward_backward_batch`` (all of it in :class:`BatchReplay`):

    open      forward_backward_batch   ONE record (R2 π_old pass) or replay context on the engine's model
    push      prepare_model_inputs     the micro-batch's layout; replay: its routes, laid out like the model
                                       input, queued for the next model forward
    (verl)    forward, backward        gradient-checkpoint recompute in backward reuses that forward's routes
    collect   forward_step             record: the forward's routes back to nested ``model_output[...]``
    close     forward_backward_batch   also on error; the context's agreement counts become metrics

R3 never silently becomes no replay: at the first sight of a batch (the π_old pass; the first update under bypass
mode) :func:`batch_route_coverage` counts real tokens without a rollout route (all-zero rows) against the expected
ones (one final sampled token per sequence, tool/environment tokens) and stops with an error beyond
``router_replay.max_unrouted_fraction`` (:mod:`verl_stable.routing.coverage`).

Not replayed: the reference model (its engine has its own ``ref.fsdp_config`` with mode ``disabled``; a
LoRA "ref in actor" pass runs inside ``disable_adapter()``, which suspends replay here), critics (the value
model engine is another registry entry, untouched).

Metrics (:mod:`verl_stable.routing.agreement`): per-layer agreement between each router's own top-k and the replayed
experts, per update under ``routing/`` (verl's v1 trainer logs them as ``actor/routing/...``) and, for the
π_old pass, under ``routing/old_pass/`` -- verl drops the π_old pass's metrics, so the engine hands them to
the next update once.

.. plugin-only: begin
Registration in verl (a plugin-only concern, with the shims it needs): :mod:`verl_stable.integration.fsdp_engine`.
.. plugin-only: end
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from verl_stable.routing.agreement import METRICS, AgreementCounts
from verl_stable.routing.codecs import from_nested, to_nested
from verl_stable.routing.config import MODE_KEY, REPLAY_MODES, ROUTE_RETURN_KEY
from verl_stable.routing.coverage import RouteCoverage, route_coverage
from verl_stable.routing.layouts import pack, unpack
from verl_stable.routing.routes import RouteSpec, Routes

__all__ = [
    "ROUTES_KEY",
    "MODE_KEY",
    "ROUTE_RETURN_KEY",
    "BatchReplay",
    "MicroBatchLayout",
    "batch_route_coverage",
    "RoutingReplayEngineMixin",
]

ROUTES_KEY = "routed_experts"

RECORD = "record"
REPLAY = "replay"


# ---------------------------------------------------------------------------------------------- layouts
# The model-input layouts of verl's FSDP engine (they follow verl's own pad rules, so they import verl).
def ulysses_pad_and_slice(routes: Routes, sp_size: int, sp_rank: int) -> tuple[Routes, int]:
    """This rank's routes under Ulysses sequence parallelism, for packed input ``[1, nnz]``.

    Same rule as ``verl.utils.ulysses.ulysses_pad_and_slice_inputs`` applies to ``input_ids_rmpad``: pad the
    token axis to a multiple of ``sp_size`` (pad rows have no route), then rank ``r`` keeps the r-th equal
    chunk. Returns ``(routes_for_rank, pad_size)``.
    """
    from verl.utils.ulysses import ulysses_pad

    if not 0 <= sp_rank < max(sp_size, 1):
        raise ValueError(f"sp_rank={sp_rank} outside [0, sp_size={sp_size})")
    # Run verl's pad on the token positions so the pad size is by construction the one the inputs get.
    positions = torch.arange(routes.num_tokens).unsqueeze(0)
    _, _, pad_size = ulysses_pad(positions, None, sp_size)
    padded = routes.pad_tokens(pad_size)
    if sp_size <= 1:
        return padded, pad_size
    chunk = padded.num_tokens // sp_size
    return padded.narrow(sp_rank * chunk, chunk), pad_size


def padded_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """The right-padded ``[b, max_len]`` attention mask verl's engine builds from nested ``input_ids`` when
    remove-padding is off: row ``i*max_len + s`` of the model input is token ``s`` of sequence ``i``."""
    from verl.workers.utils.padding import build_attention_mask_from_nested

    return build_attention_mask_from_nested(input_ids=input_ids)


def model_input_rows(
    packed: Routes,
    *,
    mask: Optional[torch.Tensor] = None,
    static_pad: int = 0,
    sp_size: int = 1,
    sp_rank: int = 0,
) -> Routes:
    """Packed routes of one micro-batch (one row per token, nested ``input_ids.values()`` order) in the token
    order of the model input verl's FSDP engine builds from it (``prepare_model_inputs``):

    * remove-padding off (``mask``: :func:`padded_mask`): ``[b, S]``, ``b*S`` rows, right pads without a route;
    * remove-padding on: ``[1, nnz]`` plus ``static_pad`` rows (``pad_to_length``'s bucket pad), then under
      Ulysses (``sp_size > 1``) verl's pad to a multiple of ``sp_size`` and rank ``sp_rank``'s slice.

    Pad rows carry no route (the router picks natively)."""
    if mask is not None:
        return unpack(packed, mask)
    padded = packed.pad_tokens(static_pad)
    if sp_size <= 1:
        return padded
    local, _ = ulysses_pad_and_slice(padded, sp_size, sp_rank)
    return local


def strip_model_input_pad(rows: Routes, *, mask: Optional[torch.Tensor] = None, pad_size: int = 0) -> Routes:
    """Inverse of :func:`model_input_rows` for the whole (all Ulysses ranks gathered) model input: routes the
    routers saw, back to packed (one row per token). ``pad_size``: rows appended after the ``nnz`` tokens."""
    if mask is not None:
        return pack(rows, mask)
    return rows.narrow(0, rows.num_tokens - pad_size) if pad_size else rows


@dataclass
class MicroBatchLayout:
    """Where one micro-batch's tokens sit in the model input verl's FSDP engine built for it.

    Attributes:
        input_ids: the micro-batch's nested ``[b, j]`` token ids (the order of the routes it carries).
        rows: token rows the routers see on this rank.
        mask: remove-padding off: the right-padded ``[b, S]`` mask of the model input; None when packed.
        pad_size: packed: rows appended after the ``nnz`` tokens of the global sequence (bucket + Ulysses pad).
        static_pad: packed: the bucket pad alone (``pad_to_length``), appended before the Ulysses pad.
        sp_size / sp_rank: Ulysses sequence parallelism (this rank holds slice ``sp_rank`` of ``sp_size``).
        gather_and_unpad: the engine's ``_gather_and_unpad_packed`` (all-gather of the Ulysses shards).
    """

    input_ids: torch.Tensor
    rows: int
    mask: Optional[torch.Tensor] = None
    pad_size: int = 0
    static_pad: int = 0
    sp_size: int = 1
    sp_rank: int = 0
    gather_and_unpad: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None

    @classmethod
    def of(cls, engine, micro_batch, model_inputs: dict, output_args: dict) -> "MicroBatchLayout":
        """The layout ``engine.prepare_model_inputs(micro_batch)`` produced (``model_inputs``, ``output_args``)."""
        from verl.utils import tensordict_utils as tu

        input_ids = micro_batch["input_ids"]
        if not tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            mask = padded_mask(input_ids)
            if tuple(model_inputs["input_ids"].shape) != tuple(mask.shape):
                raise RuntimeError(
                    f"routing replay: padded input_ids {tuple(model_inputs['input_ids'].shape)} do not match the "
                    f"mask verl builds {tuple(mask.shape)}"
                )
            return cls(input_ids, rows=int(mask.numel()), mask=mask)
        rows = int(model_inputs["input_ids"].shape[-1])
        pad_size = int(output_args.get("pad_size", 0))
        sp_size = int(getattr(engine, "ulysses_sequence_parallel_size", 1) or 1)
        gather = engine._gather_and_unpad_packed
        if sp_size <= 1:
            return cls(input_ids, rows, pad_size=pad_size, static_pad=pad_size, gather_and_unpad=gather)
        from verl.utils.ulysses import get_ulysses_sequence_parallel_rank, ulysses_pad

        # verl pads the global packed sequence by the static bucket pad first, then to a multiple of sp.
        nnz = int(input_ids.values().shape[0])
        static_pad = int(engine._get_packed_pad_size(nnz))
        _, _, sp_pad = ulysses_pad(torch.zeros(1, nnz + static_pad), None, sp_size)
        if static_pad + sp_pad != pad_size:
            raise RuntimeError(f"routing replay: pad bookkeeping {static_pad}+{sp_pad} != engine pad_size {pad_size}")
        return cls(input_ids, rows, pad_size=pad_size, static_pad=static_pad, sp_size=sp_size,
                   sp_rank=get_ulysses_sequence_parallel_rank(), gather_and_unpad=gather)

    def routes_for_model(self, routed: torch.Tensor, spec: RouteSpec) -> tuple[Routes, int]:
        """The micro-batch's ``routed_experts`` (nested) in the rows of the model input, and how many real
        tokens have no route (routed natively: reported, never silently replayed)."""
        packed = from_nested(routed, self.input_ids, spec).to(self.input_ids.values().device)
        missing = int((~packed.valid_mask()).sum())
        rows = model_input_rows(packed, mask=self.mask, static_pad=self.static_pad, sp_size=self.sp_size,
                                sp_rank=self.sp_rank)
        if rows.num_tokens != self.rows:
            raise RuntimeError(f"routing replay: {rows.num_tokens} route rows for a model input of {self.rows} tokens")
        return rows, missing

    def recorded_to_nested(self, recorded: Routes) -> torch.Tensor:
        """Routes recorded on this rank's model input, back to nested ``[b, j, layers, top_k]`` (compact dtype)."""
        if recorded.num_tokens != self.rows:
            raise RuntimeError(
                f"routing replay: recorded {recorded.num_tokens} route rows for a model input of {self.rows} tokens"
            )
        if self.sp_size > 1:
            # Gather the Ulysses shards (ints through an int32 all-gather) and strip the tail pads.
            experts = self.gather_and_unpad(recorded.experts.to(torch.int32), self.pad_size)
            packed = Routes(experts.to(recorded.experts.dtype), recorded.num_experts)
        else:
            packed = strip_model_input_pad(recorded, mask=self.mask, pad_size=self.pad_size)
        return to_nested(packed, self.input_ids)


# ---------------------------------------------------------------------------------------------- one batch
class BatchReplay:
    """One ``forward_backward_batch`` under routing replay: the per-micro-batch protocol in one place (see the
    module docstring). A context manager: entering opens ONE record or replay context on the engine's model,
    exiting closes it (on error too); in between, :meth:`push` per micro-batch before its forward and
    :meth:`collect` after it."""

    def __init__(self, engine, action: str):
        self.engine = engine
        self.action = action
        self.layouts: list[MicroBatchLayout] = []
        self.without_route = 0  # real tokens without a route, summed over micro-batches
        self.id_bytes = 0  # bytes per expert id of the routes as they reached the engine (1 = uint8 on the wire)
        self.context: Any = None  # the Recording (record) or ReplayState (replay)
        self._stack = ExitStack()

    def __enter__(self) -> "BatchReplay":
        rr = self.engine.routing_replay
        ctx = rr.record() if self.action == RECORD else rr.replay(track_agreement=True)
        self.context = self._stack.enter_context(ctx)
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def push(self, micro_batch, model_inputs: dict, output_args: dict) -> None:
        """Right before the micro-batch's model forward (end of ``prepare_model_inputs``)."""
        layout = MicroBatchLayout.of(self.engine, micro_batch, model_inputs, output_args)
        self.layouts.append(layout)
        if self.action == REPLAY:
            routed = micro_batch[ROUTES_KEY]
            self.id_bytes = max(self.id_bytes, routed.dtype.itemsize)
            routes, missing = layout.routes_for_model(routed, self.context.spec)
            self.without_route += missing
            self.context.push(routes)

    def collect(self, output: dict) -> None:
        """Right after the micro-batch's forward (end of ``forward_step``): record puts the forward's routes in
        ``output["model_output"]`` (verl undoes its micro-batch re-ordering on them like on log-probs)."""
        if self.action != RECORD:
            return
        rec = self.context
        if rec.num_forwards != len(self.layouts):
            raise RuntimeError(
                f"routing replay: {rec.num_forwards} model forwards recorded for {len(self.layouts)} micro-batches"
            )
        nested = self.layouts[-1].recorded_to_nested(rec.forward_routes(-1))
        output.setdefault("model_output", {})[ROUTES_KEY] = nested

    def counts(self) -> Optional[AgreementCounts]:
        """Replay: agreement of the routers' own choices with the replayed experts over the batch."""
        if self.action != REPLAY:
            return None
        return self.context.agreement().with_without_route(self.without_route)


# ---------------------------------------------------------------------------------------------- R3 coverage
def batch_route_coverage(data) -> RouteCoverage:
    """:func:`~verl_stable.routing.coverage.route_coverage` of the batch verl hands the engine: nested
    ``routed_experts`` ``[b, j, layers, top_k]`` (one row per real token), and the tool/environment tokens
    from ``response_mask`` -- nested per real response token (verl's v1 trainer) or padded ``[b, R]`` with the
    padded ``attention_mask`` (legacy trainer). Without a ``response_mask`` only the final tokens are allowed."""
    routed = data[ROUTES_KEY]
    if getattr(routed, "is_nested", False):
        rows, sequences = routed.values(), routed.size(0)
    else:  # padded [b, S, layers, top_k]: the real rows are the attention mask's
        mask = data["attention_mask"].bool()
        rows, sequences = routed[mask], routed.shape[0]
    environment = 0
    response_mask = data.get("response_mask", None)
    if response_mask is not None:
        if getattr(response_mask, "is_nested", False):
            environment = int((response_mask.values() == 0).sum())
        elif data.get("attention_mask", None) is not None:
            attention = data["attention_mask"]
            real_response = attention[:, -response_mask.shape[1] :].bool()
            environment = int((real_response & ~response_mask.bool()).sum())
    return route_coverage(rows, sequences, environment)


# ---------------------------------------------------------------------------------------------- the mixin
class RoutingReplayEngineMixin:
    """Put in front of verl's FSDP LM engine class (see :func:`replay_engine_class`). With
    ``engine_config.router_replay.mode == "disabled"`` every method is a pass-through."""

    _rr_pass: Optional[BatchReplay] = None
    _rr_binding: Any = None
    _rr_suspended: bool = False
    _rr_pending_metrics: Optional[dict] = None

    # ---- config
    @property
    def routing_replay_mode(self) -> str:
        rr = getattr(self.engine_config, "router_replay", None)
        if rr is None:
            mode = "disabled"
        elif isinstance(rr, Mapping):
            mode = rr.get("mode", "disabled")
        else:
            mode = getattr(rr, "mode", "disabled")
        if mode not in REPLAY_MODES:
            raise ValueError(f"{MODE_KEY}={mode!r}; must be one of {REPLAY_MODES}")
        return mode

    @property
    def max_unrouted_fraction(self) -> float:
        """R3's tolerance for real tokens without a rollout route beyond the expected ones (see
        :mod:`verl_stable.routing.coverage`); 0.0 unless the router_replay block sets it."""
        rr = getattr(self.engine_config, "router_replay", None)
        value = rr.get("max_unrouted_fraction", None) if isinstance(rr, Mapping) else getattr(
            rr, "max_unrouted_fraction", None)
        return 0.0 if value is None else float(value)

    def _rr_global_coverage(self, local: RouteCoverage) -> RouteCoverage:
        """The coverage of the whole batch, summed over the ranks: every rank reaches the same verdict (a rank
        stopping alone would leave the others waiting in FSDP's collectives). Ulysses ranks hold copies of
        their data-parallel shard, counted once."""
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() <= 1:
            return local
        from verl.utils.device import get_device_id

        counts = torch.tensor(
            [local.tokens, local.without_route, local.sequences, local.environment_tokens], dtype=torch.int64
        ).to(get_device_id())
        dist.all_reduce(counts)
        sp = max(1, int(getattr(self, "ulysses_sequence_parallel_size", 1) or 1))
        tokens, without, sequences, environment = (int(v) // sp for v in counts.cpu())
        return RouteCoverage(tokens, without, sequences, environment)

    @property
    def routing_replay(self):
        """The :class:`~verl_stable.routing.RoutingReplay` bound to this engine's model (built on first use,
        after ``initialize``)."""
        if self._rr_binding is None:
            from verl_stable.routing.replay import RoutingReplay

            self._rr_binding = RoutingReplay(self.module)
        return self._rr_binding


    def _rr_action(self, data, forward_only: bool) -> Optional[str]:
        from verl.utils import tensordict_utils as tu

        mode = self.routing_replay_mode
        if mode == "disabled" or self._rr_suspended:
            return None
        # verl's per-call flag: False on compute_ref_log_prob. Absent (FSDP workers never set it) = on.
        if not tu.get_non_tensor_data(data=data, key="enable_routing_replay", default=True):
            return None
        has_routes = data.get(ROUTES_KEY, None) is not None
        if mode == "R2":
            if forward_only:
                if has_routes:
                    raise ValueError(
                        f"{MODE_KEY}=R2 records the training engine's routes in the π_old pass, but the batch "
                        f"already has '{ROUTES_KEY}' (rollout routes: {ROUTE_RETURN_KEY}=True?). Use R3 to replay "
                        f"rollout routes, or set {ROUTE_RETURN_KEY}=False."
                    )
                return RECORD
            if not has_routes:
                raise ValueError(
                    f"{MODE_KEY}=R2: the update batch has no '{ROUTES_KEY}'. R2 replays the routes recorded by "
                    "compute_log_prob (the π_old pass); that pass did not run on this batch (is "
                    "algorithm.rollout_correction.bypass_mode=True?) or its output was dropped."
                )
            return REPLAY
        if not has_routes:
            raise ValueError(
                f"{MODE_KEY}=R3 replays the rollout engine's routes, but the batch has no '{ROUTES_KEY}'. Set "
                f"{ROUTE_RETURN_KEY}=True and use a rollout backend that returns routed experts."
            )
        return REPLAY

    # ---- the engine's per-batch entry point: one BatchReplay around verl's micro-batch loop
    def forward_backward_batch(self, data, loss_function: Callable, forward_only: bool = False):
        action = self._rr_action(data, forward_only)
        if action is None:
            return super().forward_backward_batch(data, loss_function, forward_only=forward_only)
        if self._rr_pass is not None:
            raise RuntimeError("forward_backward_batch re-entered while a routing replay pass is open")
        if action == REPLAY and self.routing_replay_mode == "R3":
            # First sight of the batch is the π_old pass (the first update under bypass mode): an engine that
            # returned all-zero routes stops R3 here instead of silently becoming no replay.
            self._rr_global_coverage(batch_route_coverage(data)).check(self.max_unrouted_fraction)
        self._rr_pass = batch = BatchReplay(self, action)
        try:
            with batch:
                output = super().forward_backward_batch(data, loss_function, forward_only=forward_only)
        finally:
            self._rr_pass = None
        self._rr_report(output, batch.counts(), forward_only, id_bytes=batch.id_bytes)
        return output

    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        if self._rr_pass is not None:
            self._rr_pass.push(micro_batch, model_inputs, output_args)
        return model_inputs, output_args

    def forward_step(self, micro_batch, loss_function, forward_only):
        loss, output = super().forward_step(micro_batch, loss_function, forward_only)
        if self._rr_pass is not None:
            self._rr_pass.collect(output)
        return loss, output

    def _rr_report(
        self, output: dict, counts: Optional[AgreementCounts], forward_only: bool, id_bytes: int = 0
    ) -> None:
        """Agreement metrics on verl's metric path. ``output["metrics"]`` values are lists (one entry per
        micro-batch, postprocess_batch_func's convention); ours are one per batch. ``id_bytes``: bytes per
        expert id of the replayed routes as they arrived (``route_id_bytes``: 1 when they stayed uint8 from
        the rollout server to here, 2 for uint16 or a path that widened them to int16)."""
        metrics = output.setdefault("metrics", {})
        if counts is not None:
            prefix = METRICS.OLD_PASS if forward_only else METRICS.UPDATE
            own = counts.to_metrics(prefix=prefix)
            if id_bytes:
                own[f"{prefix}route_id_bytes"] = float(id_bytes)
            for k, v in own.items():
                metrics[k] = [v]
            if forward_only:
                # verl's trainers drop the π_old pass's metrics; hand them to the next update, which is logged
                # (under actor/routing/old_pass/...). That is where R3's train-inference mismatch lives.
                self._rr_pending_metrics = own
        if not forward_only and self._rr_pending_metrics:
            for k, v in self._rr_pending_metrics.items():
                metrics.setdefault(k, [v])
            self._rr_pending_metrics = None

    # ---- a LoRA "ref in actor" pass runs with the adapter disabled: that is the reference model, not replayed
    @contextmanager
    def _rr_suspend(self):
        prev, self._rr_suspended = self._rr_suspended, True
        try:
            yield
        finally:
            self._rr_suspended = prev

    def disable_adapter(self):
        base = super().disable_adapter()

        @contextmanager
        def ctx():
            with self._rr_suspend(), base:
                yield

        return ctx()
