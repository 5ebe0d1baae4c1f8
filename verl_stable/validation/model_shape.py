"""A model's shape, read from its config.json: the shipped files under ``recipes/models/`` for the hub ids the
recipes name, or the directory ``actor_rollout_ref.model.path`` points at. Nothing here touches the hub.

Read by the launch-time model checks (:mod:`verl_stable.validation.model`) and by the recipes' memory plan."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

MODELS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "models"
MODEL_PATH_KEY = "actor_rollout_ref.model.path"
OVERRIDE_KEY = "actor_rollout_ref.model.override_config"

#: Hub ids whose config.json ships with the recipes (the published file, see recipes/models/README.md).
HUB_MODELS = {"Qwen/Qwen3-30B-A3B-Base": "qwen3_30b_a3b_base", "Qwen/Qwen1.5-MoE-A2.7B": "qwen1.5_moe_a2.7b"}


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan and the checks need from a config.json (transformers' field names)."""

    source: str
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int
    top_k: int
    moe_ffn: int
    shared_ffn: int
    max_positions: int
    tied: bool
    full_attention_layers: int  # layers with a KV cache (Qwen3-Next: every full_attention_interval-th)
    linear_attention: dict  # Gated DeltaNet widths (Qwen3-Next), {} otherwise

    # ------------------------------------------------------------------------------------------- parameters
    def attention_params(self, full: bool = True) -> int:
        h, d = self.hidden, self.head_dim
        if not full:
            la = self.linear_attention
            key, value = la["num_k_heads"] * la["k_dim"], la["num_v_heads"] * la["v_dim"]
            in_qkvz = h * (2 * key + 2 * value)
            in_ba = h * 2 * la["num_v_heads"]
            conv = (2 * key + value) * la["conv_kernel"]
            return in_qkvz + in_ba + conv + 2 * la["num_v_heads"] + la["v_dim"] + value * h
        gate = 2 if self.model_type == "qwen3_next" else 1  # Qwen3-Next's q_proj also emits the output gate
        weights = h * self.heads * d * gate + 2 * h * self.kv_heads * d + self.heads * d * h
        if self.model_type.startswith("qwen2"):  # Qwen2 family: biases on q/k/v, no q/k norms
            return weights + self.heads * d + 2 * self.kv_heads * d
        return weights + 2 * d  # Qwen3 families: q_norm, k_norm

    @property
    def expert_params_per_layer(self) -> int:
        return self.experts * 3 * self.hidden * self.moe_ffn  # SwiGLU: gate + up + down per expert

    @property
    def dense_params_per_layer_avg(self) -> float:
        """Everything of a layer but the routed experts (attention, router, shared expert, norms), averaged."""
        full, linear = self.full_attention_layers, self.layers - self.full_attention_layers
        attn = full * self.attention_params(True) + (linear * self.attention_params(False) if linear else 0)
        shared = 3 * self.hidden * self.shared_ffn + self.hidden if self.shared_ffn else 0
        return attn / self.layers + self.experts * self.hidden + shared + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def expert_params(self) -> int:
        return self.layers * self.expert_params_per_layer

    @property
    def dense_params(self) -> int:
        return round(self.layers * self.dense_params_per_layer_avg) + self.embedding_params

    @property
    def params(self) -> int:
        return self.expert_params + self.dense_params

    # ---------------------------------------------------------------------------------------- per token
    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every full-attention layer in a bf16 cache (vLLM / SGLang default kv_cache_dtype=auto)."""
        return 2 * self.full_attention_layers * self.kv_heads * self.head_dim * 2


def shape_from_dict(raw: dict, source: str) -> ModelShape:
    model_type = raw.get("model_type", "?")
    layers = int(raw["num_hidden_layers"])
    heads = int(raw["num_attention_heads"])
    interval = int(raw.get("full_attention_interval") or 1)
    linear = {}
    if model_type == "qwen3_next":
        linear = dict(num_k_heads=raw["linear_num_key_heads"], k_dim=raw["linear_key_head_dim"],
                      num_v_heads=raw["linear_num_value_heads"], v_dim=raw["linear_value_head_dim"],
                      conv_kernel=raw["linear_conv_kernel_dim"])
    experts = int(raw.get("num_experts") or raw.get("num_local_experts") or 0)
    return ModelShape(
        source=source, model_type=model_type, layers=layers, hidden=int(raw["hidden_size"]), heads=heads,
        kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads), vocab=int(raw["vocab_size"]),
        experts=experts, top_k=int(raw.get("num_experts_per_tok") or 0),
        moe_ffn=int(raw.get("moe_intermediate_size") or raw.get("intermediate_size")),
        shared_ffn=int(raw.get("shared_expert_intermediate_size") or 0),
        max_positions=int(raw["max_position_embeddings"]), tied=bool(raw.get("tie_word_embeddings", False)),
        full_attention_layers=layers // interval if interval > 1 else layers, linear_attention=linear,
    )


def config_file_for(path: str) -> Path | None:
    """The config.json a model path stands for: the shipped copy for a known hub id, else ``<path>/config.json``."""
    if path in HUB_MODELS:
        return MODELS_DIR / HUB_MODELS[path] / "config.json"
    candidate = Path(str(path)).expanduser()
    if candidate.is_dir() and (candidate / "config.json").is_file():
        return candidate / "config.json"
    return None


def model_shape(config: DictConfig) -> ModelShape:
    """The shape of the recipe's model; a clear error naming the key when it cannot be read here."""
    path = OmegaConf.select(config, MODEL_PATH_KEY, default=None, throw_on_missing=False)
    if path is None or OmegaConf.is_missing(config, MODEL_PATH_KEY):
        raise ValueError(f"{MODEL_PATH_KEY} is not set: give the model directory (or one of the hub ids with a "
                         f"shipped config: {', '.join(HUB_MODELS)})")
    file = config_file_for(str(path))
    if file is None:
        raise ValueError(f"{MODEL_PATH_KEY}={path}: no config.json to read the model's shape from (a local "
                         f"directory with config.json, or one of {', '.join(HUB_MODELS)} shipped in {MODELS_DIR})")
    shipped = file.is_relative_to(MODELS_DIR)  # named from the repository root, the same on every machine
    return shape_from_dict(json.loads(file.read_text()), str(file.relative_to(MODELS_DIR.parents[1]) if shipped else file))
