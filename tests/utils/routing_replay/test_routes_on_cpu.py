"""The Routes container: compact storage, conversions from what vLLM / SGLang / verl hand over, validation."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from verl_stable.routing import RouteSpec, Routes, codecs, route_agreement
from verl_stable.routing.routes import compact_dtype

from tests.utils.routing_replay.helpers import random_routes_idx

# A DeepSeek-like layout: decoder layers 0 and 2 dense, MoE at 1, 3, 4.
SPEC = RouteSpec(num_experts=16, top_k=3, moe_layers=(1, 3, 4), num_hidden_layers=5)


def engine_array(num_tokens, seed=0):
    """What an engine returns: [tokens, num_hidden_layers, top_k] int32, dense layer columns zero."""
    idx = random_routes_idx(num_tokens, SPEC.num_layers, SPEC.num_experts, SPEC.top_k, torch.Generator().manual_seed(seed))
    full = torch.zeros(num_tokens, SPEC.num_hidden_layers, SPEC.top_k, dtype=torch.int32)
    full[:, list(SPEC.moe_layers)] = idx.to(torch.int32)
    return full.numpy(), idx


def test_compact_dtype_and_qwen3_30b_footprint():
    assert compact_dtype(128) == torch.uint8 and compact_dtype(256) == torch.uint8
    assert compact_dtype(257) == torch.uint16 and compact_dtype(65536) == torch.uint16
    qwen3 = RouteSpec(num_experts=128, top_k=8, moe_layers=tuple(range(48)), num_hidden_layers=48)
    assert qwen3.bytes_per_token() == 384
    idx = random_routes_idx(10, 48, 128, 8)
    r = Routes.from_indices(idx, 128)
    assert r.experts.dtype == torch.uint8 and r.nbytes == 10 * 384
    assert torch.equal(r.layer(5), idx[:, 5])
    big = Routes.from_indices(random_routes_idx(4, 2, 300, 4), 300)
    assert big.experts.dtype == torch.uint16 and int(big.experts.to(torch.int64).max()) < 300


def test_from_vllm_drops_dense_layers_and_pads_final_token():
    # vLLM never feeds the last sampled token: n = num_tokens - 1 rows for a sequence of num_tokens
    arr, idx = engine_array(7)
    routes = codecs.from_engine(arr, SPEC, num_tokens=8)
    assert routes.num_tokens == 8 and routes.num_layers == 3
    assert torch.equal(routes.experts[:7].to(torch.int64), idx)
    assert routes.valid_mask().tolist() == [True] * 7 + [False]
    # an engine payload already restricted to MoE layers is taken as is
    assert codecs.from_engine(idx.numpy(), SPEC, num_tokens=8).equal(routes)
    with pytest.raises(ValueError, match="9 token rows for a sequence of 8"):
        codecs.from_engine(engine_array(9)[0], SPEC, num_tokens=8)


def test_from_sglang_base64():
    # SGLang >= 0.5.11: base64 of int32 [seq_len - 1, num_hidden_layers, top_k]
    # (tests/utils/routing_replay/test_engine_routes_on_cpu.py builds it step by step as SGLang does)
    arr, idx = engine_array(5, seed=1)
    meta = {"routed_experts": base64.b64encode(arr.tobytes()).decode("utf-8")}
    routes = codecs.from_sglang({"meta_info": meta}, SPEC, num_tokens=6)
    assert torch.equal(routes.experts[:5].to(torch.int64), idx)
    assert routes.valid_mask().tolist() == [True] * 5 + [False]
    # older skip_tokenizer_init servers handed a tensor instead of base64
    assert codecs.from_sglang({"routed_experts": torch.from_numpy(arr)}, SPEC, 6).equal(routes)
    with pytest.raises(ValueError, match="enable_rollout_routing_replay"):
        codecs.from_sglang({"meta_info": {}}, SPEC)


def test_from_verl_batch_int16_with_padding_and_unrouted_tail():
    # agent loop layout: [B, S, num_hidden_layers, K] int16, left-padded prompt, zero rows where nothing routed
    b, s = 2, 6
    arr, idx = engine_array(b * s, seed=2)
    batch = torch.from_numpy(arr).to(torch.int16).view(b, s, SPEC.num_hidden_layers, SPEC.top_k).clone()
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    batch[mask == 0] = 0
    batch[0, 5] = 0  # last response token: the engine never routed it
    routes = codecs.from_verl_batch(batch, mask, SPEC)
    assert routes.num_tokens == b * s and routes.experts.dtype == torch.uint8
    expect_valid = mask.flatten().bool().clone()
    expect_valid[5] = False
    assert torch.equal(routes.valid_mask(), expect_valid)
    assert torch.equal(routes.experts.to(torch.int64)[expect_valid], idx[expect_valid])


def test_route_agreement_closed_form():
    a = Routes.from_indices(torch.tensor([[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]), 8)
    b = Routes.from_indices(torch.tensor([[[1, 0]], [[2, 4]], [[6, 7]], [[6, 7]]]), 8)
    agree = route_agreement(a, b)
    # token 0: same set in another order; token 1: one of two shared; token 2: none; token 3: same
    torch.testing.assert_close(agree.agreement, torch.tensor([0.5]))
    torch.testing.assert_close(agree.expert_overlap, torch.tensor([(1 + 0.5 + 0 + 1) / 4]))
    torch.testing.assert_close(agree.tokens_mismatch_any_layer, torch.tensor(0.5))


# ------------------------------------------------------------------ error paths
def test_wrong_layer_count():
    r = Routes.from_indices(random_routes_idx(4, 2, 16, 3), 16)
    with pytest.raises(ValueError, match=r"2 MoE layers but the model has 3 .*first_k_dense_replace"):
        r.check(SPEC)
    with pytest.raises(ValueError, match="4 layers but the model has 3 MoE layers out of num_hidden_layers=5"):
        codecs.from_engine(np.zeros((3, 4, 3), dtype=np.int32) + np.arange(3, dtype=np.int32), SPEC)


def test_wrong_top_k():
    r = Routes.from_indices(random_routes_idx(4, 3, 16, 2), 16)
    with pytest.raises(ValueError, match="top_k=2 but the model has num_experts_per_tok=3"):
        r.check(SPEC)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        codecs.from_engine(random_routes_idx(4, 3, 16, 2).numpy(), SPEC)


def test_id_out_of_range():
    idx = random_routes_idx(4, 3, 16, 3)
    idx[2, 1, 0] = 16
    with pytest.raises(ValueError, match=r"expert id 16 out of range \[0, 16\).*num_experts"):
        Routes.from_indices(idx, 16)
    idx[2, 1, 0] = -1
    with pytest.raises(ValueError, match="expert id -1 out of range"):
        Routes.from_indices(idx, 16)
    with pytest.raises(ValueError, match="do not fit in uint16"):
        Routes.from_indices(idx.abs(), 70000)


def test_row_count_differs_from_tokens():
    r = Routes.from_indices(random_routes_idx(4, 3, 16, 3), 16)
    with pytest.raises(ValueError, match="4 token rows but the forward routes 5 tokens"):
        r.check(SPEC, num_tokens=5)
    with pytest.raises(ValueError, match="pack: routes have 4 rows but attention_mask"):
        from verl_stable.routing import pack

        pack(r, torch.ones(1, 5, dtype=torch.long))


def test_wrong_dtype_and_shape():
    with pytest.raises(ValueError, match="integer dtype, got torch.float32"):
        Routes.from_indices(torch.zeros(2, 3, 3), 16)
    with pytest.raises(ValueError, match="numpy dtype float64"):
        Routes.from_indices(np.zeros((2, 3, 3)), 16)
    with pytest.raises(ValueError, match=r"must be torch.uint8 for num_experts=16, got torch.int64.*from_indices"):
        Routes(random_routes_idx(2, 3, 16, 3), 16)
    with pytest.raises(ValueError, match=r"expected \[tokens, layers, top_k\]"):
        Routes.from_indices(torch.zeros(2, 3, dtype=torch.long), 16)


def test_duplicate_expert_in_a_row():
    idx = random_routes_idx(4, 3, 16, 3)
    idx[1, 2, 1] = idx[1, 2, 0]
    with pytest.raises(ValueError, match="token row 1 repeats an expert in layer 2"):
        Routes.from_indices(idx, 16)
    # the same row is fine when it is marked as having no route (it is never replayed)
    valid = torch.tensor([True, False, True, True])
    assert not Routes.from_indices(idx, 16, valid).valid_mask()[1]


@pytest.mark.parametrize("num_experts", [16, 300])
def test_chunked_validation_matches_whole(monkeypatch, num_experts):
    import verl_stable.routing.routes as routes_mod

    idx = random_routes_idx(11, 3, num_experts, 3)
    idx[4] = 0  # an unrouted row
    whole = Routes.from_indices(idx, num_experts, zero_rows_missing=True)
    monkeypatch.setattr(routes_mod, "_CHUNK_TOKENS", 3)
    chunked = Routes.from_indices(idx, num_experts, zero_rows_missing=True)
    assert chunked.equal(whole) and chunked.experts.dtype == compact_dtype(num_experts)
    assert chunked.valid_mask().tolist() == [i != 4 for i in range(11)]
    assert torch.equal(chunked.experts.to(torch.int64)[chunked.valid_mask()], idx[chunked.valid_mask()])
    idx[7, 0, 1] = idx[7, 0, 0]
    with pytest.raises(ValueError, match="token row 7 repeats"):
        Routes.from_indices(idx, num_experts, zero_rows_missing=True)


@pytest.mark.parametrize("num_experts", [16, 300])
def test_nested_routes_round_trip_in_the_compact_dtype(num_experts):
    # verl's per-token field as the engine receives it when routes travel compact (uint8 / uint16), and what
    # the engine hands back after an R2 record: same ids, same dtype, every token one row.
    spec = RouteSpec(num_experts=num_experts, top_k=3, moe_layers=(1, 3, 4), num_hidden_layers=5)
    lengths = [4, 1, 6]
    offsets = torch.tensor([0, *np.cumsum(lengths)])
    input_ids = torch.nested.nested_tensor_from_jagged(torch.arange(sum(lengths)), offsets=offsets)
    idx = random_routes_idx(sum(lengths), spec.num_layers, num_experts, spec.top_k, torch.Generator().manual_seed(1))
    dtype = compact_dtype(num_experts)
    sent = torch.nested.nested_tensor_from_jagged(idx.to(torch.int32).to(dtype), offsets=offsets)
    routes = codecs.from_nested(sent, input_ids, spec)
    assert routes.experts.dtype == dtype and routes.valid is None
    assert torch.equal(routes.experts.to(torch.int64), idx.to(torch.int64))
    back = codecs.to_nested(routes, input_ids)
    assert back.is_nested and back.dtype == dtype
    assert torch.equal(back.values().to(torch.int64), idx.to(torch.int64))
    assert torch.equal(back.offsets(), input_ids.offsets())
