"""Tiny real transformers MoE models built from configs (no hub), one per router family."""

from __future__ import annotations

import torch

VOCAB = 64


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


def random_routes_idx(num_tokens, num_layers, num_experts, top_k, generator=None):
    """Random valid expert ids [T, L, K]: K distinct experts per row."""
    return torch.rand(num_tokens, num_layers, num_experts, generator=generator).argsort(-1)[..., :top_k]


FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "olmoe", "gpt_oss"]


def tiny_model(family: str, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        # Routers are zero-initialised in several families (all ties): give them real, distinct logits.
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2 and p.shape[0] > 1:
                p.normal_(0, 1.0)
            if name.endswith("router.bias"):
                p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    return model.eval()


def token_logprobs(model, input_ids, attention_mask=None):
    """log pi(x_t | x_<t) for every next token, [B, S-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def tiny_batch():
    return torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))


class ExpertTap:
    """Records, for every call of every MoE layer's experts module, the ids it received (an observation
    independent of the replay machinery: the ids the stock experts kernel actually used)."""

    def __init__(self, model, rr):
        self.calls = [[] for _ in rr.sites]
        self._handles = []
        for i, site in enumerate(rr.sites):
            block = site.module if site.adapter.kind == "route_method" else model.get_submodule(site.name.rsplit(".", 1)[0])
            self._handles.append(block.experts.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i):
        def hook(module, args):
            self.calls[i].append(args[1].detach().clone())

        return hook

    def close(self):
        for h in self._handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
