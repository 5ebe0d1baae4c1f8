"""verl's trainer with a multi-turn rollout -- verl's tool agent loop -- served by the real vLLM 0.24.0 on CPU, R3.

The run: the demo launcher (``scripts/demo_cpu.sh``), ``algorithm=minirl routing_replay=R3``, fp32 on both sides,
:data:`~verl_stable.apps.cpu_overrides.VLLM_ON_CPU`, 2 steps of 4 prompts x 8 samples, every sample run by the agent
named ``tool_agent`` (``rollout.agent.default_agent_loop``): verl-stable's ``TurnRoutesToolAgentLoop`` -- verl's
``ToolAgentLoop`` with :class:`~verl_stable.integration.tool_agent_loop.TurnRoutesMixin` in front, registered by
row ``multi-turn-routes`` inside verl's agent-loop worker, a Ray actor -- with ``multi_turn.max_assistant_turns=3``
and one function tool ``add`` (``multi_turn.function_tool_path``). Each turn sends vLLM the whole trajectory so
far; vLLM's prefix cache is on (verl's default) with 16-token blocks (the CPU default, 128, is longer than a whole
trajectory), so later turns find earlier turns' blocks cached.

The tool file is the one piece written for the test, and the narrow place for what the test needs inside verl's
agent-loop worker: verl executes ``function_tool_path`` in ``AgentLoopWorker.__init__`` (only there, once per
worker) before that worker builds any agent loop, and ``ToolAgentLoop.__init__`` is where verl resolves the tool
parser by name. So the file registers the test parser ``verl_stable_test_add_every_turn`` (the tiny model writes
digits, not JSON tool calls: every assistant turn is read as a call of ``add``), and records, one line per turn in
``record.jsonl``: each request's prefix-cache hits (vLLM's ``num_cached_tokens``, through a wrapper around the
loop's LLM client) and each route merge (it wraps
:func:`~verl_stable.integration.tool_agent_loop.merge_turn_routes`, which the mixin looks up at call time): the rows
the trajectory held, the rows vLLM returned, how many held rows the merge kept, and how many of those vLLM's later
turn routed differently. No sitecustomize: nothing is loaded into the driver, the trainer or vLLM's processes.

What is proven, from verl's ``metrics.jsonl`` and ``record.jsonl``, at every step:

* multi-turn: verl's ``num_turns/min`` >= 6 (user + 3 assistant + 2 tool turns), and every trajectory's turns
  2 and 3 went through the mixin's merge on vLLM's real payload -- one route per token vLLM ran, prefix-cached
  tokens included (a row count that does not fit is a
  :class:`~verl_stable.integration.tool_agent_loop.TurnRoutesError`, which stops the run), uint8, every held row
  kept; some later turns hit the prefix cache;
* R3 on the multi-turn tokens: route agreement 1.0 and no mismatching token at the pi_old pass and in the update,
  k3 KL (pi_old vs mu_old) <= 1e-6, routes uint8 (``routing/route_id_bytes``);
* coverage: at most one token per sequence (the final sampled one) lacks a route, so the tool tokens between turns
  and every turn's own tokens are replayed. R3's coverage guard tolerates unrouted tool tokens (``response_mask``
  0); this test does not: ``tokens_without_route`` <= 1 / (the shortest sequence's tokens).

The second test shows the checks fail on misaligned routes: the same run with each later turn's new rows placed
one token late (what a turn's rows shifted by a prompt offset look like; fault injection in the tool file) has
unrouted tokens beyond the bound and tokens whose replayed route the trainer's router does not pick (measured:
agreement 0.78 at step 1 and 0.54-0.59 at step 2, 3 unrouted tokens per sequence).

What this does not show: that the mixin is needed with vLLM here. In a synchronous trainer the weights do not
change between a trajectory's turns, and at fp32 vLLM's later turns route the earlier turns' tokens exactly as the
turns that sampled them did (measured: ``later_turn_differs`` is 0 for all of them, cached or recomputed), so verl's
own ``ToolAgentLoop``, which keeps only the last turn's array, would end with the same routes and pass the route
checks; without the mixin registered this test fails only at the merge count (no merge recorded). The case where
the rules differ (weights updated between turns, as in a partial / fully async rollout) is
``tests/plugin/test_tool_agent_loop_routes_on_cpu.py``, with the hf_cpu server. About 3 minutes per run on 2
cores. ``vllm_extra``: runs in ``bash scripts/test_vllm.sh``, not in CI. Skips unless ``.venv-vllm`` exists.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.engines.test_vllm_trainer_on_cpu import FP32
from tests.engines.tier import ROOT, TIER_MARKS, VLLM_PYTHON, tier_env
from tests.function_tools import ADD_TOOL
from verl_stable.apps.console import read_metrics
from verl_stable.apps.cpu_overrides import VLLM_ON_CPU

pytestmark = [*TIER_MARKS, pytest.mark.vllm_extra]

STEPS = 2
TURNS = 3  # assistant turns per trajectory (multi_turn.max_assistant_turns)
RESPONSE_LENGTH = 48  # the whole multi-turn response: 3 answers and 2 tool responses fit
BLOCK_SIZE = 16  # vLLM's KV-cache block: small enough that later turns hit the prefix cache
PARSER = "verl_stable_test_add_every_turn"
ROLLOUT = "actor_rollout_ref.rollout"

#: the function tool file verl loads in its agent-loop worker (see the module docstring); ``{record}``: where the
#: merges go, ``{shift}``: fault injection (the merge's new rows one token late)
TOOL_FILE = '''\
"""The test's function tool, its tool parser, and a record of every turn's request and route merge (test-only)."""
import json

import numpy as np
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
from verl_stable.integration import tool_agent_loop

RECORD = {record!r}
SHIFT = {shift!r}


def _record(**fields):
    with open(RECORD, "a") as f:
        f.write(json.dumps(fields) + "\\n")


if {parser!r} not in ToolParser._registry:

    @ToolParser.register({parser!r})
    class AddEveryTurn(ToolParser):
        """Every assistant turn calls ``add(a=<its digits>, b=<its length>)``."""

        async def extract_tool_calls(self, responses_ids, tools=None):
            text = self.tokenizer.decode(responses_ids, skip_special_tokens=True)
            digits = int("".join(c for c in text if c.isdigit())[:4] or 0)
            return text, [FunctionCall(name="add", arguments=json.dumps({{"a": digits, "b": len(responses_ids)}}))]


class _RecordingClient:
    """The loop's LLM client, recording each request's prefix-cache hits (vLLM's num_cached_tokens)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def generate(self, request_id, *, prompt_ids, **kwargs):
        out = await self._client.generate(request_id, prompt_ids=prompt_ids, **kwargs)
        _record(kind="generate", sent=len(prompt_ids), cached=(out.extra_fields or {{}}).get("num_cached_tokens"))
        return out


_init = ToolAgentLoop.__init__


def _recording_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.server_manager = _RecordingClient(self.server_manager)


ToolAgentLoop.__init__ = _recording_init


def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


_merge = tool_agent_loop.merge_turn_routes


def _recording_merge(held, held_token_ids, prompt_ids, token_ids, routed_experts):
    routes, tokens = _merge(held, held_token_ids, prompt_ids, token_ids, routed_experts)
    new = tool_agent_loop._as_array(routed_experts, "routed_experts")
    keep = 0 if held is None else _common_prefix(held_token_ids, prompt_ids)
    old = None if held is None else tool_agent_loop._as_array(held, "held")
    _record(
        kind="merge",
        held_rows=0 if old is None else int(old.shape[0]),
        sent=len(prompt_ids),
        sampled=len(token_ids),
        new_rows=int(new.shape[0]),
        kept=keep,
        kept_equal_held=True if old is None else bool(np.array_equal(routes[:keep], old[:keep])),
        later_turn_differs=0 if old is None else int((new[:keep] != old[:keep]).any(axis=(1, 2)).sum()),
        dtype=str(routes.dtype),
        zero_rows=int((routes == 0).all(axis=(1, 2)).sum()),
    )
    if SHIFT and held is not None:  # fault injection: this turn's rows placed one token late
        routes = routes.copy()
        routes[keep + 1 :] = routes[keep:-1].copy()
        routes[keep] = 0
    return routes, tokens


tool_agent_loop.merge_turn_routes = _recording_merge
''' + ADD_TOOL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from verl_stable.tasks.addition import build_model_dir

    # head_dim 64: vLLM's CPU attention has no kernel for the demo model's head_dim 16
    return build_model_dir(tmp_path_factory.mktemp("vllm_multiturn_model"), hidden=256)


def _run(tmp_path: Path, model_dir: str, *, shift: bool = False):
    """One multi-turn R3 run of the demo launcher that must succeed: its steps' metric rows, its requests and route
    merges (``record.jsonl``, written in verl's agent-loop worker) and its wall time in seconds."""
    run, record = tmp_path / "run", tmp_path / "record.jsonl"
    tool_file = tmp_path / "add_tool.py"
    tool_file.write_text(TOOL_FILE.format(record=str(record), shift=shift, parser=PARSER))
    env = tier_env(RUN_DIR=str(run), STEPS=str(STEPS), PY=str(VLLM_PYTHON), VERL_PLATFORM="cpu", RAY_DEDUP_LOGS="1")
    overrides = [
        "routing_replay=R3", *FP32,
        f"data.max_response_length={RESPONSE_LENGTH}",
        f"{ROLLOUT}.agent.default_agent_loop=tool_agent",
        f"{ROLLOUT}.multi_turn.enable=True",
        f"{ROLLOUT}.multi_turn.format={PARSER}",
        f"{ROLLOUT}.multi_turn.function_tool_path={tool_file}",
        f"{ROLLOUT}.multi_turn.max_assistant_turns={TURNS}",
        # vLLM's CPU default block (128 tokens) is longer than a whole trajectory: no prefix-cache hit ever
        f"+{ROLLOUT}.engine_kwargs.vllm.block_size={BLOCK_SIZE}",
    ]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo_cpu.sh"), *overrides, f"actor_rollout_ref.model.path={model_dir}",
         *VLLM_ON_CPU],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "rollout_corr/k3_kl" in r.get("data", {})]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), rows
    records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    requests = [r for r in records if r["kind"] == "generate"]
    merges = [r for r in records if r["kind"] == "merge"]
    return [r["data"] for r in rows], requests, merges, wall


def _unrouted_bound(row: dict) -> float:
    """``tokens_without_route`` with one token per sequence unrouted: at most 1 / (the shortest sequence)."""
    return (1 + 1e-9) / (row["prompt_length/min"] + row["response_length/min"])


def test_multi_turn_r3_with_vllm_keeps_every_turns_routes(tmp_path, model_dir):
    rows, requests, merges, wall = _run(tmp_path, model_dir)
    samples = STEPS * 4 * 8  # prompts x group size per step
    # Multi-turn: every trajectory ran 3 assistant turns (2 tool calls between them), in verl's own count.
    for row in rows:
        assert row["num_turns/min"] >= 2 * TURNS, {k: v for k, v in row.items() if "num_turns" in k}
    # Every turn's routes went through the mixin's merge on vLLM's payload: one first turn and two later turns per
    # trajectory, vLLM's rows fitting the tokens it ran (else TurnRoutesError), uint8, the held rows kept.
    first, later = [m for m in merges if m["held_rows"] == 0], [m for m in merges if m["held_rows"] > 0]
    assert len(first) == samples and len(later) == (TURNS - 1) * samples, (len(first), len(later))
    for m in merges:
        assert m["dtype"] == "uint8" and m["new_rows"] == m["sent"] + m["sampled"] - 1, m
        assert m["zero_rows"] == 0, m  # every token the engine ran has a route, tool tokens included
    for m in later:
        assert m["kept"] == m["held_rows"] and m["kept_equal_held"], m  # earlier turns' rows kept, not replaced
        assert m["new_rows"] > m["held_rows"], m  # this turn added rows for the tool tokens and its own
    # later turns found earlier turns' blocks in vLLM's prefix cache, and still returned one route per token
    assert len(requests) == len(merges), (len(requests), len(merges))
    first_turn = min(r["sent"] for r in requests)  # every prompt has the same length (one token per character)
    cached = [r["cached"] for r in requests if r["sent"] > first_turn]
    assert sum(c > 0 for c in cached) > 0, cached
    # R3 on those tokens, fp32 on both sides.
    kl = [row["rollout_corr/k3_kl"] for row in rows]
    assert all(abs(v) <= 1e-6 for v in kl), kl
    for row in rows:
        assert row["actor/routing/route_id_bytes"] == 1.0 and row["actor/routing/old_pass/route_id_bytes"] == 1.0
        for prefix in ("actor/routing/old_pass/", "actor/routing/"):
            assert row[f"{prefix}agreement_mean"] == 1.0, (prefix, row[f"{prefix}agreement_mean"])
            assert row[f"{prefix}tokens_mismatch_any_layer"] == 0.0, (prefix, row)
        # only the final sampled token of each sequence lacks a route: the tool tokens are replayed too
        unrouted = row["actor/routing/old_pass/tokens_without_route"]
        assert 0 < unrouted <= _unrouted_bound(row), (unrouted, _unrouted_bound(row))
    differs = sum(m["later_turn_differs"] for m in later)
    kept = sum(m["kept"] for m in later)
    print(
        "multi-turn R3 with vLLM, fp32: num_turns mean/min "
        f"{[(r['num_turns/mean'], r['num_turns/min']) for r in rows]}, "
        f"response length mean {[r['response_length/mean'] for r in rows]}, k3 KL {kl}, "
        f"tokens without a route (pi_old pass) {[r['actor/routing/old_pass/tokens_without_route'] for r in rows]} "
        f"(bound {[round(_unrouted_bound(r), 4) for r in rows]}), {len(later)} later-turn merges kept "
        f"{kept} held rows, of which vLLM's later turn routed {differs} differently; later-turn requests with a "
        f"prefix-cache hit {sum(c > 0 for c in cached)}/{len(cached)} ({sum(cached)} cached tokens); "
        f"wall {wall:.0f} s"
    )


def test_the_checks_fail_when_a_turns_routes_are_misplaced(tmp_path, model_dir):
    """Fault injection: each later turn's new rows placed one token late (the first new token left unrouted, every
    route after it on its right neighbour). The coverage and agreement checks above would fail."""
    rows, _, merges, _ = _run(tmp_path, model_dir, shift=True)
    assert merges and any(m["held_rows"] for m in merges)
    for row in rows:
        assert row["actor/routing/old_pass/tokens_without_route"] > _unrouted_bound(row), row
        assert row["actor/routing/old_pass/agreement_mean"] < 1.0, row
        assert row["actor/routing/old_pass/tokens_mismatch_any_layer"] > 0.0, row
    print(
        "misplaced routes: agreement (pi_old pass) "
        f"{[r['actor/routing/old_pass/agreement_mean'] for r in rows]}, mismatching tokens "
        f"{[r['actor/routing/old_pass/tokens_mismatch_any_layer'] for r in rows]}, tokens without a route "
        f"{[r['actor/routing/old_pass/tokens_without_route'] for r in rows]}"
    )
