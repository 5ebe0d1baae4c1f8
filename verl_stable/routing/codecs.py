"""Every producer's route format, in and out of :class:`~verl_stable.routing.routes.Routes`.

* Rollout engines, one sequence at a time: vLLM's ``CompletionOutput.routed_experts`` and SGLang's
  ``meta_info["routed_experts"]`` (:func:`compact_engine_routes`, :func:`decode_sglang_routed_experts`: the
  server side, compact numpy for verl's agent loop; :func:`from_engine`, :func:`from_sglang`: to Routes).
* verl's batch field ``batch["routed_experts"]``: padded ``[B, S, layers, top_k]`` (:func:`from_verl_batch`,
  :func:`to_verl_batch`) and the per-token nested ``[b, j, layers, top_k]`` the FSDP engine receives
  (:func:`from_nested`, :func:`to_nested`).

This is the boundary where ids from outside (a rollout server, a batch verl moved between workers) become
Routes: every decoder here range- and duplicate-checks each row once and returns Routes marked
``ids_checked``, which replay trusts instead of checking the same rows again. All-zero rows (the filler of
verl's agent loop and the engines for tokens never routed) become rows without a route.

Pure torch + numpy: no verl, no transformers.
"""

from __future__ import annotations

import base64
from typing import Any, Optional

import numpy as np
import torch

from verl_stable.routing.routes import (
    EXPERTS_CONFIG_KEYS,
    TOPK_CONFIG_KEY,
    RouteSpec,
    Routes,
    as_int_tensor,
    compact_dtype,
)

__all__ = [
    "compact_numpy_dtype",
    "compact_engine_routes",
    "decode_sglang_routed_experts",
    "from_engine",
    "from_sglang",
    "from_verl_batch",
    "to_verl_batch",
    "from_nested",
    "to_nested",
]

LAYERS_CONFIG_KEY = "num_hidden_layers"
_BATCH_FIELD = "batch['routed_experts']"


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


# ---------------------------------------------------------------- rollout engine payloads (one sequence, numpy)
def compact_numpy_dtype(num_experts: int) -> np.dtype:
    """:func:`~verl_stable.routing.routes.compact_dtype` as a numpy dtype (uint8 up to 256 experts, uint16
    above)."""
    return np.dtype(np.uint8) if compact_dtype(num_experts) == torch.uint8 else np.dtype(np.uint16)


