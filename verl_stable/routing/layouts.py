"""Token-axis transforms of :class:`~verl_stable.routing.routes.Routes`: each moves the route rows exactly as the
same transform moves the tokens.

* padded-flat (``B*S`` rows, row ``b*S + s`` is token ``[b, s]``) <-> packed/rmpad (``nnz`` rows, the order of
  verl's ``unpad_input``): :func:`pack`, :func:`unpack`;
* sequences of a packed batch picked and re-ordered (micro-batches, dynamic batch sizes):
  :func:`select_sequences`;
* the forwards of a KV-cached ``generate()`` as the padded-flat routes of its output: :func:`generation_routes`.

The model-input layouts of verl's FSDP engine (bucket pad, Ulysses pad + slice, padded ``[b, S]``) are in
:mod:`verl_stable.routing.fsdp`, next to the engine that applies them. Pure torch: no verl, no transformers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from verl_stable.routing.routes import Routes

__all__ = ["generation_routes", "pack", "select_sequences", "unpack"]


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
    checked = all(f.ids_checked for f in forwards)
    return Routes(experts, last.num_experts, torch.cat(valid, dim=1).flatten(), ids_checked=checked)


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
    return Routes(experts.view(routes.experts.dtype), routes.num_experts, valid, ids_checked=routes.ids_checked)


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

