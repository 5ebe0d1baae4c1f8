"""The multi-turn route merge (verl_stable.integration.tool_agent_loop.merge_turn_routes): arrays in, arrays out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_stable.integration.tool_agent_loop import TurnRoutesError, merge_turn_routes, ran_tokens

LAYERS, TOP_K = 2, 2


def _rows(n: int, fill: int, dtype=np.uint8) -> np.ndarray:
    """``n`` route rows, row ``i`` holding ``fill + i`` (so every row says which turn and position it came from)."""
    return (np.arange(n)[:, None, None] + fill + np.zeros((1, LAYERS, TOP_K), dtype=np.int64)).astype(dtype)


def test_the_first_turn_is_taken_as_returned():
    prompt, sampled = [5, 6, 7], [8, 9]
    rows = _rows(4, 0)
    routes, tokens = merge_turn_routes(None, None, prompt, sampled, rows)
    assert routes is rows and routes.dtype == np.uint8
    assert tokens == [5, 6, 7, 8] == ran_tokens(prompt, sampled)  # the last sampled token was never run


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_later_turn_adds_only_the_rows_past_the_held_ones(dtype):
    # turn 1: prompt [1,2,3], samples [4,5] -> rows for 1,2,3,4 (prefill x3, decode x1)
    held, held_tokens = merge_turn_routes(None, None, [1, 2, 3], [4, 5], _rows(4, 10, dtype))
    # tool tokens [6,7] appended; turn 2 is sent [1..7], samples [8,9,10] -> rows for 1..9
    prompt2 = [1, 2, 3, 4, 5, 6, 7]
    new = _rows(9, 100, dtype)
    routes, tokens = merge_turn_routes(held, held_tokens, prompt2, [8, 9, 10], new)
    assert routes.dtype == dtype and routes.shape == (9, LAYERS, TOP_K)
    assert np.array_equal(routes[:4], held)  # turn 1's prefill and decode routes, not turn 2's prefill of them
    # turn 1's last sampled token (5), the tool tokens (6, 7) and turn 2's tokens: turn 2's rows
    assert np.array_equal(routes[4:], new[4:])
    assert tokens == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert np.array_equal(new, _rows(9, 100, dtype)) and np.array_equal(held, _rows(4, 10, dtype))  # untouched


def test_held_rows_stop_where_the_sequence_changed_them():
    """A Continuous Token merge may drop or rewrite tokens already routed (e.g. GLM drops a trailing stop token):
    the held rows are kept only while the held tokens are the sequence's tokens."""
    held, held_tokens = merge_turn_routes(None, None, [1, 2, 3], [4, 5, 6], _rows(5, 10))  # covers 1,2,3,4,5
    new = _rows(8, 100)
    routes, _ = merge_turn_routes(held, held_tokens, [1, 2, 3, 4, 7, 8], [9, 10, 11], new)  # 5, 6 replaced
    assert np.array_equal(routes[:4], held[:4]) and np.array_equal(routes[4:], new[4:])
    routes, _ = merge_turn_routes(held, held_tokens, [1, 9, 3, 4, 5, 6], [7, 8, 10], new)  # 2 rewritten
    assert np.array_equal(routes[:1], held[:1]) and np.array_equal(routes[1:], new[1:])


def test_torch_and_read_only_inputs():
    held = _rows(3, 10)
    held.flags.writeable = False  # an engine payload from np.frombuffer
    new = torch.from_numpy(_rows(5, 100))
    routes, _ = merge_turn_routes(held, [1, 2, 3], [1, 2, 3, 4], [5, 6], new)
    assert isinstance(routes, np.ndarray) and routes.dtype == np.uint8
    assert np.array_equal(routes, np.concatenate([_rows(3, 10), _rows(5, 100)[3:]]))


@pytest.mark.parametrize(
    "rows, match",
    [
        (6, r"has 6 rows, but the engine ran 5 tokens"),  # a row for the last sampled token too
        (3, r"has 3 rows, but the engine ran 5 tokens"),  # the prompt's routes start at an offset
    ],
)
def test_rows_that_do_not_fit_the_sequence_sent_are_refused(rows, match):
    held, held_tokens = merge_turn_routes(None, None, [1, 2], [3], _rows(2, 10))
    with pytest.raises(TurnRoutesError, match=match):
        merge_turn_routes(held, held_tokens, [1, 2, 3, 4], [5, 6], _rows(rows, 100))


def test_inconsistent_inputs_are_refused():
    with pytest.raises(TurnRoutesError, match=r"\[tokens, layers, top_k\]"):
        merge_turn_routes(None, None, [1], [2], np.zeros((1, 2), np.uint8))
    with pytest.raises(TurnRoutesError, match="integer expert ids"):
        merge_turn_routes(None, None, [1], [2], np.zeros((1, LAYERS, TOP_K), np.float32))
    with pytest.raises(TurnRoutesError, match="3 rows but 2 tokens"):
        merge_turn_routes(_rows(3, 0), [1, 2], [1, 2, 3], [4], _rows(3, 0))
    with pytest.raises(TurnRoutesError, match="must agree across turns"):
        merge_turn_routes(_rows(2, 0), [1, 2], [1, 2, 3], [4], np.zeros((3, LAYERS, 1), np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.integers(1, 5),
    turns=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=5),
)
def test_every_row_comes_from_the_first_turn_that_ran_its_token(prompt, turns):
    """A trajectory of turns (sample g tokens, then append t tool tokens): row i of the result is row i of the
    first turn whose engine ran token i -- the prompt and decoded tokens from their own turn, the previous
    turn's last sampled token and the tool tokens from the next turn's prefill."""
    seq, held, held_tokens, first_turn = list(range(prompt)), None, None, {}
    for turn, (gen, tool) in enumerate(turns):
        sampled = list(range(len(seq), len(seq) + gen))
        rows = _rows(len(seq) + gen - 1, 0, np.uint16) + np.uint16(1000 * turn)  # row value: 1000*turn + position
        held, held_tokens = merge_turn_routes(held, held_tokens, seq, sampled, rows)
        for i in range(len(held)):
            first_turn.setdefault(i, turn)
        seq = seq + sampled + list(range(len(seq) + gen, len(seq) + gen + tool))
    assert held.dtype == np.uint16 and held.shape[0] == len(first_turn)
    want = np.array([1000 * first_turn[i] + i for i in range(len(held))])
    assert np.array_equal(held[:, 0, 0].astype(np.int64), want)
