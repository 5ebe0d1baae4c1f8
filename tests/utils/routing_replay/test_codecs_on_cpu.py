"""The boundary: verl's nested ``batch["routed_experts"]`` decoded straight into checked Routes, checked once.

A row from verl's batch came from a rollout server or an R2 record, so :func:`codecs.from_nested` range- and
duplicate-checks it; the Routes it returns carry ``ids_checked`` through the model-input layouts, and replay
does not check the same rows a second time. Routes built by hand are still checked when pushed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_stable.routing import RouteSpec, Routes, codecs, concat, pack, unpack
from verl_stable.routing.fsdp import model_input_rows, padded_mask
from verl_stable.routing.replay import ReplayState

from tests.utils.routing_replay.helpers import random_routes_idx

SPEC = RouteSpec(num_experts=16, top_k=3, moe_layers=(1, 3, 4), num_hidden_layers=5)


def _verl_nested_batch(spec: RouteSpec, gen: torch.Generator, dtype=torch.int16):
    """input_ids and routed_experts as verl's engine receives them: a padded batch (left-padded prompts,
    right-padded responses, every decoder layer's routes, zero rows at padding and at each sequence's final
    sampled token) through verl's own ``left_right_2_no_padding``."""
    from tensordict import TensorDict
    from verl.workers.utils.padding import left_right_2_no_padding

    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    b, s = mask.shape
    ids = random_routes_idx(b * s, spec.num_hidden_layers, spec.num_experts, spec.top_k, gen)
    ids = ids * mask.flatten().view(-1, 1, 1)
    last = (mask * torch.arange(s)).argmax(-1)  # each sequence's final token: the engine never routed it
    ids.view(b, s, *ids.shape[1:])[torch.arange(b), last] = 0
    td = TensorDict(
        {
            "input_ids": torch.arange(1, b * s + 1).view(b, s) * mask,
            "attention_mask": mask,
            "response_mask": mask[:, -3:].clone(),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "routed_experts": ids.to(dtype).view(b, s, spec.num_hidden_layers, spec.top_k),
        },
        batch_size=[b],
    )
    out = left_right_2_no_padding(td)
    return out["input_ids"], out["routed_experts"], ids, mask


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
def test_from_nested_on_verls_field_round_trips_with_to_nested(dtype):
    gen = torch.Generator().manual_seed(0)
    input_ids, routed, ids, mask = _verl_nested_batch(SPEC, gen, dtype)
    assert routed.is_nested
    routes = codecs.from_nested(routed, input_ids, SPEC)
    assert routes.ids_checked and routes.num_tokens == input_ids.values().shape[0]
    # the same rows the padded field decodes to, packed: dense layers dropped, final tokens without a route
    padded = codecs.from_verl_batch(ids.view(*mask.shape, SPEC.num_hidden_layers, SPEC.top_k), mask, SPEC)
    assert routes.equal(pack(padded, mask))
    assert int((~routes.valid_mask()).sum()) == mask.shape[0]

    back = codecs.to_nested(routes, input_ids)
    assert back.is_nested and back.dtype == SPEC.dtype
    assert torch.equal(back.offsets(), input_ids.offsets())
    moe = routed.values()[:, list(SPEC.moe_layers)].to(torch.int64)
    assert torch.equal(back.values().to(torch.int64), moe)
    assert codecs.from_nested(back, input_ids, SPEC).equal(routes)


