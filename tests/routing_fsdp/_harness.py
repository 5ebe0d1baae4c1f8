"""Helpers for routing replay through verl's real FSDP2 engine on CPU (one process, gloo).

The engine is built the way verl's own tests/models/test_engine.py builds it (``EngineRegistry.new`` with
``FSDPEngineConfig`` / ``HFModelConfig`` on a transformers model saved from a small config), on verl-stable's
CPU platform (``VERL_PLATFORM=cpu``), and driven through ``infer_batch`` / ``train_batch`` with batches made
by verl's own ``left_right_2_no_padding``. (A module of its own, not conftest: ``tests/conftest.py`` owns
that import name.)
"""

from __future__ import annotations

import os

os.environ.setdefault("VERL_PLATFORM", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket  # noqa: E402
from functools import partial  # noqa: E402

import torch  # noqa: E402

NUM_LAYERS = 2
NUM_EXPERTS = 8
TOP_K = 2
VOCAB = 96


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_moe(path: str) -> str:
    """A 2-layer Qwen3-MoE (hidden 64, 8 experts, top-2) saved from its config, random weights."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=TOP_K,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return _save_with_sharp_routers(AutoModelForCausalLM.from_config, config, path)


def save_tiny_deepseek_v3(path: str) -> str:
    """A 3-layer DeepSeek-V3 (MLA, 8 routed experts in 2 groups, top-2, one shared expert) whose first layer is
    dense (``first_k_dense_replace=1``): the rollout engines index routes by decoder layer, the model has 2
    MoE layers."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    config = DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=NUM_EXPERTS, num_experts_per_tok=TOP_K,
        n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1, q_lora_rank=None, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, max_position_embeddings=256,
        routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False, attn_implementation="sdpa",
    )
    return _save_with_sharp_routers(AutoModelForCausalLM.from_config, config, path)


def _save_with_sharp_routers(from_config, config, path: str) -> str:
    """Seeded random weights, saved to ``path``, with sharper routers than the default init: top-k choices
    that a tiny weight change can flip, so drift and misplaced routes are visible in the log-probs (a
    near-uniform router hides them). A DeepSeek-style correction bias gets non-zero values too."""
    torch.manual_seed(0)
    model = from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
            if name.endswith("e_score_correction_bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    return path


def make_engine(model_path: str, *, mode: str, use_remove_padding: bool, use_dynamic_bsz: bool,
                gradient_checkpointing: bool = True, lr: float = 0.0, micro_batch_size: int = 2,
                max_token_len: int = 40, pad_to_length: bool = False, lora_rank: int = 0):
    """verl's FSDP2 LM engine (as the registry hands it out: with our replay mixin) on the tiny model."""
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import EngineRouterReplayConfig, FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry

    model_config = HFModelConfig(
        path=model_path,
        load_tokenizer=False,
        use_remove_padding=use_remove_padding,
        enable_gradient_checkpointing=gradient_checkpointing,
        override_config={"attn_implementation": "sdpa"},  # flash-attn does not exist on CPU
        lora_rank=lora_rank,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
    )
    engine_config = FSDPEngineConfig(
        strategy="fsdp2",
        forward_only=False,
        fsdp_size=1,
        use_dynamic_bsz=use_dynamic_bsz,
        use_remove_padding=use_remove_padding,
        max_token_len_per_gpu=max_token_len,
        infer_max_token_len_per_gpu=max_token_len,
        micro_batch_size_per_gpu=micro_batch_size,
        infer_micro_batch_size_per_gpu=micro_batch_size,
        use_torch_compile=False,
        pad_to_length=pad_to_length,
        pad_to_length_bucket=16,
        # fp32 end to end: bit-identity claims are about routing, not bf16 rounding.
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        router_replay=EngineRouterReplayConfig(mode=mode),
    )
    optimizer_config = FSDPOptimizerConfig(lr=lr, weight_decay=0.0, clip_grad=1e9, lr_warmup_steps_ratio=0.0)
    engine = EngineRegistry.new(
        model_type="language_model",
        backend="fsdp2",
        model_config=model_config,
        engine_config=engine_config,
        optimizer_config=optimizer_config,
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def make_batch(batch_size: int = 6, prompt_len: int = 8, response_len: int = 8, seed: int = 0, routes=None):
    """A left-padded-prompt / right-padded-response batch of random tokens, converted by verl's own
    ``left_right_2_no_padding`` (which also packs ``routed_experts`` [B, S, L, K] into nested per-token form).
    Sequence lengths differ so that dynamic batching re-orders them."""
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask
    from verl.workers.utils.padding import left_right_2_no_padding

    g = torch.Generator().manual_seed(seed)
    seq = prompt_len + response_len
    input_ids = torch.randint(1, VOCAB, (batch_size, seq), generator=g)
    attention_mask = torch.zeros(batch_size, seq, dtype=torch.int64)
    for b in range(batch_size):
        p = 2 + (b * 3 + seed) % (prompt_len - 1)  # prompt tokens (left padded)
        r = 1 + (b * 5 + seed) % response_len  # response tokens (right padded)
        attention_mask[b, prompt_len - p : prompt_len + r] = 1
    position_ids = compute_position_id_with_mask(attention_mask)
    tensors = {
        "input_ids": input_ids,
        "prompts": input_ids[:, :prompt_len],
        "responses": input_ids[:, prompt_len:],
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": attention_mask[:, prompt_len:],
        "advantages": torch.randn(batch_size, response_len, generator=g),
    }
    if routes is not None:
        tensors["routed_experts"] = routes
    data = DataProto.from_single_dict(tensors, meta_info={"temperature": 1.0})
    td = left_right_2_no_padding(data.to_tensordict())
    return td, (input_ids, attention_mask, position_ids)


def set_engine_keys(td, engine, *, compute_loss: bool = False):
    """The non-tensor keys verl's TrainingWorker adds before calling the engine."""
    from verl.utils import tensordict_utils as tu

    cfg = engine.engine_config
    tu.assign_non_tensor(
        td,
        use_remove_padding=cfg.use_remove_padding,
        use_dynamic_bsz=cfg.use_dynamic_bsz,
        max_token_len_per_gpu=cfg.max_token_len_per_gpu,
        micro_batch_size_per_gpu=cfg.micro_batch_size_per_gpu,
        use_fused_kernels=False,
        compute_loss=compute_loss,
        global_batch_size=td.shape[0],
    )
    return td


def ppo_loss_fn():
    """verl's own ppo_loss (vanilla clip) as the training loss."""
    from verl.workers.config import ActorConfig
    from verl.workers.utils.losses import ppo_loss

    config = ActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=1, use_kl_loss=False)
    return partial(ppo_loss, config=config)


def random_routes(batch_size: int, seq_len: int, seed: int = 1, num_layers: int = NUM_LAYERS,
                  num_experts: int = NUM_EXPERTS) -> torch.Tensor:
    """Random valid routes ``[B, S, layers, top_k]`` (distinct experts per row), int16 like verl's agent loop:
    almost never what the routers would pick, so replaying them visibly changes the forward."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch_size, seq_len, num_layers, num_experts, generator=g)
    return scores.argsort(-1)[..., :TOP_K].to(torch.int16)


def engine_state_dict(engine) -> dict:
    """Full (unsharded) parameters of the engine's model, keyed like the transformers model."""
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in engine.module.state_dict().items()
    }


