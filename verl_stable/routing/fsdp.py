"""Routing replay (R2 / R3) for verl's FSDP / FSDP2 training engine.

verl 0.9.1 replays MoE routes on its Megatron and VeOmni engines only. This module adds it to the FSDP
engine (``FSDPEngineWithLMHead``, or whatever LM engine is registered for the device, e.g. our CPU one)
as a mixin, selected by verl's own switch, which the FSDP engine config already carries:

    actor_rollout_ref.actor.fsdp_config.router_replay.mode = disabled | R2 | R3

* R2: the π_old pass (``compute_log_prob`` → ``infer_batch``) RECORDS the experts the training engine picks
  and returns them as ``model_output["routed_experts"]``; verl writes that field into the batch (the v1
  trainer's TransferQueue, run end to end; the legacy trainer's ``DataProto`` union, conversion checked
  only), and every mini-batch forward and backward of ``update_actor`` REPLAYS them.
* R3: the rollout engine's routes (``routed_experts``, produced when
  ``actor_rollout_ref.rollout.enable_rollout_routing_replay=True``) are REPLAYED in the π_old pass and in
  every update.

How routes follow their tokens. verl already carries ``batch["routed_experts"]`` as a per-token field:
``left_right_2_no_padding`` turns the left/right padded ``[B, S, layers, top_k]`` into a nested
``[B, j, layers, top_k]`` aligned with the nested ``input_ids`` (the v1 agent loop stores it that way
directly), and verl's own ``prepare_micro_batches`` (fixed micro-batches, or dynamic batch sizes with their
re-ordering) and ``postprocess_batch_func`` (undoing that re-ordering on outputs) move it with its
sequence. The only layout this module does itself is the one the engine does at model-input time, in
``prepare_model_inputs``: packing (``use_remove_padding``: ``[1, nnz]``, nnz rows), the static bucket pad
(``pad_to_length``) and Ulysses pad + slice, or padded ``[b, S]`` (b*S rows) without remove-padding. The
inverse runs on recorded routes (gather over the Ulysses group, strip the pads, back to nested).

The replay context (``verl_stable.routing.replay.RoutingReplay``) is bound to this engine's model only
and stays open from the micro-batch's forward through its backward, so the recompute that gradient
checkpointing runs during backward replays the same indices. It is closed before the next micro-batch's
forward and at the end of ``forward_backward_batch`` (also on error).

Not replayed: the reference model (its engine has its own ``ref.fsdp_config`` with mode ``disabled``; a
LoRA "ref in actor" pass runs inside ``disable_adapter()``, which suspends replay here), critics (value
model engine untouched).

Metrics (``verl_stable.diagnostics``): per-layer agreement between each router's own top-k and the replayed
experts, per update under ``routing/`` (verl's v1 trainer logs them as ``actor/routing/...``) and, for the
π_old pass, under ``routing/old_pass/`` -- verl drops the π_old pass's metrics, so the engine hands them to
the next update once.

Integration with verl 0.9.1, and the shims left (each with the upstream change that removes it):

1. Registration (:func:`register_replay_engines`): no patch. For this process's engine key -- the
   ``(device, vendor)`` pair ``EngineRegistry.get_engine_cls`` tries first -- it registers, through verl's
   own ``EngineRegistry.register``, the replay subclass of the FSDP LM engine that the registry would hand
   out (``language_model``, ``fsdp`` and ``fsdp2``). verl's device-only entries stay untouched; the value
   model is not touched. Version check: verl == 0.9.1, else a warning and nothing is registered.
   Upstream: the mixin's code lives in ``FSDPEngineWithLMHead`` (patch ``[fsdp] feat: MoE router replay``)
   and this registration disappears.
2. Import hook (``verl_stable/_post_import.py``, installed by ``verl_stable.plugin``): runs (1) right after
   verl executes ``verl.workers.engine.fsdp.transformer_impl``. Kept because registering needs the engine
   class, and importing verl's engine package from the plugin (at every ``import verl``) costs ~1.5 s per
   process on top of ~4.8 s for ``import verl`` (measured on the CPU dev box, engine package after
   ``import verl``) and, worse, resolves and caches verl's platform then (``transformer_impl`` calls
   ``get_device_name()`` at module level): a platform plugin loaded after ours would never be used.
   Upstream: (1) disappears; alternatively a lazy engine entry (``EngineRegistry.register`` accepting a
   ``"module:Class"`` string as ``RolloutReplicaRegistry`` does) would make the hook unnecessary.
3. Overridden engine methods (the mixin, each calls verl's own): ``forward_backward_batch``,
   ``prepare_model_inputs``, ``forward_step``, ``disable_adapter``; reused helpers
   ``build_attention_mask_from_nested``, ``ulysses_pad``, ``get_ulysses_sequence_parallel_rank``,
   ``FSDPEngine._get_packed_pad_size`` / ``_gather_and_unpad_packed``. Version-checked with (1).
   Upstream: the same code inside ``FSDPEngineWithLMHead``.
4. Not patched: ``ActorRolloutRefWorker.__init__`` hard-codes ``enable_routing_replay = False`` for FSDP, so
   verl's per-call flag (True for compute_log_prob / update_actor, False for compute_ref_log_prob) is never
   set for FSDP; the engine treats an absent flag as "replay on" (the ref engine is protected by its own
   config). Upstream: read ``actor.fsdp_config.router_replay.mode`` there too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from verl_stable.diagnostics import counts_to_metrics, merge_counts
from verl_stable.routing.routes import Routes, pack, ulysses_pad_and_slice, unpack

__all__ = [
    "ROUTES_KEY",
    "MODE_KEY",
    "ROUTE_RETURN_KEY",
    "RoutingReplayEngineMixin",
    "replay_engine_class",
    "register_replay_engines",
    "check_trainer_config",
]

ROUTES_KEY = "routed_experts"
MODE_KEY = "actor_rollout_ref.actor.fsdp_config.router_replay.mode"
ROUTE_RETURN_KEY = "actor_rollout_ref.rollout.enable_rollout_routing_replay"
_FSDP_BACKENDS = ("fsdp", "fsdp2")
_MODES = ("disabled", "R2", "R3")
_MODEL_TYPE = "language_model"

RECORD = "record"
REPLAY = "replay"


# ---------------------------------------------------------------------------------------------- config
def check_trainer_config(config) -> str:
    """Validate the replay switches of a composed trainer config (OmegaConf or dict-like); return the mode.

    Raises ValueError naming the key to fix: R3 without the rollout returning routes, a non-FSDP strategy
    (use verl's own Megatron/VeOmni replay there), an unknown mode.
    """

    def sel(path, default=None):
        node = config
        for part in path.split("."):
            if node is None:
                return default
            node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
        return default if node is None else node

    mode = sel(MODE_KEY, "disabled")
    if mode not in _MODES:
        raise ValueError(f"{MODE_KEY}={mode!r}; must be one of {_MODES}")
    if mode == "disabled":
        return mode
    strategy = sel("actor_rollout_ref.actor.strategy")
    if strategy not in _FSDP_BACKENDS:
        raise ValueError(
            f"{MODE_KEY}={mode} is verl-stable's FSDP routing replay, but actor_rollout_ref.actor.strategy="
            f"{strategy!r}; for megatron/veomni set actor_rollout_ref.actor.<engine>.router_replay.mode instead"
        )
    if mode == "R3" and not sel(ROUTE_RETURN_KEY, False):
        raise ValueError(
            f"{MODE_KEY}=R3 replays the rollout engine's routes, but {ROUTE_RETURN_KEY}=False: the rollout "
            f"returns none. Set {ROUTE_RETURN_KEY}=True (or use routing_replay=R2)."
        )
    if mode == "R2" and sel(ROUTE_RETURN_KEY, False):
        raise ValueError(
            f"{MODE_KEY}=R2 records the training engine's routes in the π_old pass; {ROUTE_RETURN_KEY}=True "
            "would also put the rollout's routes in the batch under the same field. Use R3 for rollout routes, "
            f"or set {ROUTE_RETURN_KEY}=False."
        )
    return mode


# ---------------------------------------------------------------------------------------------- layouts
def nested_to_packed_routes(routed: torch.Tensor, input_ids: torch.Tensor, spec) -> Routes:
    """``micro_batch["routed_experts"]`` (nested ``[b, j, layers, top_k]``) as packed Routes, one row per
    token of the nested ``input_ids`` in the same order (what ``input_ids.values()`` is).

    The layer axis may be the model's MoE layers or all decoder layers (rollout engines); all-zero rows
    (verl's filler for tokens the rollout never routed) become rows without a route, routed natively.
    """
    if not getattr(routed, "is_nested", False):
        raise ValueError(
            f"batch['{ROUTES_KEY}'] must be a nested per-token tensor aligned with the nested input_ids "
            "(verl's left_right_2_no_padding makes it one); got a dense tensor of shape "
            f"{tuple(routed.shape)}"
        )
    want = input_ids.offsets().diff().cpu()
    have = routed.offsets().diff().cpu()
    if have.shape != want.shape or not torch.equal(have, want):
        raise ValueError(
            f"batch['{ROUTES_KEY}'] sequence lengths {have.tolist()} differ from input_ids lengths "
            f"{want.tolist()}: routes must cover prompt + response of every sequence, token for token"
        )
    return Routes.from_engine(routed.values(), spec)


def packed_to_nested(routes: Routes, input_ids: torch.Tensor) -> torch.Tensor:
    """Packed routes (one row per token of nested ``input_ids``) as nested int16 ``[b, j, layers, top_k]``
    (verl's dtype for ``routed_experts``) sharing ``input_ids``' offsets."""
    if routes.num_tokens != input_ids.values().shape[0]:
        raise RuntimeError(
            f"recorded {routes.num_tokens} route rows for {input_ids.values().shape[0]} tokens: the recorder "
            "did not see every token exactly once"
        )
    values = routes.experts.to(torch.int16)
    return torch.nested.nested_tensor_from_jagged(values, offsets=input_ids.offsets().to(values.device))


def padded_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """The right-padded ``[b, max_len]`` attention mask the engine builds for remove-padding off."""
    from verl.workers.utils.padding import build_attention_mask_from_nested

    return build_attention_mask_from_nested(input_ids=input_ids)


# ---------------------------------------------------------------------------------------------- the mixin
@dataclass
class _Pass:
    """State of one ``forward_backward_batch`` with replay or recording (never outlives it)."""

    action: str
    stack: Optional[ExitStack] = None
    handle: Any = None  # the record/replay handle of the open micro-batch
    layout: dict = field(default_factory=dict)
    counts: Optional[dict] = None

    def close(self) -> None:
        if self.stack is not None:
            stack, self.stack, self.handle = self.stack, None, None
            stack.close()


class RoutingReplayEngineMixin:
    """Put in front of verl's FSDP LM engine class (see :func:`replay_engine_class`). With
    ``engine_config.router_replay.mode == "disabled"`` every method is a pass-through."""

    _rr_pass: Optional[_Pass] = None
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
        if mode not in _MODES:
            raise ValueError(f"{MODE_KEY}={mode!r}; must be one of {_MODES}")
        return mode

    def _routing_replay(self):
        """The replay context bound to this engine's model (built on first use, after ``initialize``)."""
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

    # ---- the engine's per-batch entry point
    def forward_backward_batch(self, data, loss_function: Callable, forward_only: bool = False):
        action = self._rr_action(data, forward_only)
        if action is None:
            return super().forward_backward_batch(data, loss_function, forward_only=forward_only)
        if self._rr_pass is not None:
            raise RuntimeError("forward_backward_batch re-entered while a routing replay pass is open")
        self._rr_pass = _Pass(action)
        try:
            output = super().forward_backward_batch(data, loss_function, forward_only=forward_only)
            counts = self._rr_pass.counts
        finally:
            # The last micro-batch's backward has run: close its context (also on error).
            self._rr_pass.close()
            self._rr_pass = None
        self._rr_report(output, counts, forward_only)
        return output

    def _rr_report(self, output: dict, counts: Optional[dict], forward_only: bool) -> None:
        """Agreement metrics on verl's metric path. ``output["metrics"]`` values are lists (one entry per
        micro-batch, postprocess_batch_func's convention); ours are one per batch."""
        metrics = output.setdefault("metrics", {})
        if counts is not None:
            prefix = "routing/old_pass/" if forward_only else "routing/"
            own = counts_to_metrics(counts, prefix=prefix)
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

    # ---- per micro-batch: layout + open the context right before the model's forward
    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        p = self._rr_pass
        if p is None:
            return model_inputs, output_args
        # The previous micro-batch's forward, backward and checkpoint recompute are done.
        p.close()
        from verl.utils import tensordict_utils as tu

        rr = self._routing_replay()
        use_rmpad = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        input_ids = micro_batch["input_ids"]
        layout = {"use_rmpad": use_rmpad, "input_ids": input_ids}
        if use_rmpad:
            layout["pad_size"] = int(output_args.get("pad_size", 0))
            n_rows = int(model_inputs["input_ids"].shape[-1])
        else:
            layout["mask"] = padded_mask(input_ids)
            n_rows = int(layout["mask"].numel())
            if tuple(model_inputs["input_ids"].shape) != tuple(layout["mask"].shape):
                raise RuntimeError(
                    f"routing replay: padded input_ids {tuple(model_inputs['input_ids'].shape)} do not match the "
                    f"mask verl builds {tuple(layout['mask'].shape)}"
                )
        layout["rows"] = n_rows
        p.layout = layout
        stack = ExitStack()
        try:
            if p.action == RECORD:
                p.handle = stack.enter_context(rr.record())
            else:
                routes = self._rr_model_rows(micro_batch, layout, rr.spec)
                if routes.num_tokens != n_rows:
                    raise RuntimeError(
                        f"routing replay: {routes.num_tokens} route rows for a model input of {n_rows} tokens"
                    )
                # Agreement of each router's own top-k with the replayed experts, first firing per layer (a
                # checkpoint recompute is not double-counted), summed on the router's device without host syncs.
                p.handle = stack.enter_context(rr.replay(routes, track_agreement=True))
        except BaseException:
            stack.close()
            raise
        p.stack = stack
        return model_inputs, output_args

    def _rr_model_rows(self, micro_batch, layout: dict, spec) -> Routes:
        """The micro-batch's routes in the token layout of the model input."""
        packed = nested_to_packed_routes(micro_batch[ROUTES_KEY], layout["input_ids"], spec)
        packed = packed.to(layout["input_ids"].values().device)
        # Real tokens the routes do not cover (routed natively): reported, never silently replayed.
        layout["missing"] = int((~packed.valid_mask()).sum())
        if not layout["use_rmpad"]:
            return unpack(packed, layout["mask"])  # b*S rows, right padding without a route
        sp_size = int(getattr(self, "ulysses_sequence_parallel_size", 1) or 1)
        sp_pad = 0
        static_pad = layout["pad_size"]
        if sp_size > 1:
            from verl.utils.ulysses import get_ulysses_sequence_parallel_rank, ulysses_pad

            # verl pads the global packed sequence by the static bucket pad first, then to a multiple of sp.
            static_pad = int(self._get_packed_pad_size(packed.num_tokens))
            _, _, sp_pad = ulysses_pad(torch.zeros(1, packed.num_tokens + static_pad), None, sp_size)
            if static_pad + sp_pad != layout["pad_size"]:
                raise RuntimeError(
                    f"routing replay: pad bookkeeping {static_pad}+{sp_pad} != engine pad_size {layout['pad_size']}"
                )
            local, _ = ulysses_pad_and_slice(
                packed.pad_tokens(static_pad), sp_size, get_ulysses_sequence_parallel_rank()
            )
            return local
        return packed.pad_tokens(static_pad)

    def forward_step(self, micro_batch, loss_function, forward_only):
        loss, output = super().forward_step(micro_batch, loss_function, forward_only)
        p = self._rr_pass
        if p is None or p.handle is None:
            return loss, output
        if p.action == RECORD:
            rec = p.handle
            if rec.num_forwards != 1:
                raise RuntimeError(f"routing replay: {rec.num_forwards} model forwards recorded for one micro-batch")
            recorded = rec.routes[0]
            output.setdefault("model_output", {})[ROUTES_KEY] = self._rr_recorded_to_nested(recorded, p.layout)
        else:
            # Real tokens without a route (counted at layout time: pad rows are not tokens).
            counts = {**p.handle.agreement_counts(), "missing": p.layout["missing"]}
            p.counts = merge_counts(p.counts, counts)
        return loss, output

    def _rr_recorded_to_nested(self, recorded: Routes, layout: dict) -> torch.Tensor:
        input_ids = layout["input_ids"]
        if recorded.num_tokens != layout["rows"]:
            raise RuntimeError(
                f"routing replay: recorded {recorded.num_tokens} route rows for a model input of {layout['rows']} "
                "tokens"
            )
        if not layout["use_rmpad"]:
            return packed_to_nested(pack(recorded, layout["mask"]), input_ids)
        experts = recorded.experts
        if int(getattr(self, "ulysses_sequence_parallel_size", 1) or 1) > 1 or layout["pad_size"]:
            # Gather the Ulysses shards (ints through an int32 all-gather) and strip the tail pads.
            gathered = self._gather_and_unpad_packed(experts.to(torch.int32), layout["pad_size"])
            experts = gathered.to(recorded.experts.dtype)
        return packed_to_nested(Routes(experts, recorded.num_experts), input_ids)

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


# ---------------------------------------------------------------------------------------------- registration
_REPLAY_CLASSES: dict[type, type] = {}


def replay_engine_class(engine_cls: type) -> type:
    """``engine_cls`` with :class:`RoutingReplayEngineMixin` in front (cached, idempotent)."""
    if issubclass(engine_cls, RoutingReplayEngineMixin):
        return engine_cls
    cls = _REPLAY_CLASSES.get(engine_cls)
    if cls is None:
        cls = type(
            f"RoutingReplay{engine_cls.__name__}",
            (RoutingReplayEngineMixin, engine_cls),
            {"__module__": __name__, "__doc__": f"{engine_cls.__name__} with verl-stable's R2/R3 routing replay."},
        )
        _REPLAY_CLASSES[engine_cls] = cls
    return cls


class UnsupportedVerlVersion(RuntimeError):
    pass


def _check_verl_version(installed: Optional[str] = None) -> None:
    from importlib.metadata import version

    from verl_stable import VERL_VERSION

    installed = installed or version("verl")
    if installed != VERL_VERSION:
        raise UnsupportedVerlVersion(
            f"verl-stable's FSDP routing replay ({MODE_KEY}=R2|R3) overrides verl=={VERL_VERSION}'s "
            f"FSDPEngineWithLMHead internals; found verl=={installed}: not registered, the FSDP engine runs "
            f"without routing replay. Install verl=={VERL_VERSION}."
        )


def _engine_key() -> tuple[str, str]:
    """The ``(device, vendor)`` key ``EngineRegistry.get_engine_cls`` looks up first in this process."""
    from verl.utils.device import get_device_name, get_vendor

    return os.getenv("VERL_ENGINE_DEVICE") or get_device_name(), os.getenv("VERL_ENGINE_VENDOR") or get_vendor()


def register_replay_engines() -> dict[str, type]:
    """Register the replay-capable FSDP LM engine in verl's ``EngineRegistry`` for this process; return
    ``{backend: class}`` for ``fsdp`` / ``fsdp2`` (idempotent).

    Through verl's own ``EngineRegistry.register``, under the ``(device, vendor)`` key that
    ``get_engine_cls`` tries before the device-only key verl (or the CPU backend) registered its engine
    under: the class registered there is wrapped, not replaced, and every other entry is left alone.
    A vendor key somebody else registered is left alone too (a warning: that engine runs without replay).
    On a verl other than the pinned release: a warning, nothing registered.
    """
    try:
        _check_verl_version()
    except UnsupportedVerlVersion as exc:
        warnings.warn(str(exc), stacklevel=2)
        return {}
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    device, vendor = _engine_key()
    out: dict[str, type] = {}
    for backend in _FSDP_BACKENDS:
        try:
            registered = EngineRegistry.get_engine_cls(_MODEL_TYPE, backend)
        except (AssertionError, ValueError):  # no FSDP LM engine for this device: nothing to replay on
            continue
        if issubclass(registered, RoutingReplayEngineMixin):
            out[backend] = registered
            continue
        if not issubclass(registered, FSDPEngineWithLMHead) or not vendor:
            warnings.warn(f"routing replay: {registered.__name__} ({backend}, {device}/{vendor}) is not verl's FSDP "
                          "LM engine; it runs without routing replay", stacklevel=2)
            continue
        cls = replay_engine_class(registered)
        try:
            EngineRegistry.register(model_type=_MODEL_TYPE, backend=backend, device=device, vendor=vendor)(cls)
        except AssertionError:  # verl refuses to register a key twice: a vendor plugin's own engine is there
            warnings.warn(f"routing replay: verl's registry already has {registered.__name__} for ({backend}, "
                          f"{device}, {vendor}); it runs without routing replay", stacklevel=2)
            continue
        out[backend] = cls
    return out