def test_from_nested_checks_every_row_at_the_boundary():
    gen = torch.Generator().manual_seed(1)
    input_ids, routed, _, _ = _verl_nested_batch(SPEC, gen, torch.uint8)
    values = routed.values().clone()
    values[2, SPEC.moe_layers[1], 0] = SPEC.num_experts
    bad = torch.nested.nested_tensor_from_jagged(values, offsets=routed.offsets())
    with pytest.raises(ValueError, match=r"batch\['routed_experts'\]: expert id 16 out of range \[0, 16\) at token row 2"):
        codecs.from_nested(bad, input_ids, SPEC)
    values = routed.values().clone()
    values[5, SPEC.moe_layers[2], 2] = values[5, SPEC.moe_layers[2], 0]
    repeat = torch.nested.nested_tensor_from_jagged(values, offsets=routed.offsets())
    with pytest.raises(ValueError, match="token row 5 repeats an expert in layer 2"):
        codecs.from_nested(repeat, input_ids, SPEC)
    # a flat [n, layers * top_k] field is no engine payload here: verl's field is [b, j, layers, top_k]
    flat = torch.nested.nested_tensor_from_jagged(routed.values().flatten(1), offsets=routed.offsets())
    with pytest.raises(ValueError, match=r"nested \[b, j, layers, top_k\]"):
        codecs.from_nested(flat, input_ids, SPEC)
    with pytest.raises(ValueError, match="nested per-token tensor"):
        codecs.from_nested(routed.values(), input_ids, SPEC)


@pytest.fixture
def check_ids_calls(monkeypatch):
    calls = []
    original = Routes.check_ids

    def counting(self, what="routes"):
        calls.append(self.num_tokens)
        return original(self, what)

    monkeypatch.setattr(Routes, "check_ids", counting)
    return calls


def test_a_codec_built_micro_batch_is_not_checked_again_on_push(check_ids_calls):
    gen = torch.Generator().manual_seed(2)
    input_ids, routed, _, _ = _verl_nested_batch(SPEC, gen, torch.uint8)
    packed = codecs.from_nested(routed, input_ids, SPEC)
    state = ReplayState(None, SPEC, track_agreement=False)
    # every model-input layout of verl's FSDP engine keeps the mark: bucket pad, Ulysses slice, padded [b, S]
    laid_out = [
        model_input_rows(packed),
        model_input_rows(packed, static_pad=5),
        model_input_rows(packed, static_pad=3, sp_size=2, sp_rank=1),
        model_input_rows(packed, mask=padded_mask(input_ids)),
    ]
    for rows in laid_out:
        assert rows.ids_checked
        state.push(rows)
    assert check_ids_calls == []

    # Routes built by hand are checked on push, as before
    by_hand = Routes(packed.experts.clone(), SPEC.num_experts, packed.valid)
    assert not by_hand.ids_checked
    state.push(by_hand)
    assert check_ids_calls == [packed.num_tokens]
    broken = packed.experts.clone()
    broken[0, 0, 1] = broken[0, 0, 0]
    with pytest.raises(ValueError, match=r"replayed routes\[5\]: token row 0 repeats an expert in layer 0"):
        state.push(Routes(broken, SPEC.num_experts))


def test_the_mark_follows_only_row_moves_of_checked_routes():
    idx = random_routes_idx(6, 3, 16, 3)
    checked = Routes.from_indices(idx, 16)
    unchecked = Routes(checked.experts, 16)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert checked.ids_checked and not unchecked.ids_checked
    assert Routes.empty(4, 3, 3, 16).ids_checked
    for moved in (checked.take(torch.tensor([5, 0, 2])), checked.narrow(1, 3), checked.pad_tokens(2),
                  checked.to("cpu"), unpack(checked, mask), concat([checked, checked])):
        assert moved.ids_checked
    for moved in (unchecked.take(torch.tensor([1])), unchecked.narrow(0, 2), unchecked.pad_tokens(1),
                  unpack(unchecked, mask), concat([checked, unchecked])):
        assert not moved.ids_checked


def test_engine_payloads_are_checked_once_and_marked():
    arr = np.asarray(random_routes_idx(5, SPEC.num_hidden_layers, 16, 3), dtype=np.int32)
    assert codecs.from_engine(arr, SPEC, num_tokens=6).ids_checked
    assert codecs.from_engine(codecs.compact_engine_routes(arr, SPEC), SPEC).ids_checked
