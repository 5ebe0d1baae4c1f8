"""``rollout.name=hf_cpu``: a transformers rollout engine for verl's agent loop, registered the way verl
registers vLLM / SGLang.

Three pieces, mirroring verl's vLLM integration (verl/workers/rollout/vllm_rollout/):

- :class:`HFCPURolloutServer` — a Ray actor hosting :class:`~verl_stable.cpu.hf_engine.HFInferenceEngine`.
  It answers the agent loop's token-in/token-out ``generate`` with a :class:`verl.workers.rollout.replica.
  TokenOutput` (token ids, per-token log-probs mu_old, routed experts), batching concurrent requests.
- :class:`HFCPUReplica` — the :class:`RolloutReplica` verl's ``LLMServerManager`` creates
  (``RolloutReplicaRegistry``), which launches that actor.
- :class:`HFCPUServerAdapter` — the :class:`BaseRollout` living inside the trainer worker
  (``get_rollout_class``). verl's naive checkpoint engine calls its ``update_weights`` after every step
  with the trainer's full tensors; it ships them to the server actor in buckets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from typing import Any, Generator, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

from verl_stable.cpu.hf_engine import GenerationRequest, HFInferenceEngine

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf_cpu"
# Requests that arrive within this window are generated as one batch; the agent loop fires a whole
# step's prompts at once, so a short window gathers nearly all of them.
BATCH_WINDOW_S = 0.02


def server_actor_name(replica_rank: int, node_rank: int = 0, suffix: str = "") -> str:
    return f"{ROLLOUT_NAME}_server_{replica_rank}_{node_rank}{suffix}"


def _engine_kwargs(config) -> dict:
    kwargs = config.engine_kwargs.get(ROLLOUT_NAME, None) if config.engine_kwargs else None
    return dict(kwargs or {})


class HFCPURolloutServer:
    """Ray actor: one transformers model, token-in/token-out generation, weight updates."""

    def __init__(self, config, model_config, rollout_mode: RolloutMode, replica_rank: int, node_rank: int = 0):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self.config = omega_conf_to_dataclass(config)
        self.model_config = model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        self.global_steps = None

        engine_kwargs = _engine_kwargs(config)
        unknown = set(engine_kwargs) - {"num_threads", "attn_implementation", "max_batch_size"}
        if unknown:
            raise ValueError(
                f"actor_rollout_ref.rollout.engine_kwargs.{ROLLOUT_NAME} has unknown keys {sorted(unknown)}; "
                "known: num_threads, attn_implementation, max_batch_size"
            )
        torch.set_num_threads(int(engine_kwargs.get("num_threads", 1)))
        self.max_batch_size = int(engine_kwargs.get("max_batch_size", config.max_num_seqs or 256))

        eos = []
        tokenizer = getattr(model_config, "tokenizer", None)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        gen_cfg = getattr(model_config, "generation_config", None)
        if gen_cfg is not None and getattr(gen_cfg, "eos_token_id", None) is not None:
            e = gen_cfg.eos_token_id
            eos.extend([e] if isinstance(e, int) else list(e))

        model_path = model_config.local_path or model_config.path
        self.engine = HFInferenceEngine(
            model_path,
            dtype=config.dtype,
            quantization=config.quantization,
            logprobs_mode=config.logprobs_mode or "processed_logprobs",
            record_routes=bool(config.enable_rollout_routing_replay),
            trust_remote_code=model_config.trust_remote_code,
            attn_implementation=engine_kwargs.get("attn_implementation", "sdpa"),
            eos_token_ids=eos,
            seed=int(config.seed or 0) + replica_rank,
        )
        self._pending: list[tuple[GenerationRequest, asyncio.Future]] = []
        self._staged: list[tuple[str, torch.Tensor]] = []
        self._wakeup: Optional[asyncio.Event] = None
        self._loop_task: Optional[asyncio.Task] = None
        # Generation and weight loading both touch the model; never at the same time.
        self._engine_lock: Optional[asyncio.Lock] = None
        self.stats = {"requests": 0, "batches": 0, "generated_tokens": 0, "generate_s": 0.0, "weight_updates": 0}
        # how many requests for each prompt this server has seen: seeds the sampling of requests without a seed
        self._prompt_counts: dict[tuple[int, ...], int] = {}

    # ----------------------------------------------------------------- agent-loop API
    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs,
    ) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise NotImplementedError(
                f"rollout.name={ROLLOUT_NAME} serves text-only models; use vllm or sglang for multimodal data"
            )
        request = self._make_request(list(prompt_ids), dict(sampling_params))
        self._ensure_loop()
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._wakeup.set()
        result = await future
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            routed_experts=result.routed_experts,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "weight_version": self.engine.weight_version},
        )

    def _make_request(self, prompt_ids: list[int], sp: dict[str, Any]) -> GenerationRequest:
        max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        room = max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room to generate within "
                f"actor_rollout_ref.rollout.max_model_len={max_model_len}"
            )
        if "max_tokens" in sp:
            max_tokens = sp.pop("max_tokens")
        elif "max_new_tokens" in sp:
            max_tokens = sp.pop("max_new_tokens")
        else:
            max_tokens = min(
                self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt_ids)
            )
        max_tokens = max(1, min(int(max_tokens), room))
        rep = float(sp.get("repetition_penalty", 1.0) or 1.0)
        if rep != 1.0:
            raise NotImplementedError(
                f"rollout.name={ROLLOUT_NAME} does not implement repetition_penalty={rep}; set it to 1.0"
            )
        top_k = sp.get("top_k", -1)
        seed = sp.get("seed")
        if seed is None and self.config.full_determinism:
            seed = self.replica_rank + self.config.seed
        if seed is None:
            seed = self._prompt_seed(prompt_ids)
        return GenerationRequest(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=float(sp.get("temperature", 1.0)),
            top_p=float(sp.get("top_p", 1.0)),
            top_k=int(top_k if top_k is not None else -1),
            logprobs=bool(sp.get("logprobs", False)),
            ignore_eos=bool(sp.get("ignore_eos", self.config.ignore_eos)),
            stop_token_ids=tuple(sp.get("stop_token_ids") or ()),
            seed=seed,
        )

    def _prompt_seed(self, prompt_ids: list[int]) -> int:
        """The sampling seed of a request that brings none: (rollout.seed, replica, prompt, how many requests
        for this prompt the server has seen). verl's agent loop sends a group's requests concurrently and they
        batch in arrival order, so one shared generator would hand a rerun different draws; with this seed a
        rerun samples the same responses for every prompt (siblings of a group may swap them), given the same
        weights. Requests are still independent draws: every (prompt, count) pair has its own seed."""
        key = tuple(prompt_ids)
        count = self._prompt_counts.get(key, 0)
        self._prompt_counts[key] = count + 1
        material = repr((int(self.config.seed or 0), self.replica_rank, key, count)).encode()
        return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little") >> 1

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._engine_lock = asyncio.Lock()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(BATCH_WINDOW_S)
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
                requests = [r for r, _ in batch]
                start = time.perf_counter()
                try:
                    async with self._engine_lock:
                        results = await asyncio.to_thread(self.engine.generate, requests)
                except Exception as exc:  # every waiting caller gets the error, none hangs
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.stats["batches"] += 1
                self.stats["requests"] += len(batch)
                self.stats["generated_tokens"] += sum(len(r.token_ids) for r in results)
                self.stats["generate_s"] += time.perf_counter() - start
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)

    # ----------------------------------------------------------------- weights
    async def stage_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Receive one bucket; nothing reaches the model until :meth:`commit_weights`."""
        self._staged.extend(named_tensors)
        return len(named_tensors)

    async def commit_weights(self) -> int:
        """Load every staged tensor at once, between batches: a generation never sees half an update."""
        self._ensure_loop()
        staged, self._staged = self._staged, []
        async with self._engine_lock:
            count = await asyncio.to_thread(self.engine.load_weights, staged)
        self.stats["weight_updates"] += 1
        return count

    async def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        await self.stage_weights(named_tensors)
        return await self.commit_weights()

    async def get_weight(self, name: str) -> torch.Tensor:
        """A copy of one rollout weight (tests check that updates land)."""
        return dict(self.engine.model.named_parameters())[name].detach().clone()

    async def get_stats(self) -> dict:
        return {**self.stats, "weight_version": self.engine.weight_version, "global_steps": self.global_steps}

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    # ----------------------------------------------------------------- lifecycle hooks verl calls
    # Weights and KV cache live in host memory for the whole run, so there is nothing to free or restore.
    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None  # the KV cache is per batch; nothing outlives a generate call

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def wait_for_requests_to_drain(self):
        while self._pending:
            await asyncio.sleep(BATCH_WINDOW_S)
        if self._engine_lock is not None:
            async with self._engine_lock:
                pass

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        # Batches are short and not interruptible; let them finish (a partial rollout is never returned).
        await self.wait_for_requests_to_drain()
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFCPUReplica(RolloutReplica):
    """One ``hf_cpu`` server per replica (tensor/pipeline parallel size 1)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self.config, key) != 1:
                raise ValueError(
                    f"rollout.name={ROLLOUT_NAME} runs one process per replica; "
                    f"set actor_rollout_ref.rollout.{key}=1 (got {getattr(self.config, key)})"
                )

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def init_standalone(self):
        # verl's standalone path builds a GPU resource pool and CheckpointEngineWorkers for NCCL-style
        # weight transfer; the CPU engine takes weights over Ray from the trainer instead.
        raise NotImplementedError(
            f"rollout.name={ROLLOUT_NAME} supports the hybrid engine only; set actor_rollout_ref.hybrid_engine=True "
            "and actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
        )

    async def launch_servers(self):
        if self.is_reward_model or self.is_teacher_model:
            kind = "reward" if self.is_reward_model else "teacher"
            name = f"{ROLLOUT_NAME}_server_{kind}_{self.replica_rank}_0{self.name_suffix}"
        else:
            name = server_actor_name(self.replica_rank, 0, self.name_suffix)
        env_vars = {"VERL_PLATFORM": os.environ.get("VERL_PLATFORM", "cpu")}
        server = (
            ray.remote(HFCPURolloutServer)
            .options(
                name=name,
                # Logical CPUs are all claimed by verl's placement groups; the server only needs a process.
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                runtime_env={"env_vars": env_vars},
            )
            .remote(
                config=self.config,
                model_config=self.model_config,
                rollout_mode=self.rollout_mode,
                replica_rank=self.replica_rank,
            )
        )
        # Surface construction errors (bad dtype, missing routers, ...) here rather than at first request.
        await server.get_stats.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray://{name}"


class HFCPUServerAdapter(BaseRollout):
    """Trainer-side handle on the ``hf_cpu`` server: weight updates and memory hooks."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self._has_server = self.rollout_rank == 0
        self.server_handle = None
        self.sleep_level = 1
        self.bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20

    def _server(self):
        if self.server_handle is None:
            # The server is launched after the hybrid engine, so look it up lazily by name.
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        global_steps: int = None,
        wire_format: str = "named_tensors",
        peft_config=None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise ValueError(
                f"rollout.name={ROLLOUT_NAME} takes full tensors only (got wire_format={wire_format!r}); "
                "set actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if peft_config is not None:
            raise NotImplementedError(
                f"rollout.name={ROLLOUT_NAME} does not load LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        start = time.perf_counter()
        bucket, size = [], 0
        # Every rank drains the generator: producing full tensors from FSDP shards is a collective.
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if not self._has_server:
                continue
            tensor = tensor.detach().to("cpu", copy=True)
            bucket.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= self.bucket_bytes:
                # Awaited one by one so at most one bucket is in flight (bounded host memory).
                await self._server().stage_weights.remote(bucket)
                bucket, size = [], 0
        if not self._has_server:
            return
        if bucket:
            await self._server().stage_weights.remote(bucket)
        total = await self._server().commit_weights.remote()
        if total == 0:
            raise RuntimeError(f"{ROLLOUT_NAME}: the trainer sent no weights to the rollout")
        if global_steps is not None:
            await self._server().set_global_steps.remote(global_steps)
        logger.info("hf_cpu update_weights: %d tensors in %.2fs", total, time.perf_counter() - start)

    def generate_sequences(self, prompts):
        raise NotImplementedError(
            f"rollout.name={ROLLOUT_NAME} is served through verl's agent loop (async mode), not generate_sequences"
        )
