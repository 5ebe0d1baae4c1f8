"""Tiny real transformers MoE models built from configs (no hub): one per router family in memory, and the
two saved ones verl's FSDP engine loads (tests/workers/engine/fsdp)."""

from __future__ import annotations

import torch

VOCAB = 64  # the in-memory family models
FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "olmoe", "gpt_oss"]

# The saved models verl's engine loads: MoE layers, experts, top-k, vocabulary.
SAVED_LAYERS, SAVED_EXPERTS, SAVED_TOP_K, SAVED_VOCAB = 2, 8, 2, 96


def tiny_config(family: str):
    """A 3- or 4-layer config per family; dense layers placed so the MoE-layer mapping is non-trivial."""
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    if family == "qwen3_moe":
        # layer 1 dense via mlp_only_layers: Routes layers = decoder layers (0, 2, 3)
        return tf.Qwen3MoeConfig(
            **common, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
            norm_topk_prob=True, mlp_only_layers=[1], head_dim=8,
        )
    if family == "qwen2_moe":
        # decoder_sparse_step=2: MoE at decoder layers 1 and 3; shared expert on
        return tf.Qwen2MoeConfig(
            **common, num_hidden_layers=4, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=16,
            shared_expert_intermediate_size=24, decoder_sparse_step=2, norm_topk_prob=False,
        )
    if family == "mixtral":
        return tf.MixtralConfig(**common, num_hidden_layers=3, num_local_experts=6, num_experts_per_tok=2, head_dim=8)
    if family == "deepseek_v3":
        # first layer dense; 8 experts in 4 groups, 2 groups kept, top-3, scaled, sigmoid + bias
        return tf.DeepseekV3Config(
            **{**common, "num_key_value_heads": 4}, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
            num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1, moe_intermediate_size=16,
            routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4,
            qk_nope_head_dim=4, v_head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            eos_token_id=1, bos_token_id=0, pad_token_id=2,
        )
    if family == "olmoe":
        return tf.OlmoeConfig(**common, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2)
    if family == "gpt_oss":
        return tf.GptOssConfig(
            **{k: v for k, v in common.items() if k != "intermediate_size"}, intermediate_size=16,
            num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
            layer_types=["sliding_attention", "full_attention"], sliding_window=4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            eos_token_id=1, bos_token_id=0, pad_token_id=2,
        )
    raise ValueError(family)


def sharpen_routers(model, gate_std: float, bias_std: float = 0.1, correction_std: float = 0.0) -> None:
    """Routers with real, distinct logits (several families zero-initialise them: all ties): top-k choices that
    a small weight change can flip, so misplaced routes and drift are visible in the log-probs. ``correction_std``
    > 0 also draws a DeepSeek-style ``e_score_correction_bias`` (a buffer)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2 and p.shape[0] > 1:
                p.normal_(0, gate_std)
            if name.endswith("router.bias"):
                p.normal_(0, bias_std)
        if correction_std:
            for name, b in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.normal_(0, correction_std)


def tiny_model(family: str, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sharpen_routers(model, gate_std=1.0, correction_std=0.05)
    return model.eval()


def tiny_batch():
    return torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))


def save_tiny_moe(path: str) -> str:
    """The product's tiny Qwen3-MoE (:func:`verl_stable.tasks.tiny_moe.build_model_config`) at
    2 layers, hidden 64, 8 experts, top-2, narrower experts and no special token ids, saved from its config,
    random weights."""
    from verl_stable.tasks.tiny_moe import build_model_config

    config = build_model_config(
        SAVED_VOCAB, num_layers=SAVED_LAYERS, hidden=64, num_experts=SAVED_EXPERTS, top_k=SAVED_TOP_K,
        intermediate_size=64, moe_intermediate_size=32, pad_token_id=None, eos_token_id=None,
        attn_implementation="sdpa",
    )
    return _save_sharpened(config, path)


def save_tiny_deepseek_v3(path: str) -> str:
    """A 3-layer DeepSeek-V3 (MLA, 8 routed experts in 2 groups, top-2, one shared expert) whose first layer is
    dense (``first_k_dense_replace=1``): the rollout engines index routes by decoder layer, the model has 2
    MoE layers."""
    from transformers import DeepseekV3Config

    config = DeepseekV3Config(
        vocab_size=SAVED_VOCAB, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=SAVED_EXPERTS,
        num_experts_per_tok=SAVED_TOP_K, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1,
        q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        max_position_embeddings=256, routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return _save_sharpened(config, path)


def _save_sharpened(config, path: str) -> str:
    """Seeded random weights with sharpened routers (the correction bias stays zero), saved to ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    sharpen_routers(model, gate_std=0.5)
    model.save_pretrained(path)
    return path


def addition_prompt(tokenizer, a: int, b: int) -> list[int]:
    """The chat-templated prompt ``"{a}+{b}="`` of the demo's addition task, as token ids."""
    from verl_stable.tasks.addition import MOD10

    content = MOD10.prompt_text(a, b, digits=1)
    out = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
