"""R3's coverage guard (pure): all-zero route rows beyond one final token per sequence and the tool/environment
tokens stop R3 with an error naming the cause, the fraction and the fallbacks; a tolerance lets some through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl_stable.routing import coverage
from verl_stable.routing.coverage import MAX_UNROUTED_KEY, RouteCoverage, UnroutedTokensError, route_coverage

from tests.utils.routing_replay.helpers import random_routes_idx

LAYERS, EXPERTS, TOP_K = 4, 16, 2


def engine_rows(seq_len: int, all_zero: bool, seed: int = 0) -> np.ndarray:
    """One sequence's routes as vLLM returns them: numpy int32 [seq_len - 1, num_hidden_layers, top_k] (the final
    sampled token is never fed through the model). ``all_zero``: what vLLM's FlashInfer TRT-LLM MoE path returns
    (vllm-project/vllm#44116)."""
    if all_zero:
        return np.zeros((seq_len - 1, LAYERS, TOP_K), dtype=np.int32)
    g = torch.Generator().manual_seed(seed)
    return random_routes_idx(seq_len - 1, LAYERS, EXPERTS, TOP_K, g).to(torch.int32).numpy()


def batch_rows(seq_lens, all_zero: bool) -> torch.Tensor:
    """The real tokens' route rows of a batch, in sequence order, as verl's agent loop lays them out: the
    engine's rows, then a zero row for the final token (int16, the agent loop's dtype)."""
    rows = []
    for i, n in enumerate(seq_lens):
        seq = torch.zeros(n, LAYERS, TOP_K, dtype=torch.int16)
        seq[: n - 1] = torch.from_numpy(engine_rows(n, all_zero, seed=i).astype(np.int16))
        rows.append(seq)
    return torch.cat(rows)


def test_healthy_routes_miss_only_the_final_tokens():
    cov = route_coverage(batch_rows([5, 9, 3], all_zero=False), sequences=3)
    assert cov == RouteCoverage(tokens=17, without_route=3, sequences=3, environment_tokens=0)
    assert cov.unexpected == 0 and cov.ok(0.0)
    assert cov.check() is cov


def test_all_zero_engine_routes_stop_r3_with_the_cause_and_the_fallbacks():
    cov = route_coverage(batch_rows([5, 9, 3], all_zero=True), sequences=3)
    assert cov.without_route == 17 and cov.unexpected == 14
    assert cov.unexpected_fraction == pytest.approx(14 / 17)
    with pytest.raises(UnroutedTokensError) as info:
        cov.check(0.0)
    message = str(info.value)
    for needle in ("17 of 17 real tokens (100.0 %)", "14 (82.4 % of the tokens) more than the 3 expected",
                   "vllm-project/vllm#44116", "vLLM 0.26", "FlashInfer TRT-LLM", "routing_replay=R2",
                   "router_replay.mode=disabled", MAX_UNROUTED_KEY):
        assert needle in message, needle
    assert isinstance(info.value, ValueError)


def test_tool_tokens_may_lack_routes():
    """Multi-turn: tokens appended after the last generation (response_mask 0) were never routed by the engine."""
    rows = batch_rows([10, 8], all_zero=False)
    rows[6:9] = 0  # three tool tokens at the end of sequence 0, before its final token
    cov = route_coverage(rows, sequences=2, environment_tokens=torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]]))
    assert cov.environment_tokens == 3 and cov.without_route == 5 and cov.unexpected == 0
    cov.check()
    # without the response mask, those are unexpected
    with pytest.raises(UnroutedTokensError, match="3 \\(16.7 % of the tokens\\) more than the 2 expected"):
        route_coverage(rows, sequences=2).check()


def test_tolerance_is_a_fraction_of_the_real_tokens():
    rows = batch_rows([11, 11], all_zero=False)  # 22 tokens, 2 final
    rows[:2] = 0  # 2 unexpected: 2/22
    cov = route_coverage(rows, sequences=2)
    assert cov.unexpected_fraction == pytest.approx(2 / 22)
    cov.check(2 / 22)  # at the tolerance: accepted
    with pytest.raises(UnroutedTokensError):
        cov.check(2 / 22 - 1e-9)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction in \\[0, 1\\]"):
            cov.check(bad)


def test_top_1_routes_never_count_as_missing():
    """With top_k 1 an all-zero row is a real route (expert 0): the guard cannot tell, and does not guess."""
    cov = route_coverage(torch.zeros(6, LAYERS, 1, dtype=torch.uint8), sequences=1)
    assert cov.without_route == 0 and cov.ok()


def test_counting_in_chunks_equals_counting_at_once(monkeypatch):
    rows = batch_rows([7, 5, 9, 4], all_zero=False)
    rows[3:12] = 0
    at_once = route_coverage(rows, sequences=4)
    monkeypatch.setattr(coverage, "_CHUNK_ROWS", 4)
    assert route_coverage(rows, sequences=4) == at_once
    assert at_once.without_route == int((rows == 0).flatten(1).all(1).sum())
    with pytest.raises(ValueError, match="\\[tokens, layers, top_k\\]"):
        route_coverage(rows.flatten(1), sequences=4)
