"""Routes as the real rollout engines return them: SGLang's base64 payload (both ``skip_tokenizer_init``
settings, built as SGLang 0.5.12 builds them: ``tests/utils/routing_replay/helpers/sglang_payloads.py`` cites
each step), vLLM's numpy int32, decoded / compacted for verl's agent loop."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from verl_stable.routing import codecs
from verl_stable.routing.codecs import compact_engine_routes, decode_sglang_routed_experts

from tests.utils.routing_replay.helpers.sglang_payloads import (
    SPEC,
    WIDE,
    sglang_extract,
    sglang_meta_info,
    sglang_routes_tensor,
)

@pytest.mark.parametrize("skip_tokenizer_init", [True, False], ids=["skip_tokenizer_init", "with_tokenizer"])
def test_sglang_payload_decodes_to_compact_routes(skip_tokenizer_init):
    host_rows, idx = sglang_routes_tensor(9, SPEC)
    meta = sglang_meta_info(host_rows, skip_tokenizer_init)
    assert isinstance(meta["routed_experts"], str)  # both settings: base64, not a tensor (verl's .numpy() fails)
    out = decode_sglang_routed_experts(meta["routed_experts"], SPEC)
    assert out.dtype == np.uint8 and out.shape == (8, SPEC.num_hidden_layers, SPEC.top_k)
    np.testing.assert_array_equal(out.astype(np.int32), host_rows.numpy())
    # the same ids SGLang's own reader gets
    np.testing.assert_array_equal(out.reshape(-1).astype(np.int32), sglang_extract(meta))
    # dense layers dropped, the final sampled token (never routed) appended without a route
    routes = codecs.from_sglang({"meta_info": meta}, SPEC, num_tokens=9)
    assert routes.num_layers == 3 and routes.num_tokens == 9
    assert torch.equal(routes.experts[:8].to(torch.int64), idx)
    assert routes.valid_mask().tolist() == [True] * 8 + [False]


def test_sglang_uint16_for_wide_models_and_empty_payload():
    host_rows, idx = sglang_routes_tensor(6, WIDE, seed=3)
    out = decode_sglang_routed_experts(sglang_meta_info(host_rows, True)["routed_experts"], WIDE)
    assert out.dtype == np.uint16 and out.shape == (5, 2, 4)
    np.testing.assert_array_equal(out.astype(np.int64), idx.numpy())
    # a one-token sequence has no routed position: zero rows, the right trailing shape
    empty = decode_sglang_routed_experts(base64.b64encode(b"").decode(), SPEC)
    assert empty.shape == (0, SPEC.num_hidden_layers, SPEC.top_k) and empty.dtype == np.uint8
    # SGLang < 0.5.11 with skip_tokenizer_init handed the int32 tensor itself
    np.testing.assert_array_equal(decode_sglang_routed_experts(host_rows, WIDE), out)


def test_sglang_payload_errors_name_the_widths():
    host_rows, _ = sglang_routes_tensor(4, SPEC)
    # routes of a model with another top_k: the id count is not a multiple of num_hidden_layers * top_k
    other = torch.zeros(4, 5, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"40 ids, not a multiple of num_hidden_layers \* num_experts_per_tok = 5 \* 3"):
        decode_sglang_routed_experts(base64.b64encode(other.numpy().tobytes()).decode(), SPEC)
    # int16 bytes (not SGLang's int32): not whole int32 ids
    with pytest.raises(ValueError, match="not whole int32"):
        decode_sglang_routed_experts(base64.b64encode(np.zeros(3, np.int16).tobytes()).decode(), SPEC)
    with pytest.raises(ValueError, match="not base64"):
        decode_sglang_routed_experts("not base64!", SPEC)
    # ids of a model with more experts
    host_rows[0, 1, 0] = 16
    with pytest.raises(ValueError, match=r"expert id 16 out of range \[0, 16\).*num_experts"):
        decode_sglang_routed_experts(sglang_meta_info(host_rows, False)["routed_experts"], SPEC)


def test_vllm_routes_compacted_in_place_of_int32():
    """vLLM's ``CompletionOutput.routed_experts``: numpy int32 [n, num_hidden_layers, top_k] (read-only when it
    comes from a buffer)."""
    host_rows, idx = sglang_routes_tensor(7, SPEC, seed=5)
    arr = np.frombuffer(host_rows.numpy().tobytes(), dtype=np.int32).reshape(6, 5, 3)
    assert not arr.flags.writeable
    out = compact_engine_routes(arr, SPEC)
    assert out.dtype == np.uint8 and out.shape == arr.shape and out.nbytes * 4 == arr.nbytes
    np.testing.assert_array_equal(out.astype(np.int32), arr)
    # Routes built from the compact array equal those from the int32 one
    assert codecs.from_engine(out, SPEC, 7).equal(codecs.from_engine(arr, SPEC, 7))
    with pytest.raises(ValueError, match=r"shape \(6, 4, 3\) is not \[tokens, num_hidden_layers=5"):
        compact_engine_routes(arr[:, :4], SPEC)
    with pytest.raises(ValueError, match="integers"):
        compact_engine_routes(arr.astype(np.float32), SPEC)
    with pytest.raises(ValueError, match="out of range"):
        compact_engine_routes(arr - 1, SPEC)