def compact_engine_routes(routed_experts: Any, spec: RouteSpec, what: str = "engine routed_experts") -> np.ndarray:
    """One sequence's routes as an engine returns them (vLLM's ``CompletionOutput.routed_experts``: numpy int32
    ``[n, num_hidden_layers, top_k]``) in the compact dtype, same shape, for verl's agent loop: 1/4 of the
    int32 bytes for <= 256 experts. All layers are kept (dense ones hold zeros; :func:`from_engine` drops
    them); rows of zeros stay zero (tokens the engine never routed).

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
            f"{what}: shape {tuple(arr.shape)} is not [tokens, {LAYERS_CONFIG_KEY}={layers}, "
            f"{TOPK_CONFIG_KEY}={top_k}]: routes of another model, or a model config that differs from the served "
            f"one ({LAYERS_CONFIG_KEY} / {TOPK_CONFIG_KEY})"
        )
    dtype = compact_numpy_dtype(spec.num_experts)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= spec.num_experts:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what}: expert id {bad} out of range [0, {spec.num_experts}): the routes do not belong to a model "
                f"with num_experts={spec.num_experts} (model config {EXPERTS_CONFIG_KEYS})"
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
            f"{what} holds {flat.size} ids, not a multiple of {LAYERS_CONFIG_KEY} * {TOPK_CONFIG_KEY} = "
            f"{spec.num_hidden_layers} * {spec.top_k} = {width}: routes of another model, or a model config that "
            "differs from the served one"
        )
    return compact_engine_routes(flat.reshape(-1, spec.num_hidden_layers, spec.top_k), spec, what)


def from_engine(routed_experts: Any, spec: RouteSpec, num_tokens: Optional[int] = None) -> Routes:
    """One sequence's routes as a rollout engine returns them: vLLM's ``CompletionOutput.routed_experts``
    (numpy ``[n, num_hidden_layers, top_k]``), SGLang's decoded payload (see :func:`from_sglang`) or
    verl's ``AgentLoopOutput.routed_experts``.

    The engines index layers by absolute decoder layer, so dense layers are dropped via
    ``spec.moe_layers``; a layer axis already equal to the MoE layer count is taken as is. vLLM never
    feeds the final sampled token through the model (``n = num_tokens - 1``): rows beyond ``n`` up to
    ``num_tokens`` are appended as missing. All-zero rows are missing too.
    """
    idx = as_int_tensor(routed_experts, "engine routed_experts")
    if idx.dim() == 2 and idx.shape[1] == spec.num_hidden_layers * spec.top_k:
        idx = idx.view(idx.shape[0], spec.num_hidden_layers, spec.top_k)
    if idx.dim() != 3:
        raise ValueError(f"engine routed_experts: expected [tokens, layers, top_k], got {tuple(idx.shape)}")
    idx = _select_moe_layers(idx, spec, "engine routed_experts")
    if idx.shape[2] != spec.top_k:
        raise ValueError(
            f"engine routed_experts have top_k={idx.shape[2]} but the model has {TOPK_CONFIG_KEY}={spec.top_k}"
        )
    routes = Routes.from_indices(idx, spec.num_experts, zero_rows_missing=True, what="engine routed_experts")
    if num_tokens is not None:
        if routes.num_tokens > num_tokens:
            raise ValueError(
                f"engine routed_experts have {routes.num_tokens} token rows for a sequence of {num_tokens} "
                "tokens (prompt + response): the routes belong to a longer sequence"
            )
        routes = routes.pad_tokens(num_tokens - routes.num_tokens)
    return routes


def from_sglang(meta_info: dict, spec: RouteSpec, num_tokens: Optional[int] = None) -> Routes:
    """SGLang ``/generate`` output (or its ``meta_info``) ``["routed_experts"]``, decoded by
    :func:`decode_sglang_routed_experts` (SGLang >= 0.5.11: a base64 string of int32
    ``[seq_len - 1, num_hidden_layers, top_k]``, whatever ``skip_tokenizer_init``; older releases with
    ``skip_tokenizer_init``: a tensor), then as :func:`from_engine` (dense layers dropped, the final token
    appended without a route)."""
    payload = meta_info.get("meta_info", meta_info).get("routed_experts")
    if payload is None:
        raise ValueError(
            "SGLang output has no meta_info['routed_experts']: launch with enable_return_routed_experts "
            "(verl: actor_rollout_ref.rollout.enable_rollout_routing_replay=True)"
        )
    return from_engine(decode_sglang_routed_experts(payload, spec), spec, num_tokens)


# ---------------------------------------------------------------- verl's batch field
def from_verl_batch(routed_experts: torch.Tensor, attention_mask: torch.Tensor, spec: RouteSpec) -> Routes:
    """verl's ``batch["routed_experts"]`` ``[B, S, layers, top_k]`` (any integer dtype: uint8 / uint16 as
    the ``hf_cpu`` server sends them, int16 from verl's own agent loop path, or what :func:`to_verl_batch`
    stored), aligned with ``input_ids`` ``[B, S]`` (left-padded prompt +
    right-padded response). Returns the padded-flat layout: ``B*S`` rows, row ``b*S + s`` is token
    ``[b, s]``, rows of padding or without a recorded route invalid. :func:`~verl_stable.routing.layouts.pack`
    turns it into rmpad."""
    if routed_experts.dim() != 4 or routed_experts.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"{_BATCH_FIELD} {tuple(routed_experts.shape)} must be [B, S, layers, top_k] with "
            f"[B, S] = attention_mask {tuple(attention_mask.shape)}"
        )
    flat = routed_experts.flatten(0, 1)
    idx = _select_moe_layers(as_int_tensor(flat, _BATCH_FIELD), spec, _BATCH_FIELD)
    routes = Routes.from_indices(
        idx, spec.num_experts, attention_mask.flatten().bool(), zero_rows_missing=True, what=_BATCH_FIELD
    )
    return routes.check(spec, what=_BATCH_FIELD)


def to_verl_batch(routes: Routes, batch_size: int, seq_len: int) -> torch.Tensor:
    """Padded-flat routes (``B*S`` rows) as a ``[B, S, layers, top_k]`` tensor for ``batch["routed_experts"]``,
    in compact dtype, missing rows zero (what :func:`from_verl_batch` reads back)."""
    if routes.num_tokens != batch_size * seq_len:
        raise ValueError(f"routes have {routes.num_tokens} rows, not B*S = {batch_size}*{seq_len}: unpack() first")
    return routes.experts.view(batch_size, seq_len, routes.num_layers, routes.top_k)


def from_nested(routed: torch.Tensor, input_ids: torch.Tensor, spec: RouteSpec) -> Routes:
    """verl's per-token field ``batch["routed_experts"]`` in its engine layout, a nested ``[b, j, layers,
    top_k]`` tensor (``left_right_2_no_padding`` makes it; the v1 agent loop stores it that way), as packed
    Routes: one row per token of the nested ``input_ids``, in ``input_ids.values()`` order.

    Every token already has its row here (the agent loop gave each sequence prompt + response rows), so no
    engine convention applies; the layer axis may be the model's MoE layers or all decoder layers (rollout
    engines), and all-zero rows (verl's filler for tokens the rollout never routed) become rows without a
    route. The rows came from a rollout server or an R2 record through verl: their ids are checked here, once
    per micro-batch, and the result is marked ``ids_checked``."""
    if not getattr(routed, "is_nested", False):
        raise ValueError(
            f"{_BATCH_FIELD} must be a nested per-token tensor aligned with the nested input_ids "
            f"(verl's left_right_2_no_padding makes it one); got a dense tensor of shape {tuple(routed.shape)}"
        )
    want = input_ids.offsets().diff().cpu()
    have = routed.offsets().diff().cpu()
    if have.shape != want.shape or not torch.equal(have, want):
        raise ValueError(
            f"{_BATCH_FIELD} sequence lengths {have.tolist()} differ from input_ids lengths "
            f"{want.tolist()}: routes must cover prompt + response of every sequence, token for token"
        )
    idx = as_int_tensor(routed.values(), _BATCH_FIELD)
    if idx.dim() != 3:
        raise ValueError(
            f"{_BATCH_FIELD}: expected nested [b, j, layers, top_k], got values of shape {tuple(idx.shape)}"
        )
    idx = _select_moe_layers(idx, spec, _BATCH_FIELD)
    if idx.shape[2] != spec.top_k:
        raise ValueError(f"{_BATCH_FIELD} have top_k={idx.shape[2]} but the model has {TOPK_CONFIG_KEY}={spec.top_k}")
    return Routes.from_indices(idx, spec.num_experts, zero_rows_missing=True, what=_BATCH_FIELD)


def to_nested(routes: Routes, input_ids: torch.Tensor) -> torch.Tensor:
    """Packed routes (one row per token of the nested ``input_ids``) as the nested ``[b, j, layers, top_k]``
    verl carries in ``batch["routed_experts"]``, in the compact dtype (uint8 / uint16: verl moves the field
    in whatever dtype it has), sharing ``input_ids``' offsets (inverse of :func:`from_nested`)."""
    if routes.num_tokens != input_ids.values().shape[0]:
        raise RuntimeError(
            f"{routes.num_tokens} route rows for {input_ids.values().shape[0]} tokens: the recorder did not see "
            "every token exactly once"
        )
    values = routes.experts.contiguous()
    return torch.nested.nested_tensor_from_jagged(values, offsets=input_ids.offsets().to(values.device))
