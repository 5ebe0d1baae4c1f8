"""The ``Routes`` container: which experts every token used, compactly, and the layouts it travels through.

A route row is the ``top_k`` expert ids one token used in every MoE layer. ``Routes.experts`` is always
token-major ``[tokens, layers, top_k]``; the token axis is whatever layout the tokens are in right now
(padded-flat ``B*S``, packed/rmpad ``nnz``, one micro-batch, one Ulysses rank's slice), and every layout
transform below moves the route rows exactly as the same transform moves the tokens. The layer axis is
the model's MoE layers in model order (dense layers are not on it); ``RouteSpec.moe_layers`` maps it back
to decoder-layer indices.

Storage is uint8 up to 256 experts and uint16 above (Qwen3-30B-A3B: 48 x 8 = 384 B/token instead of
768 B in verl's int16 or 1,536 B in the engines' int32). Tokens without a recorded route (padding, the
last sampled token that the rollout engine never fed through the model) are marked in ``valid``; replay
routes them natively.

This module is pure torch (+ numpy for engine payloads): no transformers, no process state.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "RouteSpec",
    "Routes",
    "compact_dtype",
    "concat",
    "pack",
    "unpack",
    "select_sequences",
    "ulysses_pad_and_slice",
    "generation_routes",
    "padded_mask",
    "model_input_rows",
    "strip_model_input_pad",
    "compact_numpy_dtype",
    "compact_engine_routes",
    "decode_sglang_routed_experts",
]

# The key names a user can fix in their model config, per question asked.
_EXPERTS_KEYS = "num_experts / n_routed_experts / num_local_experts"
_TOPK_KEY = "num_experts_per_tok"


def compact_dtype(num_experts: int) -> torch.dtype:
    """uint8 when every id fits in a byte (<= 256 experts), uint16 up to 65,536 experts."""
    if num_experts <= 0:
        raise ValueError(f"num_experts must be positive, got {num_experts} (model config {_EXPERTS_KEYS})")
    if num_experts <= 256:
        return torch.uint8
    if num_experts <= 65536:
        return torch.uint16
    raise ValueError(f"{num_experts} experts do not fit in uint16 route storage (model config {_EXPERTS_KEYS})")


@dataclass(frozen=True)
class RouteSpec:
    """What a model's routes must look like.

    Attributes:
        num_experts: routed experts per MoE layer (ids must be < this).
        top_k: experts per token per layer (``num_experts_per_tok``).
        moe_layers: decoder-layer index of each entry of the Routes layer axis, ascending.
        num_hidden_layers: decoder layers in the model (rollout engines index their route buffers by it).
    """

    num_experts: int
    top_k: int
    moe_layers: tuple[int, ...]
    num_hidden_layers: int

    def __post_init__(self):
        if self.top_k <= 0 or self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}] ({_TOPK_KEY})")
        if not self.moe_layers:
            raise ValueError("RouteSpec needs at least one MoE layer: the model has no routed experts")
        if list(self.moe_layers) != sorted(set(self.moe_layers)) or self.moe_layers[-1] >= self.num_hidden_layers:
            raise ValueError(
                f"moe_layers {self.moe_layers} must be distinct, ascending decoder-layer indices "
                f"< num_hidden_layers={self.num_hidden_layers}"
            )

    @property
    def num_layers(self) -> int:
        """Length of the Routes layer axis (MoE layers only)."""
        return len(self.moe_layers)

    @property
    def dtype(self) -> torch.dtype:
        return compact_dtype(self.num_experts)

    def bytes_per_token(self) -> int:
        return self.num_layers * self.top_k * torch.empty((), dtype=self.dtype).element_size()


def _as_int_tensor(indices: Any, what: str) -> torch.Tensor:
    """An integer torch tensor in its own dtype (no widening copy: a rollout batch of routes in int64 would
    be 8x the uint8 size)."""
    if isinstance(indices, np.ndarray):
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"{what}: expert ids must be integers, got numpy dtype {indices.dtype}")
        if not indices.flags.writeable:  # e.g. np.frombuffer of an engine payload
            indices = indices.copy()
        indices = torch.from_numpy(np.ascontiguousarray(indices))
    if not isinstance(indices, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor or numpy array, got {type(indices).__name__}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"{what}: expert ids must be an integer dtype, got {indices.dtype}")
    return indices


# Tokens validated per step in from_indices: bounds the int64 working copy (~50 MB at 48 layers x top-8).
_CHUNK_TOKENS = 16384


def _missing_rows(indices: torch.Tensor) -> torch.Tensor:
    """Rows that are all zero in every layer: verl's agent loop and rollout backends fill tokens they never
    routed (the final sampled token, multi-turn tails) with zeros. A real row never repeats an expert, so
    with top_k > 1 an all-zero row cannot be a route."""
    if indices.shape[-1] < 2:
        return torch.zeros(indices.shape[0], dtype=torch.bool, device=indices.device)
    return (indices == 0).flatten(1).all(dim=1)


def _check_rows(
    indices: torch.Tensor, valid: Optional[torch.Tensor], num_experts: int, what: str, offset: int = 0
) -> None:
    """Range and no-duplicate checks on the rows that will be replayed (``offset``: first row's token index).

    ``indices`` ``[tokens, layers, top_k]`` in any integer dtype (the compact uint8/uint16 of a Routes too).
    One vectorised pass and one host sync when the rows are fine (this runs per micro-batch on replay); the
    error path then locates the first offending row (range errors first: they mean routes of another model)."""
    if indices.numel() == 0:
        return
    if indices.dtype == torch.uint16:  # few uint16 kernels on CPU: compare through an int32 copy
        indices = indices.view(torch.int16).to(torch.int32) & 0xFFFF
    out_of_range = None
    if torch.iinfo(indices.dtype).max >= num_experts:
        out_of_range = (indices >= num_experts).any(dim=-1)
    if indices.dtype.is_signed:
        negative = (indices < 0).any(dim=-1)
        out_of_range = negative if out_of_range is None else out_of_range | negative
    bad = out_of_range
    top_k = indices.shape[-1]
    if top_k > 1:
        # Every pair (i, i + d) of the top_k slots, compared on the slot-major copy (contiguous slices).
        slots = indices.movedim(-1, 0).contiguous()
        for d in range(1, top_k):
            repeat = (slots[d:] == slots[:-d]).any(dim=0)
            bad = repeat if bad is None else bad | repeat
    if bad is None:
        return
    if valid is not None:
        bad = bad & valid[:, None]
    if not bool(bad.any()):
        return
    if out_of_range is not None and valid is not None:
        out_of_range = out_of_range & valid[:, None]
    if out_of_range is not None and bool(out_of_range.any()):
        t, layer = (int(v) for v in out_of_range.nonzero()[0])
        row = indices[t, layer]
        id_ = int(row[(row < 0) | (row >= num_experts)][0])
        raise ValueError(
            f"{what}: expert id {id_} out of range [0, {num_experts}) at token row {offset + t}, layer {layer}; "
            f"the routes do not belong to a model with num_experts={num_experts} (model config {_EXPERTS_KEYS})"
        )
    t, layer = (int(v) for v in bad.nonzero()[0])
    raise ValueError(
        f"{what}: token row {offset + t} repeats an expert in layer {layer} ({indices[t, layer].tolist()}); a "
        f"route picks {top_k} distinct experts of num_experts={num_experts}"
    )


@dataclass(frozen=True, eq=False)
class Routes:
    """Per-token expert ids ``experts[token, moe_layer, k]`` (uint8/uint16) plus which rows are real.

    Build with :meth:`from_indices` (or the engine/verl converters), which validates and compacts;
    the constructor itself only checks dtype and shapes (:meth:`check_ids` checks the ids; replay runs it).

    Attributes:
        experts: ``[tokens, layers, top_k]`` uint8 (<= 256 experts) or uint16.
        num_experts: routed experts per layer; ids are < this.
        valid: ``[tokens]`` bool, False where no route was recorded (the router picks natively there),
            or None when every row is valid.
    """

    experts: torch.Tensor
    num_experts: int
    valid: Optional[torch.Tensor] = None

    def __post_init__(self):
        want = compact_dtype(self.num_experts)
        if self.experts.dtype != want:
            raise ValueError(
                f"Routes.experts must be {want} for num_experts={self.num_experts}, got {self.experts.dtype}; "
                "build Routes with Routes.from_indices(...) to convert"
            )
        if self.experts.dim() != 3:
            raise ValueError(f"Routes.experts must be [tokens, layers, top_k], got shape {tuple(self.experts.shape)}")
        if self.valid is not None and (self.valid.dtype != torch.bool or self.valid.shape != self.experts.shape[:1]):
            raise ValueError(
                f"Routes.valid must be a bool tensor of shape [{self.experts.shape[0]}], got "
                f"{self.valid.dtype} {tuple(self.valid.shape)}"
            )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_indices(
        cls,
        indices: Any,
        num_experts: int,
        valid: Optional[torch.Tensor] = None,
        *,
        zero_rows_missing: bool = False,
        what: str = "routes",
    ) -> "Routes":
        """Validate integer expert ids ``[tokens, layers, top_k]`` (any int dtype, torch or numpy) and compact.

        ``zero_rows_missing`` marks all-zero rows invalid (verl's/engines' filler for unrouted tokens).
        Raises ValueError on a wrong rank, a non-integer dtype, ids outside ``[0, num_experts)`` or an expert
        repeated within a row (on valid rows only).
        """
        raw = _as_int_tensor(indices, what)
        if raw.dim() != 3:
            raise ValueError(f"{what}: expected [tokens, layers, top_k], got shape {tuple(raw.shape)}")
        dtype = compact_dtype(num_experts)
        if valid is not None:
            valid = valid.to(device=raw.device, dtype=torch.bool)
            if valid.shape != raw.shape[:1]:
                raise ValueError(f"{what}: valid has shape {tuple(valid.shape)}, expected [{raw.shape[0]}]")
        # Validate and narrow chunk by chunk (uint16 has no index_put on CPU: write through the int16 view).
        out = torch.empty(raw.shape, dtype=dtype, device=raw.device)
        sink = out.view(torch.int16) if dtype == torch.uint16 else out
        masks = []
        for start in range(0, raw.shape[0], _CHUNK_TOKENS):
            idx = raw[start : start + _CHUNK_TOKENS].to(torch.int64)
            mask = None if valid is None else valid[start : start + _CHUNK_TOKENS]
            if zero_rows_missing:
                present = ~_missing_rows(idx)
                mask = present if mask is None else mask & present
            _check_rows(idx, mask, num_experts, what, offset=start)
            if mask is not None:
                # Invalid rows are never replayed; zero them so equal routes compare equal byte for byte.
                idx = idx.masked_fill(~mask[:, None, None], 0)
                masks.append(mask)
            sink[start : start + idx.shape[0]] = idx.to(dtype).view(sink.dtype)
        valid = torch.cat(masks) if masks else None
        if valid is not None and bool(valid.all()):
            valid = None
        return cls(out, num_experts, valid)

    @classmethod
    def empty(cls, num_tokens: int, num_layers: int, top_k: int, num_experts: int, device=None) -> "Routes":
        """``num_tokens`` rows with no recorded route (all routed natively on replay)."""
        experts = torch.zeros(num_tokens, num_layers, top_k, dtype=compact_dtype(num_experts), device=device)
        return cls(experts, num_experts, torch.zeros(num_tokens, dtype=torch.bool, device=device))

    def __repr__(self) -> str:  # never dump a rollout batch of ids into a log
        missing = 0 if self.valid is None else int((~self.valid).sum())
        return (
            f"Routes(tokens={self.num_tokens}, layers={self.num_layers}, top_k={self.top_k}, "
            f"num_experts={self.num_experts}, dtype={self.experts.dtype}, missing={missing}, device={self.device})"
        )

    # ---------------------------------------------------------------- shape
    @property
    def num_tokens(self) -> int:
        return self.experts.shape[0]

    @property
    def num_layers(self) -> int:
        return self.experts.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[2]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.valid is None else self.valid.numel()
        return self.experts.numel() * self.experts.element_size() + extra

    @property
    def device(self) -> torch.device:
        return self.experts.device

    def valid_mask(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.num_tokens, dtype=torch.bool, device=self.device)

    def layer(self, i: int) -> torch.Tensor:
        """int64 ``[tokens, top_k]`` ids of MoE layer ``i`` (what a router's top-k would return)."""
        return self.experts[:, i, :].to(torch.int64)

    def to(self, device) -> "Routes":
        valid = None if self.valid is None else self.valid.to(device)
        return Routes(self.experts.to(device), self.num_experts, valid)

    def equal(self, other: "Routes") -> bool:
        """Same ids on the same tokens, same validity."""
        return (
            self.num_experts == other.num_experts
            and self.experts.shape == other.experts.shape
            and bool((self.valid_mask() == other.valid_mask()).all())
            and bool((self.experts == other.experts).all())
        )

    def check(self, spec: RouteSpec, num_tokens: Optional[int] = None, what: str = "routes") -> "Routes":
        """Raise ValueError unless these routes fit ``spec`` (and have ``num_tokens`` rows); return self."""
        if self.num_layers != spec.num_layers:
            raise ValueError(
                f"{what} have {self.num_layers} MoE layers but the model has {spec.num_layers} "
                f"(decoder layers {list(spec.moe_layers)} of num_hidden_layers={spec.num_hidden_layers}); "
                "routes from another model, or a dense-layer mismatch (first_k_dense_replace / mlp_only_layers / "
                "decoder_sparse_step)"
            )
        if self.top_k != spec.top_k:
            raise ValueError(f"{what} have top_k={self.top_k} but the model has {_TOPK_KEY}={spec.top_k}")
        if self.num_experts != spec.num_experts:
            raise ValueError(
                f"{what} were built for num_experts={self.num_experts} but the model has {spec.num_experts} "
                f"({_EXPERTS_KEYS})"
            )
        if num_tokens is not None and self.num_tokens != num_tokens:
            raise ValueError(
                f"{what} have {self.num_tokens} token rows but the forward routes {num_tokens} tokens: routes must "
                "be in the same layout as the model input (B*S rows for padded [B, S], nnz for packed [1, nnz], "
                "after micro-batching and Ulysses slicing)"
            )
        return self

    def check_ids(self, what: str = "routes") -> "Routes":
        """Raise ValueError unless every row with a route holds ``top_k`` distinct expert ids in
        ``[0, num_experts)``; return self. The constructor does not look at the ids (Routes made by
        :meth:`from_indices` and the converters are checked there); replay runs this on every Routes it is
        given, so directly built ones fail with the offending token row and layer instead of an indexing
        error, or a silent double count, inside the experts. One vectorised pass, one host sync."""
        _check_rows(self.experts, self.valid, self.num_experts, what)
        return self

    # ---------------------------------------------------------------- token-axis transforms
    def take(self, index: torch.Tensor) -> "Routes":
        """Rows ``index`` (any gather: a slice of a micro-batch, a permutation, packing)."""
        index = index.to(device=self.device, dtype=torch.int64)
        valid = None if self.valid is None else self.valid.index_select(0, index)
        return Routes(_gather_rows(self.experts, index), self.num_experts, valid)

    def narrow(self, start: int, length: int) -> "Routes":
        valid = None if self.valid is None else self.valid.narrow(0, start, length)
        return Routes(self.experts.narrow(0, start, length), self.num_experts, valid)

    def split(self, sizes: Sequence[int]) -> list["Routes"]:
        """Consecutive token chunks, e.g. micro-batches of a packed batch by their token counts."""
        if sum(sizes) != self.num_tokens:
            raise ValueError(f"split sizes sum to {sum(sizes)} but routes have {self.num_tokens} token rows")
        out, start = [], 0
        for n in sizes:
            out.append(self.narrow(start, n))
            start += n
        return out

    def pad_tokens(self, n: int) -> "Routes":
        """Append ``n`` rows without a route (the pad tokens verl appends for Ulysses)."""
        if n == 0:
            return self
        return concat([self, Routes.empty(n, self.num_layers, self.top_k, self.num_experts, self.device)])

    # ---------------------------------------------------------------- converters
    @classmethod
    def from_engine(cls, routed_experts: Any, spec: RouteSpec, num_tokens: Optional[int] = None) -> "Routes":
        """One sequence's routes as a rollout engine returns them: vLLM's ``CompletionOutput.routed_experts``
        (numpy ``[n, num_hidden_layers, top_k]``), SGLang's decoded payload (see :meth:`from_sglang`) or
        verl's ``AgentLoopOutput.routed_experts``.

        The engines index layers by absolute decoder layer, so dense layers are dropped via
        ``spec.moe_layers``; a layer axis already equal to the MoE layer count is taken as is. vLLM never
        feeds the final sampled token through the model (``n = num_tokens - 1``): rows beyond ``n`` up to
        ``num_tokens`` are appended as missing. All-zero rows are missing too.
        """
        idx = _as_int_tensor(routed_experts, "engine routed_experts")
        if idx.dim() == 2 and idx.shape[1] == spec.num_hidden_layers * spec.top_k:
            idx = idx.view(idx.shape[0], spec.num_hidden_layers, spec.top_k)
        if idx.dim() != 3:
            raise ValueError(f"engine routed_experts: expected [tokens, layers, top_k], got {tuple(idx.shape)}")
        idx = _select_moe_layers(idx, spec, "engine routed_experts")
        if idx.shape[2] != spec.top_k:
            raise ValueError(
                f"engine routed_experts have top_k={idx.shape[2]} but the model has {_TOPK_KEY}={spec.top_k}"
            )
        routes = cls.from_indices(idx, spec.num_experts, zero_rows_missing=True, what="engine routed_experts")
        if num_tokens is not None:
            if routes.num_tokens > num_tokens:
                raise ValueError(
                    f"engine routed_experts have {routes.num_tokens} token rows for a sequence of {num_tokens} "
                    "tokens (prompt + response): the routes belong to a longer sequence"
                )
            routes = routes.pad_tokens(num_tokens - routes.num_tokens)
        return routes

    @classmethod
    def from_sglang(cls, meta_info: dict, spec: RouteSpec, num_tokens: Optional[int] = None) -> "Routes":
        """SGLang ``/generate`` output (or its ``meta_info``) ``["routed_experts"]``, decoded by
        :func:`decode_sglang_routed_experts` (SGLang >= 0.5.11: a base64 string of int32
        ``[seq_len - 1, num_hidden_layers, top_k]``, whatever ``skip_tokenizer_init``; older releases with
        ``skip_tokenizer_init``: a tensor), then as :meth:`from_engine` (dense layers dropped, the final token
        appended without a route)."""
        payload = meta_info.get("meta_info", meta_info).get("routed_experts")
        if payload is None:
            raise ValueError(
                "SGLang output has no meta_info['routed_experts']: launch with enable_return_routed_experts "
                "(verl: actor_rollout_ref.rollout.enable_rollout_routing_replay=True)"
            )
        return cls.from_engine(decode_sglang_routed_experts(payload, spec), spec, num_tokens)

    @classmethod
    def from_verl_batch(cls, routed_experts: torch.Tensor, attention_mask: torch.Tensor, spec: RouteSpec) -> "Routes":
        """verl's ``batch["routed_experts"]`` ``[B, S, layers, top_k]`` (any integer dtype: uint8 / uint16 as
        the ``hf_cpu`` server sends them, int16 from verl's own agent loop path, or what :meth:`to_verl_batch`
        stored), aligned with ``input_ids`` ``[B, S]`` (left-padded prompt +
        right-padded response). Returns the padded-flat layout: ``B*S`` rows, row ``b*S + s`` is token
        ``[b, s]``, rows of padding or without a recorded route invalid. :func:`pack` turns it into rmpad."""
        if routed_experts.dim() != 4 or routed_experts.shape[:2] != attention_mask.shape:
            raise ValueError(
                f"batch['routed_experts'] {tuple(routed_experts.shape)} must be [B, S, layers, top_k] with "
                f"[B, S] = attention_mask {tuple(attention_mask.shape)}"
            )
        flat = routed_experts.flatten(0, 1)
        idx = _select_moe_layers(_as_int_tensor(flat, "batch['routed_experts']"), spec, "batch['routed_experts']")
        routes = cls.from_indices(
            idx, spec.num_experts, attention_mask.flatten().bool(), zero_rows_missing=True, what="batch['routed_experts']"
        )
        return routes.check(spec, what="batch['routed_experts']")

    def to_verl_batch(self, batch_size: int, seq_len: int) -> torch.Tensor:
        """Padded-flat routes (``B*S`` rows) as a ``[B, S, layers, top_k]`` tensor for ``batch["routed_experts"]``,
        in compact dtype, missing rows zero (what :meth:`from_verl_batch` reads back)."""
        if self.num_tokens != batch_size * seq_len:
            raise ValueError(f"routes have {self.num_tokens} rows, not B*S = {batch_size}*{seq_len}: unpack() first")
        return self.experts.view(batch_size, seq_len, self.num_layers, self.top_k)

    @classmethod
    def from_nested(cls, routed: torch.Tensor, input_ids: torch.Tensor, spec: RouteSpec) -> "Routes":
        """verl's per-token field ``batch["routed_experts"]`` in its engine layout, a nested ``[b, j, layers,
        top_k]`` tensor (``left_right_2_no_padding`` makes it; the v1 agent loop stores it that way), as packed
        Routes: one row per token of the nested ``input_ids``, in ``input_ids.values()`` order.

        The layer axis may be the model's MoE layers or all decoder layers (rollout engines); all-zero rows
        (verl's filler for tokens the rollout never routed) become rows without a route."""
        if not getattr(routed, "is_nested", False):
            raise ValueError(
                "batch['routed_experts'] must be a nested per-token tensor aligned with the nested input_ids "
                f"(verl's left_right_2_no_padding makes it one); got a dense tensor of shape {tuple(routed.shape)}"
            )
        want = input_ids.offsets().diff().cpu()
        have = routed.offsets().diff().cpu()
        if have.shape != want.shape or not torch.equal(have, want):
            raise ValueError(
                f"batch['routed_experts'] sequence lengths {have.tolist()} differ from input_ids lengths "
                f"{want.tolist()}: routes must cover prompt + response of every sequence, token for token"
            )
        return cls.from_engine(routed.values(), spec)

    def to_nested(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Packed routes (one row per token of the nested ``input_ids``) as the nested ``[b, j, layers, top_k]``
        verl carries in ``batch["routed_experts"]``, in the compact dtype (uint8 / uint16: verl moves the field
        in whatever dtype it has), sharing ``input_ids``' offsets (inverse of :meth:`from_nested`)."""
        if self.num_tokens != input_ids.values().shape[0]:
            raise RuntimeError(
                f"{self.num_tokens} route rows for {input_ids.values().shape[0]} tokens: the recorder did not see "
                "every token exactly once"
            )
        values = self.experts.contiguous()
        return torch.nested.nested_tensor_from_jagged(values, offsets=input_ids.offsets().to(values.device))


# ---------------------------------------------------------------- rollout engine payloads (one sequence, numpy)
_LAYERS_KEY = "num_hidden_layers"


def compact_numpy_dtype(num_experts: int) -> np.dtype:
    """:func:`compact_dtype` as a numpy dtype (uint8 up to 256 experts, uint16 above)."""
    return np.dtype(np.uint8) if compact_dtype(num_experts) == torch.uint8 else np.dtype(np.uint16)


def compact_engine_routes(routed_experts: Any, spec: RouteSpec, what: str = "engine routed_experts") -> np.ndarray:
    """One sequence's routes as an engine returns them (vLLM's ``CompletionOutput.routed_experts``: numpy int32
    ``[n, num_hidden_layers, top_k]``) in the compact dtype, same shape, for verl's agent loop: 1/4 of the
    int32 bytes for <= 256 experts. All layers are kept (dense ones hold zeros; :meth:`Routes.from_engine`
    drops them); rows of zeros stay zero (tokens the engine never routed).

    Raises ValueError on a non-integer dtype, a shape other than ``[n, num_hidden_layers, top_k]`` (or the
    flat ``[n, num_hidden_layers * top_k]``) of ``spec``, or ids outside ``[0, num_experts)``."""
    if isinstance(routed_experts, torch.Tensor):
        routed_experts = routed_experts.cpu().numpy()
    arr = np.asarray(routed_experts)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expert ids must be integers, got dtype {arr.dtype}")
    layers, top_k = spec.num_hidden_layers, spec.top_k
    if arr.ndim == 2 and arr.shape[1] == layers * top_k:
        arr = arr.reshape(arr.shape[0], layers, top_k)
    if arr.ndim != 3 or arr.shape[1:] != (layers, top_k):
        raise ValueError(
            f"{what}: shape {tuple(arr.shape)} is not [tokens, {_LAYERS_KEY}={layers}, {_TOPK_KEY}={top_k}]: "
            f"routes of another model, or a model config that differs from the served one ({_LAYERS_KEY} / "
            f"{_TOPK_KEY})"
        )
    dtype = compact_numpy_dtype(spec.num_experts)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= spec.num_experts:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what}: expert id {bad} out of range [0, {spec.num_experts}): the routes do not belong to a model "
                f"with num_experts={spec.num_experts} (model config {_EXPERTS_KEYS})"
            )
    return arr.astype(dtype, copy=arr.dtype != dtype)


def decode_sglang_routed_experts(payload: Any, spec: RouteSpec) -> np.ndarray:
    """SGLang's ``meta_info["routed_experts"]`` for one request, as compact numpy ``[n, num_hidden_layers,
    top_k]`` (:func:`compact_engine_routes`).

    SGLang >= 0.5.11 (checked against 0.5.12) sends a base64 string of the raw bytes of an int32 tensor
    ``[seq_len - 1, num_hidden_layers, top_k]`` in BOTH ``skip_tokenizer_init`` settings: the detokenizer
    encodes it (``DetokenizerManager._b64_encode_per_request``) or, when ``skip_tokenizer_init`` bypasses the
    detokenizer, the tokenizer manager does (``TokenizerManager``'s ``meta_info["routed_experts"]``:
    ``pybase64.b64encode(val.numpy().tobytes())``); the ids come from an int32 host buffer
    (``state_capturer/base.py``), one row per position ``[0, seq_len - 1)``. Older SGLang with
    ``skip_tokenizer_init`` handed the tensor itself: accepted too.

    Raises ValueError on a payload that is not base64, a byte count that is not whole int32s, an id count
    that is not a multiple of ``num_hidden_layers * top_k``, or ids outside ``[0, num_experts)``."""
    what = "SGLang meta_info['routed_experts']"
    if isinstance(payload, str | bytes):
        try:
            raw = base64.b64decode(payload, validate=True)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise ValueError(f"{what} is not base64: {exc}") from exc
        if len(raw) % 4:
            raise ValueError(f"{what} holds {len(raw)} bytes, not whole int32 expert ids")
        flat = np.frombuffer(raw, dtype=np.int32)
    else:
        if isinstance(payload, torch.Tensor):
            payload = payload.cpu().numpy()
        flat = np.asarray(payload)
    width = spec.num_hidden_layers * spec.top_k
    if flat.size % width:
        raise ValueError(
            f"{what} holds {flat.size} ids, not a multiple of {_LAYERS_KEY} * {_TOPK_KEY} = "
            f"{spec.num_hidden_layers} * {spec.top_k} = {width}: routes of another model, or a model config that "
            "differs from the served one"
        )
    return compact_engine_routes(flat.reshape(-1, spec.num_hidden_layers, spec.top_k), spec, what)


def _gather_rows(experts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """index_select on the token axis, moving each row as the widest word that divides it: a Qwen3-30B row
    is 384 bytes = 48 int64, and gathering 48 words is several times faster than 384 bytes one by one."""
    n, layers, top_k = experts.shape
    row_bytes = layers * top_k * experts.element_size()
    word = next(w for w in (torch.int64, torch.int32, torch.int16, torch.uint8) if row_bytes % w.itemsize == 0)
    if not experts.is_contiguous() or n == 0:
        return experts.index_select(0, index)
    words = experts.view(n, -1).view(torch.uint8).view(word)
    return words.index_select(0, index).view(experts.dtype).view(-1, layers, top_k)


def _select_moe_layers(idx: torch.Tensor, spec: RouteSpec, what: str) -> torch.Tensor:
    layers = idx.shape[1]
    if layers == spec.num_layers:
        return idx
    if layers == spec.num_hidden_layers:
        return idx[:, list(spec.moe_layers)]
    raise ValueError(
        f"{what} have {layers} layers but the model has {spec.num_layers} MoE layers out of "
        f"num_hidden_layers={spec.num_hidden_layers}: routes from another model, or a dense-layer mismatch "
        "(first_k_dense_replace / mlp_only_layers / decoder_sparse_step)"
    )


def concat(parts: Sequence[Routes]) -> Routes:
    """Routes of consecutive token chunks, in order (inverse of :meth:`Routes.split`)."""
    if not parts:
        raise ValueError("concat needs at least one Routes")
    first = parts[0]
    for p in parts[1:]:
        if p.num_experts != first.num_experts or p.experts.shape[1:] != first.experts.shape[1:]:
            raise ValueError(
                f"cannot concat routes of shape {tuple(p.experts.shape[1:])}/{p.num_experts} experts with "
                f"{tuple(first.experts.shape[1:])}/{first.num_experts}"
            )
    experts = torch.cat([p.experts for p in parts])
    if all(p.valid is None for p in parts):
        return Routes(experts, first.num_experts)
    return Routes(experts, first.num_experts, torch.cat([p.valid_mask() for p in parts]))


def generation_routes(forwards: Sequence[Routes], batch_size: int, final_token: bool = True) -> Routes:
    """Routes of a KV-cached ``generate()`` recorded with ``RoutingReplay.record()``: the prefill forward
    (``[B, P]`` -> ``B*P`` rows) then one forward per decode step (``[B, 1]`` -> ``B`` rows), as the
    padded-flat layout of the generated sequences: row ``b*S + s`` is token ``[b, s]`` of ``generate``'s
    output. Like vLLM, the last sampled token was never fed through the model; ``final_token`` appends a
    row without a route for it so that ``S`` equals the output length."""
    if not forwards:
        raise ValueError("generation_routes needs the prefill forward's routes")
    steps = []
    for i, r in enumerate(forwards):
        if r.num_tokens % batch_size:
            raise ValueError(f"forward {i} routed {r.num_tokens} tokens, not a multiple of batch_size={batch_size}")
        steps.append(r.experts.view(batch_size, -1, r.num_layers, r.top_k))
    last = forwards[0]
    valid = [f.valid_mask().view(batch_size, -1) for f in forwards]
    if final_token:
        steps.append(steps[0].new_zeros(batch_size, 1, last.num_layers, last.top_k))
        valid.append(torch.zeros(batch_size, 1, dtype=torch.bool, device=last.device))
    experts = torch.cat(steps, dim=1).flatten(0, 1)
    return Routes(experts, last.num_experts, torch.cat(valid, dim=1).flatten())


def _unpad_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    # The rmpad order of verl's unpad_input (flash-attn's bert_padding and verl's fallback compute exactly
    # this; the layout property tests check it against verl). Computed directly: unpad_input would also
    # gather a dummy hidden-state tensor, which costs more than the routes themselves.
    return torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()


def pack(routes: Routes, attention_mask: torch.Tensor, indices: Optional[torch.Tensor] = None) -> Routes:
    """Padded-flat (``B*S`` rows) -> packed/rmpad (``nnz`` rows), the order of verl's ``unpad_input``
    (``input_ids_rmpad`` of shape ``[1, nnz]``). ``indices``: the ones ``unpad_input`` returned, if at hand
    (verl keeps them as the batch's non-tensor ``indices``)."""
    if routes.num_tokens != attention_mask.numel():
        raise ValueError(
            f"pack: routes have {routes.num_tokens} rows but attention_mask {tuple(attention_mask.shape)} "
            f"has {attention_mask.numel()} tokens"
        )
    return routes.take(_unpad_indices(attention_mask) if indices is None else indices)


def unpack(routes: Routes, attention_mask: torch.Tensor) -> Routes:
    """Packed (``nnz`` rows) -> padded-flat (``B*S`` rows, padding invalid); inverse of :func:`pack`."""
    indices = _unpad_indices(attention_mask).to(routes.device)
    if routes.num_tokens != indices.numel():
        raise ValueError(
            f"unpack: routes have {routes.num_tokens} rows but attention_mask has {indices.numel()} tokens"
        )
    total = attention_mask.numel()
    # uint16 has no index_put on CPU: scatter through the same-width signed view.
    store = routes.experts.view(torch.int16) if routes.experts.dtype == torch.uint16 else routes.experts
    experts = store.new_zeros((total, *store.shape[1:]))
    experts[indices] = store
    valid = torch.zeros(total, dtype=torch.bool, device=routes.device)
    valid[indices] = routes.valid_mask()
    return Routes(experts.view(routes.experts.dtype), routes.num_experts, valid)


def select_sequences(routes: Routes, seqlens: Sequence[int] | torch.Tensor, order: Sequence[int]) -> Routes:
    """Packed routes of sequences ``order`` (in that order) from packed routes of sequences with lengths
    ``seqlens``: what a micro-batch split or verl's dynamic-batch re-ordering (``rearrange_micro_batches``
    index lists) does to the batch."""
    seqlens = torch.as_tensor(seqlens, dtype=torch.int64)
    if int(seqlens.sum()) != routes.num_tokens:
        raise ValueError(f"sequence lengths sum to {int(seqlens.sum())} but routes have {routes.num_tokens} rows")
    starts = torch.cumsum(seqlens, 0) - seqlens
    order = torch.as_tensor(list(order), dtype=torch.int64)
    if order.numel() == 0:
        return routes.narrow(0, 0)
    index = torch.cat([torch.arange(int(starts[i]), int(starts[i] + seqlens[i])) for i in order.tolist()])
    return routes.take(index)


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


# ---------------------------------------------------------------- the model-input layouts of verl's FSDP engine
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
