"""A per-GPU memory plan of a composed recipe, per rank and per phase of verl's colocated step.

verl 0.9.1 runs rollout and training on the same GPUs, one after the other: the rollout engine wakes (weights
synced in, KV cache allocated), generates, then sleeps with ``free_cache_engine=True`` (vLLM ``sleep(level=2)``
in ``vllm_async_server._sleep_hybrid``: KV cache and weights released); the π_old / reference log-prob passes
and the update run while it sleeps. The peak is the largest phase plus what stays resident through it.

Accounting, with its source:
- FSDP2 (PyTorch FSDP full sharding = ZeRO-3): fp32 master params, fp32 grads and Adam's two fp32 moments are
  each split over ``fsdp_size`` ranks (16 B/param / F); the working set is the all-gathered bf16 layer being
  computed plus the prefetched next one, and that layer's unsharded fp32 gradient before reduce-scatter.
- Megatron: megatron-core ``training/theoretical_memory_usage.py``: 6 B/param (bf16 weight + fp32 grad) on the
  rank's model-parallel shard + 12/DP B/param (fp32 main weight + Adam moments) with the distributed
  optimizer; dense params split by TP·PP and sharded over DP·CP, experts split by EP·ETP·PP, sharded over the
  expert-DP group.
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  34·s·b·h + 5·a·s²·b bytes per layer (attention 11sbh + 5as²b, MLP 19sbh, norms 4sbh), ÷ t with sequence
  parallelism. Flash attention stores no s² scores, so the 5as² term is dropped; the MLP term is re-derived for
  routed experts (k copies of the token: dispatched input, SwiGLU gate/up/act/product, combine) and the
  attention term for the model's real Q/KV widths. Full recompute keeps each layer's input (2·s·h bytes) plus
  one layer's activations while it is recomputed.
- Logits: tokens × vocab (÷ TP: vocab-parallel on Megatron) × (bf16 logits + fp32 log-softmax/entropy + fp32
  grad).
- Rollout: vLLM / SGLang claim ``gpu_memory_utilization`` × GPU memory (weights, activations, then KV from the
  rest); weights per GPU = weights / rollout TP (EP inside the TP group splits the experts the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from verl_stable.validation.model_shape import ModelShape

GB = 1e9
#: PyTorch's caching allocator holds more than it hands out (fragmentation, per-stream pools) and CUDA
#: contexts / NCCL buffers sit outside any tensor: the verdict adds this fraction to the computed peak.
ALLOCATOR_HEADROOM = 0.10
#: CUDA contexts of the trainer and the sleeping rollout process, NCCL communicators, cuBLAS workspaces.
RUNTIME_GB = 2.5
#: What the plan is expected to miss by, either way (routing imbalance across experts, allocator behaviour,
#: kernels' workspaces): a first-node run compares ``per_gpu_peak_gb`` with torch.cuda.max_memory_reserved.
MARGIN = 0.20

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"


def _sel(config, key, default=None):
    value = OmegaConf.select(config, key, default=default, throw_on_missing=False)
    return default if value is None else value


@dataclass
class Phase:
    name: str
    parts: dict = field(default_factory=dict)  # component -> bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class Plan:
    recipe: str
    backend: str
    gpu_gb: float
    shape: ModelShape
    layout: dict
    phases: list
    rollout: dict
    checkpoint: dict
    host: dict
    notes: list

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    @property
    def per_gpu_peak_gb(self) -> float:
        return self.peak_phase.total / GB

    @property
    def with_headroom_gb(self) -> float:
        return self.per_gpu_peak_gb * (1 + ALLOCATOR_HEADROOM)

    @property
    def fits(self) -> bool:
        return self.with_headroom_gb <= self.gpu_gb and self.rollout["kv_fits_one_sequence"]

    def as_dict(self) -> dict:
        return {
            "recipe": self.recipe, "backend": self.backend, "gpu_gb": self.gpu_gb,
            "per_gpu_peak_gb": round(self.per_gpu_peak_gb, 2), "with_headroom_gb": round(self.with_headroom_gb, 2),
            "fits": self.fits, "peak_phase": self.peak_phase.name, "expected_error": MARGIN,
            "model": {"source": self.shape.source, "params": self.shape.params, "expert_params": self.shape.expert_params},
            "layout": self.layout,
            "phases": {p.name: {**{k: round(v / GB, 3) for k, v in p.parts.items()}, "total": round(p.total / GB, 3)}
                       for p in self.phases},
            "rollout": self.rollout, "checkpoint": self.checkpoint, "host": self.host,
        }

    def lines(self) -> list[str]:
        s = self.shape
        out = [f"model: {s.source} ({s.model_type}, {s.params / 1e9:.2f}B params, {s.expert_params / 1e9:.2f}B in "
               f"experts; {s.layers} layers, {s.experts} experts top-{s.top_k}, {s.max_positions:,} positions)",
               "layout: " + ", ".join(f"{k} {v}" for k, v in self.layout.items())]
        for phase in self.phases:
            parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in phase.parts.items() if v)
            out.append(f"phase {phase.name}: {phase.total / GB:.1f} GB per GPU ({parts})")
        r = self.rollout
        out.append(f"rollout engine: {r['engine']} TP {r['tp']}, {r['precision']} weights {r['weights_gb_per_gpu']:.2f} "
                   f"GB/GPU, claims {r['claimed_gb_per_gpu']:.1f} GB/GPU; KV {r['kv_bytes_per_token_per_gpu']:,} B/token/GPU"
                   f" -> {r['kv_tokens_per_engine']:,} tokens per engine = {r['full_sequences_per_engine']} full "
                   f"{r['max_model_len']:,}-token sequences at once")
        c = self.checkpoint
        out.append(f"checkpoints: every {c['save_freq']} steps ({c['total_training_steps']} steps), "
                   f"{c['gb_per_checkpoint']:.0f} GB each ({c['contents']}), keep {c['kept']} -> {c['gb_per_run']:.0f} GB "
                   "of disk per run")
        h = self.host
        out.append(f"host: the batch's routes {h['routes_in_batch_gb']:.1f} GB on the driver at the worst case "
                   f"({h['route_bytes_per_token']} B/token); offloaded state {h['offloaded_gb_per_gpu']:.1f} GB per "
                   f"GPU in CPU memory ({h['offloaded_gb_per_gpu'] * self.layout['gpus_per_node']:.0f} GB per node)")
        out.extend(f"note: {n}" for n in self.notes)
        verdict = "fits" if self.fits else "DOES NOT FIT"
        why = "" if self.rollout["kv_fits_one_sequence"] else " (the rollout's KV cache cannot hold one full sequence)"
        out.append(f"verdict: {verdict} a {self.gpu_gb:g} GB GPU: peak {self.per_gpu_peak_gb:.1f} GB per GPU in phase "
                   f"'{self.peak_phase.name}', {self.with_headroom_gb:.1f} GB with {ALLOCATOR_HEADROOM:.0%} allocator "
                   f"headroom; expected error ±{MARGIN:.0%}{why}")
        return out


# ------------------------------------------------------------------------------------------ activations
def layer_activation_bytes(s: ModelShape, full_attention: bool = True) -> float:
    """Bytes one token leaves in one layer for the backward pass (bf16, no recompute, flash attention)."""
    h = s.hidden
    if full_attention:
        gate = 2 if s.model_type == "qwen3_next" else 1
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        attention = 2 * h + 2 * (q * gate + 2 * kv) + 2 * q  # QKV input, Q(+gate)/K/V, core-attention output
    else:  # Gated DeltaNet: projection input, q/k/v/z, conv output, gated-norm output
        la = s.linear_attention
        key, value = la["num_k_heads"] * la["k_dim"], la["num_v_heads"] * la["v_dim"]
        attention = 2 * h + 2 * (2 * key + 2 * value) + 2 * (2 * key + value) + 2 * value
    norms = 4 * h  # two RMSNorm inputs (Korthikanti's 4sbh for the layer norms)
    routed = s.top_k * (2 * h + 8 * s.moe_ffn + 2 * h)  # dispatched input, gate+up, act, product; combine
    shared = (2 * h + 8 * s.shared_ffn) if s.shared_ffn else 0
    router = 4 * s.experts + 2 * h  # fp32 logits/probs and the router input
    return attention + norms + routed + shared + router


def mean_layer_activation_bytes(s: ModelShape) -> float:
    full, linear = s.full_attention_layers, s.layers - s.full_attention_layers
    total = full * layer_activation_bytes(s, True) + (linear * layer_activation_bytes(s, False) if linear else 0)
    return total / s.layers


def activations(s: ModelShape, tokens: float, recompute: bool) -> float:
    """Bytes of stored activations for ``tokens`` tokens on one rank (already divided by TP/CP/SP)."""
    if recompute:  # each layer's input kept, one layer's activations live during its recomputation
        return s.layers * tokens * 2 * s.hidden + tokens * max(layer_activation_bytes(s, True),
                                                                 layer_activation_bytes(s, False) if s.linear_attention else 0)
    return s.layers * tokens * mean_layer_activation_bytes(s)


#: verl's fused linear + log-prob/entropy (use_fused_kernels, verl.utils.experimental.torch_functional
#: FusedLinearForPPO) materialises the logits this many tokens at a time and recomputes them in backward.
FUSED_CHUNK_TOKENS = 512


def logits_bytes(s: ModelShape, tokens: float, tp: int, backward: bool, fused: bool = False) -> float:
    per = 2 + 4 + (4 if backward else 0)  # bf16 logits, fp32 log-softmax/entropy, fp32 gradient
    if fused:  # one fp32 chunk of logits, its softmax and gradient, plus the fp32 log-probs / entropy per token
        return min(tokens, FUSED_CHUNK_TOKENS) * math.ceil(s.vocab / tp) * 12 + tokens * 8
    return tokens * math.ceil(s.vocab / tp) * per


# ------------------------------------------------------------------------------------------ the plan
def _rollout(config, s: ModelShape, gpu_gb: float) -> dict:
    engine = str(_sel(config, f"{ROLLOUT}.name", "vllm"))
    tp = int(_sel(config, f"{ROLLOUT}.tensor_model_parallel_size", 1))
    util = float(_sel(config, f"{ROLLOUT}.gpu_memory_utilization", 0.5))
    quant = _sel(config, f"{ROLLOUT}.quantization")
    # FP8 (verl's block-wise e4m3 online quantisation) covers the linear layers; embeddings, lm_head, norms and
    # the routers (verl lists every mlp.gate in ignored_layers) stay bf16
    quantised = s.expert_params + s.layers * (s.dense_params_per_layer_avg - s.experts * s.hidden)
    weights = (quantised * 1 + (s.params - quantised) * 2) if quant == "fp8" else s.params * 2
    weights_gpu = weights / tp
    batched = int(_sel(config, f"{ROLLOUT}.max_num_batched_tokens", 8192))
    # vLLM's profile run: one max_num_batched_tokens forward (hidden states, MoE dispatch, fp32 logits)
    act = batched * (4 * s.vocab + 4 * s.top_k * s.hidden + 24 * s.hidden) / tp
    claimed = util * gpu_gb * GB
    kv_gpu = s.kv_bytes_per_token * math.ceil(s.kv_heads / tp) / s.kv_heads if s.kv_heads else 0
    kv_tokens = max(0.0, claimed - weights_gpu - act) / kv_gpu if kv_gpu else 0
    max_len = int(_sel(config, f"{ROLLOUT}.max_model_len", 0) or (int(config.data.max_prompt_length)
                                                                   + int(config.data.max_response_length)))
    return dict(engine=engine, tp=tp, gpu_memory_utilization=util, precision=quant or "bf16",
                weights_gb_per_gpu=weights_gpu / GB, activation_gb_per_gpu=act / GB, claimed_gb_per_gpu=claimed / GB,
                kv_bytes_per_token_per_gpu=int(kv_gpu), kv_tokens_per_engine=int(kv_tokens),
                full_sequences_per_engine=int(kv_tokens // max_len), max_model_len=max_len,
                kv_fits_one_sequence=kv_tokens >= max_len, free_cache_engine=bool(_sel(config, f"{ROLLOUT}.free_cache_engine", True)))


def _needs_ref(config) -> bool:
    return bool(_sel(config, f"{ACTOR}.use_kl_loss", False)) or bool(_sel(config, "algorithm.use_kl_in_reward", False))


def memory_plan(config: DictConfig, shape: ModelShape, gpu_gb: float = 80.0, recipe: str = "") -> Plan:
    s = shape
    world = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    strategy = str(_sel(config, f"{ACTOR}.strategy", "fsdp2"))
    megatron = strategy == "megatron"
    tokens = float(_sel(config, f"{ACTOR}.ppo_max_token_len_per_gpu", 16384))
    lp_tokens = float(max(_sel(config, f"{ROLLOUT}.log_prob_max_token_len_per_gpu", 16384),
                          _sel(config, "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", 0) or 0))
    notes = []
    layer_params = s.expert_params_per_layer + s.dense_params_per_layer_avg
    fused = bool(_sel(config, "actor_rollout_ref.model.use_fused_kernels", False)) and not megatron
    if megatron:
        m = f"{ACTOR}.megatron"
        tp, pp, cp = (int(_sel(config, f"{m}.{k}", 1)) for k in ("tensor_model_parallel_size",
                                                                  "pipeline_model_parallel_size", "context_parallel_size"))
        ep, etp = int(_sel(config, f"{m}.expert_model_parallel_size", 1)), int(_sel(config, f"{m}.expert_tensor_parallel_size", 1) or tp)
        dense_rank = s.dense_params / (tp * pp)
        expert_rank = s.expert_params / (ep * etp * pp)
        dense_dp, expert_dp = world // (tp * pp), world // (ep * etp * pp)  # optimizer shards over DP x CP
        params = 2 * (dense_rank + expert_rank)
        grads = 4 * (dense_rank + expert_rank)
        optim = 12 * (dense_rank / dense_dp + expert_rank / expert_dp)
        working = 0.0
        otc = _sel(config, f"{m}.override_transformer_config", {}) or {}
        recompute = otc.get("recompute_granularity") == "full"
        # verl 0.9.1: param_offload also releases the gradient buffers while the engine is inactive
        p_off, o_off = (bool(_sel(config, f"{m}.{k}", False)) for k in ("param_offload", "optimizer_offload"))
        g_off = p_off
        rank_tokens = tokens / (tp if _sel(config, f"{m}.sequence_parallel", tp > 1) else 1) / pp
        rank_lp = lp_tokens / tp
        vocab_tp = tp
        layout = dict(world=world, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, dp=world // (tp * pp * cp), expert_dp=expert_dp,
                      recompute=otc.get("recompute_granularity") or "none", param_offload=p_off,
                      optimizer_offload=o_off, tokens_per_rank=int(rank_tokens))
        if pp > 1:
            notes.append("pipeline stages hold up to PP micro-batches of activations in 1F1B; counted as one")
    else:
        f = f"{ACTOR}.fsdp_config"
        fsdp = int(_sel(config, f"{f}.fsdp_size", -1))
        fsdp = world if fsdp in (-1, 0) else fsdp
        sp = int(_sel(config, f"{ACTOR}.ulysses_sequence_parallel_size", 1))
        params, grads, optim = 4 * s.params / fsdp, 4 * s.params / fsdp, 8 * s.params / fsdp
        working = (2 * 2 + 4) * layer_params + 2 * s.vocab * s.hidden  # 2 bf16 layers + 1 fp32 grad + lm_head
        recompute = bool(_sel(config, "actor_rollout_ref.model.enable_gradient_checkpointing", False))
        p_off, o_off = (bool(_sel(config, f"{f}.{k}", False)) for k in ("param_offload", "optimizer_offload"))
        g_off = p_off
        # verl's engine packs ppo_max_token_len_per_gpu x SP tokens per micro-batch, then Ulysses splits them
        rank_tokens, rank_lp, vocab_tp = tokens, lp_tokens, 1
        layout = dict(world=world, fsdp_size=fsdp, ulysses_sp=sp, recompute="full" if recompute else "none",
                      param_offload=p_off, optimizer_offload=o_off, tokens_per_rank=int(rank_tokens))
    layout["gpus_per_node"] = int(config.trainer.n_gpus_per_node)
    rollout = _rollout(config, s, gpu_gb)
    runtime = RUNTIME_GB * GB
    asleep = 0.0 if rollout["free_cache_engine"] else rollout["claimed_gb_per_gpu"] * GB
    if not rollout["free_cache_engine"]:
        notes.append(f"{ROLLOUT}.free_cache_engine=false: the rollout keeps its memory through training")
    ref = 0.0
    if _needs_ref(config):
        ref_off = bool(_sel(config, "actor_rollout_ref.ref.fsdp_config.param_offload" if not megatron
                            else "actor_rollout_ref.ref.megatron.param_offload", False))
        # bf16 reference weights on the same shard as the actor's (FSDP's actor shard is fp32)
        ref = 0.0 if ref_off else (params if megatron else params / 2)
    resident_params = 0.0 if p_off else params
    resident_grads = 0.0 if (g_off or not megatron) else grads  # FSDP frees grads after the step (set_to_none)
    resident_optim = 0.0 if o_off else optim
    import torch

    from verl_stable.routing.routes import compact_dtype

    route_item = torch.empty((), dtype=compact_dtype(s.experts)).element_size() if s.experts else 0
    route_bytes = s.layers * s.top_k * route_item
    phases = [
        Phase("rollout", {"rollout engine (gpu_memory_utilization)": rollout["claimed_gb_per_gpu"] * GB,
                          "trainer params resident": resident_params, "trainer grads resident": resident_grads,
                          "optimizer resident": resident_optim, "reference params": ref, "runtime": runtime}),
        Phase("log_prob", {"params": params, "gather working set": working, "optimizer resident": resident_optim,
                           "activations (one layer, no grad)": rank_lp * layer_activation_bytes(s),
                           "logits": logits_bytes(s, rank_lp, vocab_tp, backward=False, fused=fused), "reference params": ref,
                           "rollout asleep": asleep, "runtime": runtime}),
        Phase("train", {"params": params, "grads": grads, "gather working set": working,
                        "optimizer resident": resident_optim,
                        "activations": activations(s, rank_tokens, recompute),
                        "logits": logits_bytes(s, rank_tokens, vocab_tp, backward=True, fused=fused),
                        "routes (micro-batch)": rank_tokens * route_bytes, "reference params": ref,
                        "rollout asleep": asleep, "runtime": runtime}),
        Phase("optimizer_step", {"params": params, "grads": grads, "optimizer": optim, "reference params": ref,
                                 "rollout asleep": asleep, "runtime": runtime}),
    ]
    # checkpoints: verl saves model + optimizer (+ extra); FSDP's model state is the fp32 master copy,
    # Megatron's dist checkpoint holds bf16 weights and the fp32 main weights in the optimizer state
    contents = list(_sel(config, f"{ACTOR}.checkpoint.save_contents", ["model", "optimizer", "extra"]))
    per_param = (("model" in contents) * (2 if megatron else 4) + ("optimizer" in contents) * (12 if megatron else 8)
                 + ("hf_model" in contents) * 2)
    save_freq = int(_sel(config, "trainer.save_freq", -1))
    steps = int(_sel(config, "trainer.total_training_steps", 0) or 0)
    n_saves = (steps // save_freq) if save_freq > 0 and steps else 0
    keep = _sel(config, "trainer.max_actor_ckpt_to_keep")
    kept = min(int(keep), n_saves) if keep is not None else n_saves
    ckpt = s.params * per_param / GB
    checkpoint = dict(save_freq=save_freq, total_training_steps=steps, contents="+".join(contents),
                      bytes_per_param=per_param, gb_per_checkpoint=ckpt, kept=kept, gb_per_run=ckpt * kept)
    responses = int(config.data.train_batch_size) * int(_sel(config, f"{ROLLOUT}.n", 1))
    seq = int(config.data.max_prompt_length) + int(config.data.max_response_length)
    from verl_stable.routing.config import ROUTE_RETURN_KEY, replay_mode

    replays = replay_mode(config) != "disabled" or bool(_sel(config, ROUTE_RETURN_KEY, False))
    offloaded = (params if p_off else 0) + (grads if g_off and megatron else 0) + (optim if o_off else 0)
    host = dict(responses_per_step=responses, max_tokens_per_step=responses * seq,
                route_bytes_per_token=route_bytes if replays else 0,
                routes_in_batch_gb=responses * seq * (route_bytes if replays else 0) / GB, offloaded_gb_per_gpu=offloaded / GB)
    return Plan(recipe, "megatron" if megatron else "fsdp", gpu_gb, s, layout, phases, rollout, checkpoint, host, notes)
