"""The ``hf_cpu`` rollout server in this process, reached the way verl's LLM server clients reach a Ray actor.

Shared by the multi-turn route tests: :func:`hf_cpu_server` builds the real server (float32, routes recorded),
:class:`Handle` stands for its Ray actor handle (``handle.generate.remote(...)``) and records every request and
its output, :func:`local_client` is one of verl's own clients with its load balancer replaced by that handle.
"""

from __future__ import annotations

import copy
from typing import Awaitable, Callable, Optional


def hf_cpu_server(model_path: str, prompt_length: int, response_length: int, **rollout_kwargs):
    """verl-stable's real ``hf_cpu`` server (float32, so a KV-cached decode and a full forward route alike)."""
    from verl.workers.config import HFModelConfig, RolloutConfig
    from verl.workers.rollout.replica import RolloutMode

    from verl_stable.cpu.rollout import HFCPURolloutServer

    config = RolloutConfig(
        name="hf_cpu",
        dtype="float32",
        prompt_length=prompt_length,
        response_length=response_length,
        calculate_log_probs=True,
        max_num_seqs=4,
        tensor_model_parallel_size=1,
        enable_rollout_routing_replay=True,
        **rollout_kwargs,
    )
    return HFCPURolloutServer(config, HFModelConfig(path=model_path), RolloutMode.HYBRID, replica_rank=0)


class Handle:
    """The in-process server as verl's client reaches a Ray actor (``handle.generate.remote(...)``).

    ``cuts`` holds, per request, None or the number of tokens after which the request is interrupted: an
    interrupted request returns what an abort mid-decode returns (the tokens so far, their log-probs and
    routes, ``stop_reason="aborted"``). ``before_request`` (optional) is awaited with the request's index
    before it runs (e.g. a weight update between turns). ``calls`` records ``(prompt_ids, output)`` per
    request, the output copied as the server returned it.
    """

    def __init__(self, server, before_request: Optional[Callable[[int], Awaitable[None]]] = None):
        self.server = server
        self.cuts: list = []
        self.before_request = before_request
        self.calls: list = []
        self.generate = self

    async def remote(self, *, prompt_ids, sampling_params, request_id, **kwargs):
        if self.before_request is not None:
            await self.before_request(len(self.calls))
        cut = self.cuts.pop(0) if self.cuts else None
        abort = cut is not None and cut < sampling_params["max_tokens"]
        if abort:
            sampling_params = {**sampling_params, "max_tokens": cut}
        out = await self.server.generate(
            prompt_ids=prompt_ids, sampling_params=sampling_params, request_id=request_id, **kwargs
        )
        if abort:
            out.stop_reason = "aborted"
        self.calls.append((list(prompt_ids), copy.deepcopy(out)))
        return out


def local_client(handle: Handle, config, partial_rollout: bool = False):
    """verl's LLM server client (``FullyAsyncLLMServerClient`` with ``partial_rollout``: it resumes aborted
    requests), its load balancer replaced by the one in-process server."""
    from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient, LLMServerClient

    base = FullyAsyncLLMServerClient if partial_rollout else LLMServerClient

    class LocalClient(base):
        async def _acquire_server(self, request_id, **extra):
            return "local", handle

        def _release_server(self, server_id, request_id=None):
            return None

    return LocalClient(config=config, load_balancer_handle=None)
