"""Router adapters for transformers (5.x) MoE families: where the experts are chosen, and how each family
turns router logits into gate weights for a given set of experts.

Replay fixes only the expert INDICES; the gate weights are recomputed from the current router logits with the
family's own rule, so the router keeps its gradient:

==========================  =========================================================================
family (module hooked)      gate weights for replayed indices ``idx``
==========================  =========================================================================
Qwen3-MoE, Qwen2-MoE,       ``softmax(logits, fp32)[idx]``, ``/ sum`` if ``norm_topk_prob``, cast to the
OLMoE, Qwen3-Next, ...      logits dtype (``*TopKRouter.forward``)
Qwen3.5-MoE, Qwen3-VL-MoE   the same, always renormalised
Mixtral, MiniMax            ``softmax(logits.float())[idx] / sum`` (always renormalised, stays fp32)
gpt-oss (TopKRouter)        ``softmax(logits[idx])`` over the chosen experts only
DeepSeek-V3, GLM-4-MoE,     ``sigmoid(logits)[idx]`` WITHOUT ``e_score_correction_bias`` (the bias and the
Dots1, ... (MoE.route_      group limit ``n_group``/``topk_group`` only steer the choice), ``/ (sum + 1e-20)``
tokens_to_experts)          if ``norm_topk_prob``, ``* routed_scaling_factor``
==========================  =========================================================================

Each formula is the stock code's own arithmetic on the same values in the same order, so replaying the
routes a model picked itself is bit-identical to not replaying. Families beyond the six built and run in
the tests are listed only where their stock source is token-for-token the reference family's
(tests/utils/routing_replay/test_hf_adapters_on_cpu.py::test_adapter_classes_share_the_reference_arithmetic).

An adapter's ``install(module, choose)`` wraps one router so that every call asks
``choose(native_indices) -> indices or None`` (None keeps the stock output untouched) and returns a
function that removes the wrapper. Matching is by class name along the MRO, so FSDP2's dynamic
``FSDP<Name>`` subclasses match and no modeling module has to be imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from verl_stable.routing.routes import RouteSpec

__all__ = ["RouterAdapter", "RouterSite", "ADAPTERS", "find_routers", "route_spec", "moe_layers_from_config",
           "num_routed_experts"]

Choose = Callable[[torch.Tensor], Optional[torch.Tensor]]


# ------------------------------------------------------------------ family scoring rules (pure)
def softmax_topk_weights(logits: torch.Tensor, idx: torch.Tensor, norm_topk_prob: bool) -> torch.Tensor:
    """Qwen2/3-MoE, OLMoE, Qwen3-Next/3.5 ``TopKRouter``: softmax over all experts, gather, optional renorm."""
    top = torch.nn.functional.softmax(logits, dtype=torch.float, dim=-1).gather(1, idx)
    if norm_topk_prob:
        top /= top.sum(dim=-1, keepdim=True)
    return top.to(logits.dtype)


def mixtral_weights(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mixtral ``TopKRouter``: softmax in fp32, gather, always renormalised, result left in fp32."""
    top = torch.nn.functional.softmax(logits.float(), dim=-1).gather(1, idx)
    top /= top.sum(dim=-1, keepdim=True)
    return top


