"""verl's real tool agent loop, several turns, the weights updated between turns: every turn's routes are kept.

verl 0.9.1's ``AgentLoopWorker`` (built from verl-stable's composed trainer config) runs one trajectory of the
agent named ``tool_agent`` (``_run_agent_loop``: verl's registry, verl's ``ToolAgentLoop`` state machine, its
Continuous Token merges, a real function tool loaded from ``function_tool_path``, then verl's postprocessing into
the padded ``[1, prompt_length + response_length, layers, top_k]`` routes of the legacy trainer path). The
rollout is verl-stable's ``hf_cpu`` server in this process, reached through verl's own ``LLMServerClient``.
Before each turn after the first the server's router weights are replaced (``update_weights``, as a partial /
fully async rollout updates weights between a trajectory's turns), so a later turn routes the earlier turns'
tokens differently from the turn that sampled them -- the case of verl-project/verl#6054.

The tool parser is the one piece written for the test (the tiny model writes digits, not JSON tool calls): it
reads every assistant turn as a call of the ``add`` tool, registered through verl's ``ToolParser.register``.

With verl-stable's row ``multi-turn-routes`` (``TurnRoutesToolAgentLoop`` under ``tool_agent``) each token's
route is the one the turn that first ran it returned. verl's own ``ToolAgentLoop`` (registered here under another
name) keeps the last turn's array instead: the test of that pins verl's behaviour down, and fails once verl
keeps earlier turns' routes itself (then the row can go).
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from tests.function_tools import ADD_TOOL
from tests.hydra_configs import compose
from tests.plugin.inprocess_rollout import Handle, hf_cpu_server, local_client

PROMPT_LENGTH = 32
RESPONSE_LENGTH = 48
TOKENS_PER_TURN = 5
TURNS = 3
PARSER = "verl_stable_test_add_every_turn"
VERL_TOOL_AGENT = "verl_stable_test_verls_tool_agent"
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": TOKENS_PER_TURN}


@pytest.fixture(scope="module", autouse=True)
def installed():
    """The rows this module relies on, installed (idempotent: the plugin did it when verl imported its agent loop,
    unless an earlier test in this process left the import hook unfired)."""
    import verl.experimental.agent_loop  # noqa: F401

    from verl_stable import integration

    assert integration.install("compact-routes-on-the-wire") and integration.install("multi-turn-routes")


def _register_parser():
    from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser

    if PARSER in ToolParser._registry:
        return

    @ToolParser.register(PARSER)
    class AddEveryTurn(ToolParser):
        """Every assistant turn calls ``add(a=<its digits>, b=<its length>)``."""

        async def extract_tool_calls(self, responses_ids, tools=None):
            text = self.tokenizer.decode(responses_ids, skip_special_tokens=True)
            digits = int("".join(c for c in text if c.isdigit())[:4] or 0)
            return text, [FunctionCall(name="add", arguments=json.dumps({"a": digits, "b": len(responses_ids)}))]


@pytest.fixture(scope="module")
def tool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "add_tool.py"
    path.write_text(ADD_TOOL)
    return str(path)


@pytest.fixture(scope="module")
def config(tiny_assets, tool_file):
    _register_parser()
    rollout = "actor_rollout_ref.rollout"
    return compose(
        "minirl_trainer",
        [
            f"actor_rollout_ref.model.path={tiny_assets['model']}",
            f"{rollout}.name=hf_cpu",
            f"{rollout}.prompt_length={PROMPT_LENGTH}",
            f"{rollout}.response_length={RESPONSE_LENGTH}",
            f"{rollout}.enable_rollout_routing_replay=True",
            f"{rollout}.ignore_eos=True",
            f"{rollout}.multi_turn.enable=True",
            f"{rollout}.multi_turn.format={PARSER}",
            f"{rollout}.multi_turn.function_tool_path={tool_file}",
            f"{rollout}.multi_turn.max_assistant_turns={TURNS}",
            f"data.train_files={tiny_assets['train']}",
            f"data.val_files={tiny_assets['val']}",
        ],
    )


def _router_weights(server, seed: int) -> list[tuple[str, torch.Tensor]]:
    """New router (gate) weights for every MoE layer: a policy update that changes routing."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (name, torch.randn(p.shape, generator=gen) * 4.0)
        for name, p in server.engine.model.named_parameters()
        if name.endswith(".mlp.gate.weight")
    ]


