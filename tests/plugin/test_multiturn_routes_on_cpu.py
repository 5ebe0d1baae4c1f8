"""Multi-turn and partial-rollout trajectories: every token ends up with the route the rollout engine produced
for it, or with an explicit "no route" that the training engine counts (``tokens_without_route``).

The real ``hf_cpu`` server (in-process, float32 so that a KV-cached decode and a full forward pick the same
experts) generates each turn; verl 0.9.1's own ``FullyAsyncLLMServerClient.generate`` resumes interrupted
generations and concatenates their routes (``workers/rollout/llm_server.py``); the multi-turn bookkeeping
is the rule verl-stable puts into verl's ``ToolAgentLoop``
(``verl_stable.integration.tool_agent_loop.merge_turn_routes``: each turn adds the rows past the tokens
already routed; the final array is sliced to ``prompt + response_length``); ``AgentLoopOutput.as_dict`` pads
it (v1 trainer path, compact); the engine reads it with ``codecs.from_engine`` as ``BatchReplay`` does.
Ground truth: a teacher-forced forward of the final sequence recorded with the same model's recorder
(R2-style).

What this pins down: with fixed weights the server routes a token alike whichever turn runs it (float32, no
prefix cache), so every routed token -- prompt, generated, tool tokens a later turn fed to the model -- has the
route of a full forward, and the route its own turn produced. Tokens the engine never ran are the last sampled
token and any tool response after the last generation; they are rows without a route, counted, never zero-id
routes. (Turns that route earlier tokens differently -- weights updated between turns -- are
``test_tool_agent_loop_routes_on_cpu.py``.)
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.plugin.inprocess_rollout import Handle, hf_cpu_server, local_client
from verl_stable.integration.tool_agent_loop import merge_turn_routes

RESPONSE_LENGTH = 14
PROMPT_LENGTH = 8


def _client(handle):
    """verl's partial-rollout client, its load balancer replaced by the one in-process server."""
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "name": "hf_cpu",
                    "full_determinism": False,
                    "response_length": RESPONSE_LENGTH,
                }
            },
            "async_training": {"partial_rollout": True},
        }
    )
    return local_client(handle, config, partial_rollout=True)


@pytest.fixture(scope="module", autouse=True)
def compact_routes():
    """The compact-routes row, installed (idempotent: the plugin did it when verl imported its agent loop, unless
    an earlier test in this process left the import hook unfired)."""
    import verl.experimental.agent_loop  # noqa: F401

    from verl_stable import integration

    assert integration.install("compact-routes-on-the-wire")


@pytest.fixture(scope="module")
def server(tiny_assets):
    return hf_cpu_server(tiny_assets["model"], PROMPT_LENGTH, RESPONSE_LENGTH)


async def _trajectory(client, handle, prompt, turns, vocab):
    """verl's ToolAgentLoop state machine reduced to what moves tokens and routes: generate (the full prefix as
    the prompt), merge this turn's routes into the held ones (verl-stable's ``TurnRoutesMixin`` rule), stop at
    response_length or when no tool is called, else append the tool response (response_mask 0) and generate
    again."""
    prefix, mask, routes, held_tokens, turn_routes = list(prompt), [], None, None, []
    rng = np.random.default_rng(len(turns))
    for gen, tool, cut in turns:
        handle.cuts = [cut]
        sp = {
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "logprobs": True,
            "ignore_eos": True,
            "max_tokens": gen,
        }
        out = await client.generate("rid", prompt_ids=list(prefix), sampling_params=sp)
        assert (
            len(out.token_ids) == gen
        )  # verl resumed the interrupted request up to the same budget
        turn_routes.append((len(prefix), out.routed_experts))
        routes, held_tokens = merge_turn_routes(routes, held_tokens, prefix, out.token_ids, out.routed_experts)
        prefix += out.token_ids
        mask += [1] * gen
        if len(mask) >= RESPONSE_LENGTH or tool == 0:
            break
        prefix += rng.integers(
            3, vocab, size=tool
        ).tolist()  # a tool response: tokens no model generated
        mask += [0] * tool
        if len(mask) >= RESPONSE_LENGTH:
            break
    return prefix, mask, routes, turn_routes


turn = st.tuples(
    st.integers(1, 4), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 3))
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt_len=st.integers(2, PROMPT_LENGTH),
    turns=st.lists(turn, min_size=1, max_size=4),
)
def test_every_token_has_its_engine_route_or_a_counted_no_route(
    server, prompt_len, turns
):
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    from verl_stable.routing import codecs, spec_from_config

    engine = server.engine
    vocab = engine.model.config.vocab_size
    prompt = (
        np.random.default_rng(prompt_len).integers(3, vocab, size=prompt_len).tolist()
    )
    handle = Handle(server)
    prefix, mask, routes, turn_routes = asyncio.run(
        _trajectory(_client(handle), handle, prompt, turns, vocab)
    )

    # verl's ToolAgentLoop.run output, then the v1 path's as_dict (the legacy path pads identically)
    response = prefix[len(prompt) :][:RESPONSE_LENGTH]
    out = AgentLoopOutput(
        prompt_ids=prompt,
        response_ids=response,
        response_mask=mask[:RESPONSE_LENGTH],
        routed_experts=routes[: len(prompt) + RESPONSE_LENGTH],
        metrics={},
    )
    field = out.as_dict()["routed_experts"]
    assert field.dtype == torch.uint8  # compact all the way
    spec = spec_from_config(engine.model.config)
    got = codecs.from_engine(
        field, spec
    )  # what BatchReplay reads: all-zero rows are "no route"
    seq = prompt + response

    # ground truth: the final sequence teacher-forced through the same model, routes recorded
    with torch.no_grad(), engine.routing.record() as rec:
        engine.model(input_ids=torch.tensor([seq]))
    truth = rec.forward_routes(0)

    # the engine ran every token up to the last sampled one of the last turn; nothing after it
    ran = min(len(routes), len(seq))
    valid = got.valid_mask()
    assert got.num_tokens == len(seq)
    assert bool(valid[:ran].all()), (
        f"tokens the engine ran without a route: {(~valid[:ran]).nonzero().flatten().tolist()}"
    )
    assert not bool(valid[ran:].any())
    # counted: the engine's tokens_without_route for this sequence
    assert int((~valid).sum()) == len(seq) - ran
    if len(prefix) - len(prompt) <= RESPONSE_LENGTH:
        trailing_tool = len(prefix) - (
            turn_routes[-1][0] + turns[len(turn_routes) - 1][0]
        )
        assert (
            len(seq) - ran == 1 + trailing_tool
        )  # the last sampled token + a tool response never fed
    # every routed token -- prompt, model-generated, tool tokens a later turn fed -- has the engine's route
    mine = torch.sort(got.experts[:ran].to(torch.int64), dim=-1).values
    want = torch.sort(truth.experts[:ran].to(torch.int64), dim=-1).values
    assert torch.equal(mine, want)
    # and it is the route the engine produced when it ran that token in its own turn (decode or prefill)
    for start, turn_rows in turn_routes:
        rows = torch.sort(torch.from_numpy(turn_rows).to(torch.int64), dim=-1).values
        n = min(len(rows), len(seq))
        assert torch.equal(rows[:n], want[:n]), f"turn starting at {start}"
