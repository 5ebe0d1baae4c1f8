"""Routed experts keep uint8 through the agent loop; every other dtype is stored as int16, as before.

Both places the agent loop builds the routes tensor are covered, with verl's real classes:
``AgentLoopOutput.as_dict`` (the TransferQueue path) and ``AgentLoopWorker._agent_loop_postprocess`` (the
DataProto path, which left-pads the routes with the prompt).
"""

import asyncio

import numpy as np
import pytest
import torch

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, AgentLoopWorker
from verl.workers.config import RolloutConfig

LAYERS, TOP_K = 3, 2


def _routes(n: int, seed: int = 0) -> np.ndarray:
    """uint8 expert ids over the whole range, 128-255 included (no signed overflow)."""
    rng = np.random.default_rng(seed)
    routes = rng.integers(0, 256, size=(n, LAYERS, TOP_K)).astype(np.uint8)
    routes[0, 0, 0] = 255
    return routes


# (routes as a rollout server hands them over, the dtype the agent loop stores them in)
CASES = {
    "numpy-uint8": (lambda r: r, torch.uint8),
    "numpy-uint8-read-only": (lambda r: np.frombuffer(r.tobytes(), dtype=np.uint8).reshape(r.shape), torch.uint8),
    "torch-uint8": (lambda r: torch.from_numpy(r.copy()), torch.uint8),
    "numpy-int32": (lambda r: r.astype(np.int32), torch.int16),
    "numpy-uint16": (lambda r: r.astype(np.uint16), torch.int16),
    "torch-int64": (lambda r: torch.from_numpy(r.astype(np.int64)), torch.int16),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_rows", [4, 8, 11])  # fewer rows than tokens, as many, more
def test_as_dict_keeps_uint8_routes(case, n_rows):
    convert, stored = CASES[case]
    routes = _routes(n_rows, seed=n_rows)
    out = AgentLoopOutput(
        prompt_ids=[5, 6, 7],
        response_ids=[8, 9, 10, 11, 12],
        response_mask=[1] * 5,
        routed_experts=convert(routes),
        metrics={},
    )
    got = out.as_dict()["routed_experts"]
    assert got.dtype == stored and got.shape == (8, LAYERS, TOP_K)
    rows = min(n_rows, 8)
    assert torch.equal(got[:rows].long(), torch.from_numpy(routes[:rows]).long())
    assert not got[rows:].any()


def test_as_dict_stores_a_list_as_int16():
    routes = _routes(2)
    out = AgentLoopOutput(
        prompt_ids=[1], response_ids=[2], response_mask=[1], routed_experts=routes.tolist(), metrics={}
    )
    got = out.as_dict()["routed_experts"]
    assert got.dtype == torch.int16 and torch.equal(got.long(), torch.from_numpy(routes).long())


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{str(i): i for i in range(1, 32)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<pad>")


def _worker(prompt_length: int, response_length: int) -> AgentLoopWorker:
    """An AgentLoopWorker with only what ``_agent_loop_postprocess`` reads for a text-only sample without reward
    or teacher (its __init__ starts servers and loads datasets)."""
    worker = object.__new__(AgentLoopWorker)
    worker.rollout_config = RolloutConfig(name="vllm", prompt_length=prompt_length, response_length=response_length)
    worker.tokenizer = _tokenizer()
    worker.processor = None
    worker.mm_processor_kwargs = {}
    worker.reward_loop_worker_handles = None
    worker.distillation_enabled = False
    return worker


@pytest.mark.parametrize("case", list(CASES))
def test_agent_loop_postprocess_keeps_uint8_routes(case):
    convert, stored = CASES[case]
    worker = _worker(prompt_length=6, response_length=8)
    prompt, response = [5, 6, 7, 8], [9, 10, 11, 12, 13]
    routes = _routes(len(prompt) + len(response) - 1)  # no route for the last sampled token
    out = AgentLoopOutput(
        prompt_ids=prompt,
        response_ids=response,
        response_mask=[1] * len(response),
        routed_experts=convert(routes),
        metrics={},
    )
    result = asyncio.run(worker._agent_loop_postprocess(out, False, raw_prompt=[{"role": "user", "content": "1"}]))
    got = result.routed_experts
    assert got.dtype == stored and got.shape == (1, 6 + 8, LAYERS, TOP_K)
    start = 6 - len(prompt)  # the prompt is left-padded to prompt_length
    assert torch.equal(got[0, start : start + len(routes)].long(), torch.from_numpy(routes).long())
    assert not got[0, :start].any() and not got[0, start + len(routes) :].any()
