"""The hf_cpu rollout as verl drives it: the registered RolloutReplica launches the Ray server actor,
the agent-loop call returns verl's TokenOutput, and the trainer-side adapter's weight update lands."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.utils.routing_replay.helpers import addition_prompt, response_logprobs


@pytest.fixture(scope="module")
def ray_cpu(monkeypatch_module):
    monkeypatch_module.setenv("VERL_PLATFORM", "cpu")
    from verl_stable.integration.cpu import activate_if_requested

    assert activate_if_requested()
    ray.init(
        num_cpus=2,
        object_store_memory=128 << 20,
        include_dashboard=False,
        runtime_env={"env_vars": {"VERL_PLATFORM": "cpu"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _configs(model_dir: str, **rollout_kwargs):
    from verl.workers.config import HFModelConfig, RolloutConfig

    rollout = RolloutConfig(
        name="hf_cpu",
        dtype="float32",
        prompt_length=16,
        response_length=5,
        calculate_log_probs=True,
        max_num_seqs=16,
        tensor_model_parallel_size=1,
        **rollout_kwargs,
    )
    model = HFModelConfig(path=model_dir)
    return rollout, model


def _launch(model_dir, **rollout_kwargs):
    from verl.workers.rollout.replica import RolloutMode, get_rollout_replica_class

    rollout_cfg, model_cfg = _configs(model_dir, **rollout_kwargs)
    replica = get_rollout_replica_class("hf_cpu")(
        replica_rank=0, config=rollout_cfg, model_config=model_cfg, gpus_per_node=1
    )
    replica.rollout_mode = RolloutMode.HYBRID
    asyncio.run(replica.launch_servers())
    return replica, rollout_cfg, model_cfg


def test_generate_returns_token_output_with_logprobs_and_routes(ray_cpu, tiny_assets):
    replica, _, _ = _launch(tiny_assets["model"], enable_rollout_routing_replay=True)
    try:
        server = replica.server_handle
        tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
        prompts = [addition_prompt(tokenizer, a, 9 - a) for a in range(6)]
        sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)
        # Concurrent requests as the agent loop sends them; the server batches them.
        outs = ray.get(
            [
                server.generate.remote(prompt_ids=p, sampling_params=dict(sampling), request_id=str(i))
                for i, p in enumerate(prompts)
            ]
        )
        cfg = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).config
        for p, out in zip(prompts, outs, strict=True):
            assert type(out).__name__ == "TokenOutput"
            assert 1 <= len(out.token_ids) <= 5 and len(out.log_probs) == len(out.token_ids)
            assert all(np.isfinite(out.log_probs)) and max(out.log_probs) <= 0
            assert out.routed_experts.shape == (
                len(p) + len(out.token_ids) - 1,
                cfg.num_hidden_layers,
                cfg.num_experts_per_tok,
            )
            assert out.routed_experts.dtype == np.uint8  # compact over Ray: one byte per id (<= 256 experts)
            assert out.stop_reason == "completed"
        stats = ray.get(server.get_stats.remote())
        assert stats["requests"] == 6 and stats["batches"] < 6  # batched, not one by one
    finally:
        ray.kill(replica.server_handle)


def test_adapter_weight_update_reaches_the_server(ray_cpu, tiny_assets, monkeypatch):
    from verl.workers.engine.fsdp.utils import unfuse_moe_params
    from verl.workers.rollout.base import get_rollout_class

    replica, rollout_cfg, model_cfg = _launch(tiny_assets["model"])
    try:
        server = replica.server_handle
        monkeypatch.setenv("RANK", "0")
        adapter = get_rollout_class("hf_cpu", "async")(config=rollout_cfg, model_config=model_cfg, device_mesh=None)

        tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
        prompt = addition_prompt(tokenizer, 1, 1)
        greedy = dict(temperature=0.0, top_p=1.0, top_k=-1, logprobs=True)
        before = ray.get(server.generate.remote(prompt_ids=prompt, sampling_params=dict(greedy), request_id="a"))

        trained = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32)
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        weights = unfuse_moe_params(iter(trained.state_dict().items()), trained.config.model_type)
        adapter.bucket_bytes = 16 << 10  # many buckets, one atomic commit
        asyncio.run(adapter.update_weights(weights, global_steps=7))
        stats = ray.get(server.get_stats.remote())
        assert stats["weight_updates"] == 1 and stats["weight_version"] == 1

        name = "model.layers.1.mlp.experts.gate_up_proj"
        assert torch.equal(ray.get(server.get_weight.remote(name)), dict(trained.named_parameters())[name])
        after = ray.get(server.generate.remote(prompt_ids=prompt, sampling_params=dict(greedy), request_id="b"))
        assert after.extra_fields["global_steps"] == 7
        ref = response_logprobs(trained, prompt, after.token_ids)
        assert torch.allclose(torch.tensor(after.log_probs), ref, atol=1e-4)
        assert before.log_probs != after.log_probs

        with pytest.raises(ValueError, match="checkpoint_engine.backend=naive"):
            asyncio.run(adapter.update_weights(iter([]), wire_format="delta_flush"))
    finally:
        ray.kill(replica.server_handle)
