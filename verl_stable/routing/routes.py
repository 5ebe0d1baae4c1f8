"""The ``Routes`` value type: which experts every token used, compactly, and the checks on its ids.

A route row is the ``top_k`` expert ids one token used in every MoE layer. ``Routes.experts`` is always
token-major ``[tokens, layers, top_k]``; the token axis is whatever layout the tokens are in right now
(padded-flat ``B*S``, packed/rmpad ``nnz``, one micro-batch, one Ulysses rank's slice), and every layout
transform moves the route rows exactly as the same transform moves the tokens. The layer axis is
the model's MoE layers in model order (dense layers are not on it); ``RouteSpec.moe_layers`` maps it back
to decoder-layer indices.

Storage is uint8 up to 256 experts and uint16 above (Qwen3-30B-A3B: 48 x 8 = 384 B/token instead of
768 B in verl's int16 or 1,536 B in the engines' int32). Tokens without a recorded route (padding, the
last sampled token that the rollout engine never fed through the model) are marked in ``valid``; replay
routes them natively.

Where Routes come from and go to is elsewhere: every producer's format (vLLM / SGLang payloads, verl's
padded and nested batch fields) in :mod:`verl_stable.routing.codecs`, which validates ids once at that
boundary; the token-axis transforms (pack, unpack, micro-batch selection) in
:mod:`verl_stable.routing.layouts`; the model-input layouts of verl's FSDP engine in
:mod:`verl_stable.routing.fsdp`. Here: the type, its id checks and the row moves every layout is built
from (:meth:`Routes.take`, :meth:`Routes.narrow`, :func:`concat`).

This module is pure torch (+ numpy arrays accepted as ids): no verl, no transformers, no process state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "EXPERTS_CONFIG_KEYS",
    "TOPK_CONFIG_KEY",
    "RouteSpec",
    "Routes",
    "as_int_tensor",
    "compact_dtype",
    "concat",
    "missing_rows",
]

# The key names a user can fix in their model config, per question asked (error messages name them).
EXPERTS_CONFIG_KEYS = "num_experts / n_routed_experts / num_local_experts"
TOPK_CONFIG_KEY = "num_experts_per_tok"


def compact_dtype(num_experts: int) -> torch.dtype:
    """uint8 when every id fits in a byte (<= 256 experts), uint16 up to 65,536 experts."""
    if num_experts <= 0:
        raise ValueError(f"num_experts must be positive, got {num_experts} (model config {EXPERTS_CONFIG_KEYS})")
    if num_experts <= 256:
        return torch.uint8
    if num_experts <= 65536:
        return torch.uint16
    raise ValueError(f"{num_experts} experts do not fit in uint16 route storage (model config {EXPERTS_CONFIG_KEYS})")


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
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}] ({TOPK_CONFIG_KEY})")
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


def as_int_tensor(indices: Any, what: str) -> torch.Tensor:
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


def missing_rows(indices: torch.Tensor) -> torch.Tensor:
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
            f"the routes do not belong to a model with num_experts={num_experts} (model config {EXPERTS_CONFIG_KEYS})"
        )
    t, layer = (int(v) for v in bad.nonzero()[0])
    raise ValueError(
        f"{what}: token row {offset + t} repeats an expert in layer {layer} ({indices[t, layer].tolist()}); a "
        f"route picks {top_k} distinct experts of num_experts={num_experts}"
    )


@dataclass(frozen=True, eq=False)
class Routes:
    """Per-token expert ids ``experts[token, moe_layer, k]`` (uint8/uint16) plus which rows are real.

    Build with :meth:`from_indices` (or a producer's codec in ``codecs.py``), which validates and compacts;
    the constructor itself only checks dtype and shapes (:meth:`check_ids` checks the ids; replay runs it on
    Routes whose ids were not checked when they were built).

    Attributes:
        experts: ``[tokens, layers, top_k]`` uint8 (<= 256 experts) or uint16.
        num_experts: routed experts per layer; ids are < this.
        valid: ``[tokens]`` bool, False where no route was recorded (the router picks natively there),
            or None when every row is valid.
        ids_checked: every valid row was found to hold ``top_k`` distinct ids in ``[0, num_experts)`` when
            these Routes were built (:meth:`from_indices`, the codecs); the row moves (:meth:`take`,
            :meth:`narrow`, :func:`concat`, the layouts) keep it, since they only move rows, drop rows or add
            rows without a route. Replay checks the ids of Routes without it. Like the other fields, the
            tensors are not written after construction, so the flag stays true.
    """

    experts: torch.Tensor
    num_experts: int
    valid: Optional[torch.Tensor] = None
    ids_checked: bool = field(default=False, kw_only=True, compare=False)

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
        raw = as_int_tensor(indices, what)
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
        # uint8 ids (compact routes as they travel) are checked as they are: no int64 working copy.
        wide = torch.uint8 if raw.dtype == dtype == torch.uint8 else torch.int64
        masks = []
        for start in range(0, raw.shape[0], _CHUNK_TOKENS):
            idx = raw[start : start + _CHUNK_TOKENS].to(wide)
            mask = None if valid is None else valid[start : start + _CHUNK_TOKENS]
            if zero_rows_missing:
                present = ~missing_rows(idx)
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
        return cls(out, num_experts, valid, ids_checked=True)

    @classmethod
    def empty(cls, num_tokens: int, num_layers: int, top_k: int, num_experts: int, device=None) -> "Routes":
        """``num_tokens`` rows with no recorded route (all routed natively on replay)."""
        experts = torch.zeros(num_tokens, num_layers, top_k, dtype=compact_dtype(num_experts), device=device)
        no_route = torch.zeros(num_tokens, dtype=torch.bool, device=device)
        return cls(experts, num_experts, no_route, ids_checked=True)

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
        return Routes(self.experts.to(device), self.num_experts, valid, ids_checked=self.ids_checked)

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
            raise ValueError(f"{what} have top_k={self.top_k} but the model has {TOPK_CONFIG_KEY}={spec.top_k}")
        if self.num_experts != spec.num_experts:
            raise ValueError(
                f"{what} were built for num_experts={self.num_experts} but the model has {spec.num_experts} "
                f"({EXPERTS_CONFIG_KEYS})"
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
        :meth:`from_indices` and the codecs are checked there and carry ``ids_checked``); replay runs this on
        every Routes it is given without that mark, so directly built ones fail with the offending token row
        and layer instead of an indexing error, or a silent double count, inside the experts. One vectorised
        pass, one host sync."""
        _check_rows(self.experts, self.valid, self.num_experts, what)
        return self

    # ---------------------------------------------------------------- token-axis transforms
    def take(self, index: torch.Tensor) -> "Routes":
        """Rows ``index`` (any gather: a slice of a micro-batch, a permutation, packing)."""
        index = index.to(device=self.device, dtype=torch.int64)
        valid = None if self.valid is None else self.valid.index_select(0, index)
        return Routes(_gather_rows(self.experts, index), self.num_experts, valid, ids_checked=self.ids_checked)

    def narrow(self, start: int, length: int) -> "Routes":
        valid = None if self.valid is None else self.valid.narrow(0, start, length)
        return Routes(self.experts.narrow(0, start, length), self.num_experts, valid, ids_checked=self.ids_checked)

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
    checked = all(p.ids_checked for p in parts)
    if all(p.valid is None for p in parts):
        return Routes(experts, first.num_experts, ids_checked=checked)
    return Routes(experts, first.num_experts, torch.cat([p.valid_mask() for p in parts]), ids_checked=checked)