def _capture_native(site, i: int, into: dict):
    """Hook one router so that ``into[i]`` holds its own top-k of the latest forward (given its input in that
    forward, i.e. after any replayed earlier layers). Registered before the replay hooks, so it sees the
    router's choice, not the replayed one."""
    module = site.module
    if site.adapter.kind == "topk_router":  # a router module returning (logits, weights, indices)
        return module.register_forward_hook(lambda m, a, out: into.__setitem__(i, out[2].detach().clone()))
    # DeepSeek-V3 style: the MoE block routes with its class's route_tokens_to_experts(gate logits).
    stock = type(module).route_tokens_to_experts

    def gate_hook(m, args, logits):
        into[i] = stock(module, logits.view(-1, logits.shape[-1]))[0].detach().clone()

    return module.gate.register_forward_hook(gate_hook)


def hf_reference(model_path: str, padded, routes=None, state_dict=None):
    """The plain transformers model on the padded batch ([B, S], left-padded prompt, right-padded response),
    optionally replaying ``routes`` [B, S, layers, top_k] with verl-stable's RoutingReplay (padding rows
    routed natively).

    Returns (response log-probs [B, R], routes the model used [B, S, layers, top_k], routes each router picked
    itself in that same forward [B, S, layers, top_k] -- i.e. given the replayed earlier layers)."""
    from transformers import AutoModelForCausalLM

    from verl_stable.routing import Routes, RoutingReplay
    from verl_stable.routing.hf import find_routers

    input_ids, attention_mask, position_ids = padded
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    # Registered before the replay hooks, so it sees each router's own top-k.
    native = {}
    handles = [_capture_native(site, i, native) for i, site in enumerate(find_routers(model))]
    rr = RoutingReplay(model)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    with torch.no_grad(), rr.record() as rec:
        if routes is None:
            logits = model(**kwargs).logits
        else:
            with rr.replay(Routes.from_verl_batch(routes, attention_mask, rr.spec)):
                logits = model(**kwargs).logits
    for h in handles:
        h.remove()
    response_len = input_ids.shape[1] // 2
    logp = torch.log_softmax(logits[:, -response_len - 1 : -1].float(), dim=-1)
    resp_logp = logp.gather(-1, input_ids[:, -response_len:].unsqueeze(-1)).squeeze(-1)
    layers, top_k = rr.spec.num_layers, rr.spec.top_k
    used = rec.routes[0].experts.to(torch.int16).view(*input_ids.shape, layers, top_k)
    picked = torch.stack([native[i] for i in range(layers)], dim=1).to(torch.int16)
    return resp_logp, used, picked.view(*input_ids.shape, layers, top_k)
