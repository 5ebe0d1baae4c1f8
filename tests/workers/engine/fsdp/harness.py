"""verl's real FSDP2 engine on CPU (one process, gloo) for routing-replay tests.

The engine is built the way verl's own tests/models/test_engine.py builds it (``EngineRegistry.new`` with
``FSDPEngineConfig`` / ``HFModelConfig`` on a transformers model saved from a small config), on verl-stable's
CPU platform (``VERL_PLATFORM=cpu``), and driven through ``infer_batch`` / ``train_batch`` with batches made
by verl's own ``left_right_2_no_padding``. ``hf_reference`` is the plain transformers model on the padded
batch, with verl-stable's public RoutingReplay.
"""

from __future__ import annotations

import socket
from functools import partial

import torch

from tests.utils.routing_replay.helpers.logprobs import gather_logprobs
from tests.utils.routing_replay.helpers.models import SAVED_EXPERTS, SAVED_LAYERS, SAVED_TOP_K, SAVED_VOCAB
from tests.utils.routing_replay.helpers.routes import random_expert_ids

NUM_LAYERS, NUM_EXPERTS, TOP_K, VOCAB = SAVED_LAYERS, SAVED_EXPERTS, SAVED_TOP_K, SAVED_VOCAB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_engine(model_path: str, *, mode: str, use_remove_padding: bool, use_dynamic_bsz: bool,
                gradient_checkpointing: bool = True, lr: float = 0.0, micro_batch_size: int = 2,
                max_token_len: int = 40, pad_to_length: bool = False, lora_rank: int = 0,
                router_replay=None):
    """verl's FSDP2 LM engine (as the registry hands it out: with our replay mixin) on the tiny model.
    ``router_replay``: the engine config's router_replay block (default: verl's ``EngineRouterReplayConfig`` with
    ``mode``)."""
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
        router_replay=router_replay if router_replay is not None else EngineRouterReplayConfig(mode=mode),
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
    """Random valid routes ``[B, S, layers, top_k]`` int16, like verl's agent loop stores them."""
    g = torch.Generator().manual_seed(seed)
    return random_expert_ids(batch_size, seq_len, num_layers, num_experts=num_experts, top_k=TOP_K,
                             generator=g).to(torch.int16)


def engine_state_dict(engine) -> dict:
    """Full (unsharded) parameters of the engine's model, keyed like the transformers model."""
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in engine.module.state_dict().items()
    }


def hf_reference(model_path: str, padded, routes=None, state_dict=None):
    """The plain transformers model on the padded batch ([B, S], left-padded prompt, right-padded response),
    optionally replaying ``routes`` [B, S, layers, top_k] with verl-stable's RoutingReplay (padding rows
    routed natively).

    Returns (response log-probs [B, R], routes the model used [B, S, layers, top_k], routes each router picked
    itself in that same forward [B, S, layers, top_k] -- i.e. given the replayed earlier layers)."""
    from transformers import AutoModelForCausalLM

    from verl_stable.routing import RoutingReplay, codecs

    input_ids, attention_mask, position_ids = padded
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    rr = RoutingReplay(model)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    with torch.no_grad(), rr.record(native=True) as rec:
        if routes is None:
            logits = model(**kwargs).logits
        else:
            with rr.replay(codecs.from_verl_batch(routes, attention_mask, rr.spec)):
                logits = model(**kwargs).logits
    response_len = input_ids.shape[1] // 2
    resp_logp = gather_logprobs(logits[:, -response_len - 1 : -1], input_ids[:, -response_len:])
    shape = (*input_ids.shape, rr.spec.num_layers, rr.spec.top_k)
    used = rec.routes[0].experts.to(torch.int16).view(shape)
    picked = rec.native[0].experts.to(torch.int16).view(shape)
    return resp_logp, used, picked