def gpt_oss_weights(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """gpt-oss ``TopKRouter``: softmax over the chosen experts' logits only."""
    top = logits.gather(1, idx)
    return torch.nn.functional.softmax(top, dim=1, dtype=top.dtype)


def deepseek_v3_weights(
    logits: torch.Tensor, idx: torch.Tensor, norm_topk_prob: bool, routed_scaling_factor: float
) -> torch.Tensor:
    """DeepSeek-V3 / GLM-4-MoE: sigmoid scores without the correction bias, renorm, scale."""
    top = logits.sigmoid().gather(1, idx)
    if norm_topk_prob:
        top /= top.sum(dim=-1, keepdim=True) + 1e-20
    return top * routed_scaling_factor


# ------------------------------------------------------------------ adapters
def _class_matches(module: nn.Module, names: tuple[str, ...]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


@dataclass(frozen=True)
class RouterAdapter:
    """How to hook one router type. ``kind`` is ``"topk_router"`` (a module returning
    ``(logits, weights, indices)``: hooked with a forward hook) or ``"route_method"`` (an MoE block whose
    ``route_tokens_to_experts(logits) -> (indices, weights)`` is wrapped on the instance)."""

    family: str
    class_names: tuple[str, ...]
    kind: str
    weights: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    num_experts: Callable[[nn.Module], int]
    top_k: Callable[[nn.Module], int]

    def matches(self, module: nn.Module) -> bool:
        return _class_matches(module, self.class_names)

    def install(self, module: nn.Module, choose: Choose) -> Callable[[], None]:
        if self.kind == "topk_router":
            return self._install_forward_hook(module, choose)
        return self._install_route_method(module, choose)

    def _install_forward_hook(self, module: nn.Module, choose: Choose) -> Callable[[], None]:
        weights = self.weights

        def hook(mod, args, output):
            logits, _, native = output
            chosen = choose(native)
            if chosen is None:
                return None
            return logits, weights(mod, logits, chosen), chosen

        return module.register_forward_hook(hook).remove

    def _install_route_method(self, module: nn.Module, choose: Choose) -> Callable[[], None]:
        if "route_tokens_to_experts" in vars(module):
            raise RuntimeError(
                f"{type(module).__name__}.route_tokens_to_experts is already wrapped on this instance: two routing "
                "replay contexts on one model at once"
            )
        stock = type(module).route_tokens_to_experts
        weights = self.weights

        def route_tokens_to_experts(router_logits):
            native, native_weights = stock(module, router_logits)
            chosen = choose(native)
            if chosen is None:
                return native, native_weights
            return chosen, weights(module, router_logits, chosen)

        module.route_tokens_to_experts = route_tokens_to_experts

        def remove():
            vars(module).pop("route_tokens_to_experts", None)

        return remove


ADAPTERS: tuple[RouterAdapter, ...] = (
    RouterAdapter(
        family="qwen-softmax-topk",
        class_names=(
            "Qwen3MoeTopKRouter",
            "Qwen2MoeTopKRouter",
            "OlmoeTopKRouter",
            "Qwen3NextTopKRouter",
            "Qwen3OmniMoeThinkerTextTopKRouter",
            "Qwen3OmniMoeTalkerTextTopKRouter",
            "FlexOlmoTopKRouter",
            "MellumTopKRouter",
        ),
        kind="topk_router",
        weights=lambda m, logits, idx: softmax_topk_weights(logits, idx, m.norm_topk_prob),
        num_experts=lambda m: m.num_experts,
        top_k=lambda m: m.top_k,
    ),
    RouterAdapter(
        # same arithmetic with the renormalisation hard-wired (no norm_topk_prob attribute)
        family="qwen-softmax-topk-renorm",
        class_names=("Qwen3_5MoeTopKRouter", "Qwen3VLMoeTextTopKRouter", "Qwen3OmniMoeTextTopKRouter"),
        kind="topk_router",
        weights=lambda m, logits, idx: softmax_topk_weights(logits, idx, True),
        num_experts=lambda m: m.num_experts,
        top_k=lambda m: m.top_k,
    ),
    RouterAdapter(
        family="mixtral",
        class_names=("MixtralTopKRouter", "MiniMaxTopKRouter"),
        kind="topk_router",
        weights=lambda m, logits, idx: mixtral_weights(logits, idx),
        num_experts=lambda m: m.num_experts,
        top_k=lambda m: m.top_k,
    ),
    RouterAdapter(
        family="gpt-oss",
        class_names=("GptOssTopKRouter",),
        kind="topk_router",
        weights=lambda m, logits, idx: gpt_oss_weights(logits, idx),
        num_experts=lambda m: m.num_experts,
        top_k=lambda m: m.top_k,
    ),
    RouterAdapter(
        family="deepseek-v3",
        class_names=(
            "DeepseekV3MoE",
            "Glm4MoeMoE",
            "Glm4MoeLiteMoE",
            "Glm4vMoeTextMoE",
            "GlmMoeDsaMoE",
            "Dots1MoE",
            "ExaoneMoeSparseMoEBlock",
            "NemotronHMoE",
            "SolarOpenMoE",
        ),
        kind="route_method",
        weights=lambda m, logits, idx: deepseek_v3_weights(logits, idx, m.norm_topk_prob, m.routed_scaling_factor),
        num_experts=lambda m: m.n_routed_experts,
        top_k=lambda m: m.top_k,
    ),
)

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class RouterSite:
    """One MoE router of a model: the module hooked, its adapter, its decoder-layer index, its qualified name."""

    module: nn.Module
    adapter: RouterAdapter
    decoder_layer: int
    name: str


def _decoder_layer(name: str) -> Optional[int]:
    found = _LAYER_RE.findall(name)
    return int(found[-1]) if found else None


def find_routers(model: nn.Module) -> list[RouterSite]:
    """Every supported router in ``model``, in decoder-layer order (the Routes layer axis).

    Raises ValueError when none is found, or when routers disagree on experts / top-k.
    """
    sites = []
    for name, module in model.named_modules():
        for adapter in ADAPTERS:
            if adapter.matches(module):
                sites.append((name, module, adapter))
                break
    if not sites:
        families = ", ".join(a.family for a in ADAPTERS)
        raise ValueError(f"no MoE router of a supported family in {type(model).__name__} (supported: {families})")
    located = []
    for order, (name, module, adapter) in enumerate(sites):
        layer = _decoder_layer(name)
        located.append(RouterSite(module, adapter, order if layer is None else layer, name))
    layers = [s.decoder_layer for s in located]
    if len(set(layers)) != len(layers):
        raise ValueError(f"several routers claim the same decoder layer: {[s.name for s in located]}")
    located.sort(key=lambda s: s.decoder_layer)
    experts = {s.adapter.num_experts(s.module) for s in located}
    top_ks = {s.adapter.top_k(s.module) for s in located}
    if len(experts) != 1 or len(top_ks) != 1:
        raise ValueError(f"MoE layers disagree on num_experts {experts} / top_k {top_ks}; not supported")
    return located


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def route_spec(model: nn.Module, sites: Optional[list[RouterSite]] = None) -> RouteSpec:
    """The RouteSpec of a model's routers (MoE layers found in the module tree)."""
    sites = find_routers(model) if sites is None else sites
    config = getattr(model, "config", None)
    num_hidden = getattr(_text_config(config), "num_hidden_layers", None) if config is not None else None
    moe_layers = tuple(s.decoder_layer for s in sites)
    return RouteSpec(
        num_experts=sites[0].adapter.num_experts(sites[0].module),
        top_k=sites[0].adapter.top_k(sites[0].module),
        moe_layers=moe_layers,
        num_hidden_layers=num_hidden if num_hidden is not None else moe_layers[-1] + 1,
    )


def moe_layers_from_config(config) -> tuple[int, ...]:
    """Decoder layers that carry routed experts, from a HF config alone (no model needed: the trainer's
    driver converts engine routes with it). Mirrors the decoder-layer constructors of transformers 5."""
    config = _text_config(config)
    n = config.num_hidden_layers
    if hasattr(config, "first_k_dense_replace"):  # DeepSeek-V3, GLM-4-MoE
        return tuple(range(config.first_k_dense_replace or 0, n))
    if hasattr(config, "decoder_sparse_step"):  # Qwen2/3-MoE
        only = set(getattr(config, "mlp_only_layers", None) or [])
        step = config.decoder_sparse_step
        return tuple(i for i in range(n) if i not in only and config.num_experts > 0 and (i + 1) % step == 0)
    return tuple(range(n))  # Mixtral, OLMoE, gpt-oss: every layer is MoE


def num_routed_experts(config) -> int:
    """Routed experts per MoE layer from a HF config; 0 for a dense model (no routers to replay)."""
    text = _text_config(config)
    if not getattr(text, "num_experts_per_tok", None):
        return 0
    return next(
        (getattr(text, key) for key in ("n_routed_experts", "num_experts", "num_local_experts") if getattr(text, key, None)),
        0,
    )


def spec_from_config(config) -> RouteSpec:
    """RouteSpec from a HF config (for converting engine routes where no model is instantiated)."""
    text = _text_config(config)
    num_experts = num_routed_experts(text)
    if not num_experts:
        raise ValueError(f"model_type {getattr(config, 'model_type', '?')} is dense: it has no routed experts")
    return RouteSpec(
        num_experts=num_experts,
        top_k=text.num_experts_per_tok,
        moe_layers=moe_layers_from_config(text),
        num_hidden_layers=text.num_hidden_layers,
    )