def _run(config, tiny_assets, agent_name: str):
    """One trajectory through verl's AgentLoopWorker: (its output, each request's (prompt_ids, TokenOutput),
    the number of leading prompt pads)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    server = hf_cpu_server(tiny_assets["model"], PROMPT_LENGTH, RESPONSE_LENGTH, ignore_eos=True)
    gates = _router_weights(server, seed=0)
    assert gates, "the tiny model has no MoE router weights"

    async def update_between_turns(request: int) -> None:
        if request > 0:
            await server.update_weights(_router_weights(server, seed=request))

    handle = Handle(server, before_request=update_between_turns)
    worker = AgentLoopWorker(config, llm_client=local_client(handle, config))
    trajectory = {"step": 0, "sample_index": 0, "rollout_n": 0, "validate": False}
    messages = [{"role": "user", "content": "12+34="}]
    out = asyncio.run(worker._run_agent_loop(dict(SAMPLING), trajectory, agent_name=agent_name, raw_prompt=messages))
    pads = int((out.attention_mask[0, :PROMPT_LENGTH] == 0).sum())
    return out, handle.calls, pads


def _turn_rows(calls):
    """Per turn: (first position it routed that no earlier turn had, end, its routes) -- every turn routes the
    sequence it was sent plus all its sampled tokens but the last."""
    spans, covered = [], 0
    for prompt_ids, output in calls:
        end = len(prompt_ids) + len(output.token_ids) - 1
        assert output.routed_experts.shape[0] == end
        spans.append((covered, end, output.routed_experts))
        covered = end
    return spans


@pytest.fixture(scope="module")
def verls_loop():
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    _agent_loop_registry[VERL_TOOL_AGENT] = {"_target_": "verl.experimental.agent_loop.tool_agent_loop.ToolAgentLoop"}
    yield VERL_TOOL_AGENT
    _agent_loop_registry.pop(VERL_TOOL_AGENT, None)


def test_tool_agent_is_verls_loop_with_the_turn_routes_mixin():
    import hydra
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop

    from verl_stable.integration.tool_agent_loop import TurnRoutesMixin, is_installed

    assert is_installed()
    cls = hydra.utils.get_class(_agent_loop_registry["tool_agent"]["_target_"])
    assert issubclass(cls, ToolAgentLoop) and cls.__mro__[1:3] == (TurnRoutesMixin, ToolAgentLoop)


def test_every_turn_keeps_the_routes_its_engine_returned(config, tiny_assets):
    out, calls, pads = _run(config, tiny_assets, "tool_agent")
    assert len(calls) == TURNS and out.num_turns >= 2 * TURNS  # user + 3 assistant turns + 2 tool turns
    spans = _turn_rows(calls)
    routes = out.routed_experts[0, pads:].numpy()
    assert out.routed_experts.dtype == torch.uint8  # compact all the way (uint8 for 4 experts)

    # The case the rule is for: a later turn routed the earlier turns' sampled tokens differently.
    first_start, first_end, first = spans[0]
    sampled = slice(len(calls[0][0]), first_end)  # turn 1's sampled tokens it ran (all but its last)
    assert not np.array_equal(spans[-1][2][sampled], first[sampled]), (
        "the weight update changed no route of turn 1's sampled tokens: the test cannot tell the rules apart"
    )
    # Every token's route is the one the turn that first ran it returned: turn 1's prompt and decode routes,
    # then each later turn's rows for the previous turn's last token, the tool tokens and its own tokens.
    for turn, (start, end, rows) in enumerate(spans, 1):
        assert np.array_equal(routes[start:end], rows[start:end]), f"turn {turn}: rows {start}..{end}"
    ran = spans[-1][1]
    assert not routes[ran:].any()  # the last sampled token and the padding: no route
    # the response the routes describe is the one verl assembled (ids agree where the last turn ran them)
    seq = out.input_ids[0, pads:].tolist()
    assert calls[-1][0] + calls[-1][1].token_ids[:-1] == seq[:ran]


def test_verls_own_tool_agent_loop_keeps_only_the_last_turns_routes(config, tiny_assets, verls_loop):
    """verl 0.9.1's rule, pinned down: once verl keeps earlier turns' routes this fails, and the row can go."""
    out, calls, pads = _run(config, tiny_assets, verls_loop)
    spans = _turn_rows(calls)
    routes = out.routed_experts[0, pads:].numpy()
    last_end, last = spans[-1][1], spans[-1][2]
    assert np.array_equal(routes[:last_end], last)  # the last turn's array, earlier turns' rows replaced
    sampled = slice(len(calls[0][0]), spans[0][1])
    assert not np.array_equal(routes[sampled], spans[0][2][sampled])  # turn 1's decode routes are gone


def test_a_tool_agent_someone_else_registered_is_left_alone():
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    from verl_stable.integration.tool_agent_loop import install, is_installed

    ours = dict(_agent_loop_registry["tool_agent"])
    assert install() and _agent_loop_registry["tool_agent"] == ours  # idempotent
    _agent_loop_registry["tool_agent"] = {"_target_": "some_plugin.MyToolAgentLoop"}
    try:
        with pytest.warns(UserWarning, match="some_plugin.MyToolAgentLoop.*left alone"):
            assert install() is False
        assert _agent_loop_registry["tool_agent"] == {"_target_": "some_plugin.MyToolAgentLoop"}
        assert not is_installed()
    finally:
        _agent_loop_registry["tool_agent"] = ours
    assert is_installed()
