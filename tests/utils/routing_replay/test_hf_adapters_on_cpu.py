"""Each router family against the stock transformers model: untouched without a context, bit-identical when
replaying its own routes, and when replaying other routes the experts receive exactly those ids with the
family's own gate weights recomputed from the live logits (independent closed forms below)."""

from __future__ import annotations

import pytest
import torch
from verl_stable.routing import Routes, RoutingReplay, spec_from_config
from verl_stable.routing.hf import ADAPTERS, moe_layers_from_config

from tests.utils.routing_replay.helpers import (
    FAMILIES,
    random_routes_idx,
    tiny_batch,
    tiny_config,
    tiny_model,
    token_logprobs,
)


@pytest.fixture
def batch():
    return tiny_batch()


def _moe_blocks(model, rr):
    """(router module whose input is the hidden state, experts module) per MoE layer, in Routes order."""
    out = []
    for site in rr.sites:
        block = site.module if site.adapter.kind == "route_method" else model.get_submodule(site.name.rsplit(".", 1)[0])
        router = block.gate if hasattr(block, "gate") else block.router
        out.append((router, block.experts))
    return out


def _expected_weights(family, router, hidden, idx):
    """Closed forms of each family's gate weights for chosen ids ``idx``, written from the papers/configs."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if family == "deepseek_v3":
        s = torch.sigmoid(h.float() @ router.weight.float().T).gather(1, idx)  # no e_score_correction_bias
        return 2.5 * s / (s.sum(-1, keepdim=True) + 1e-20)
    logits = torch.nn.functional.linear(h, router.weight, getattr(router, "bias", None))
    if family == "gpt_oss":
        return torch.softmax(logits.gather(1, idx), dim=-1)
    p = torch.softmax(logits.float(), -1).gather(1, idx)
    renorm = family in ("mixtral", "qwen3_moe") or (family == "olmoe" and router.norm_topk_prob)
    return p / p.sum(-1, keepdim=True) if renorm else p


def _capture(blocks):
    """Hooks recording each layer's router input and the (ids, weights) the experts actually received."""
    seen = {"hidden": {}, "ids": {}, "weights": {}}
    handles = []

    def on_router(i):
        def hook(module, args):
            seen["hidden"][i] = args[0].detach()

        return hook

    def on_experts(i):
        def hook(module, args):
            seen["ids"][i], seen["weights"][i] = args[1], args[2].detach()

        return hook

    for i, (router, experts) in enumerate(blocks):
        handles.append(router.register_forward_pre_hook(on_router(i)))
        handles.append(experts.register_forward_pre_hook(on_experts(i)))
    return seen, handles


@pytest.mark.parametrize("family", FAMILIES)
def test_no_context_is_stock_model(family, batch):
    stock = tiny_model(family)
    wrapped = tiny_model(family)
    rr = RoutingReplay(wrapped)
    with rr.record():
        token_logprobs(wrapped, batch)
    assert not rr.active
    # after a context closed, no hook is left and the output equals a never-wrapped model bit for bit
    assert all(not s.module._forward_hooks for s in rr.sites)
    assert all("route_tokens_to_experts" not in vars(s.module) for s in rr.sites)
    assert torch.equal(token_logprobs(stock, batch), token_logprobs(wrapped, batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_own_routes_bit_identical(family, batch):
    model = tiny_model(family)
    rr = RoutingReplay(model)
    ref = token_logprobs(model, batch)
    with rr.record() as rec:
        recorded = token_logprobs(model, batch)
    (routes,) = rec.routes
    assert routes.num_tokens == batch.numel() and routes.num_layers == len(rr.moe_layers)
    with rr.replay(routes):
        replayed = token_logprobs(model, batch)
    assert torch.equal(ref, recorded)
    assert torch.equal(ref, replayed)


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_other_routes_uses_them_with_family_weights(family, batch):
    model = tiny_model(family)
    rr = RoutingReplay(model)
    spec = rr.spec
    g = torch.Generator().manual_seed(3)
    idx = random_routes_idx(batch.numel(), spec.num_layers, spec.num_experts, spec.top_k, g)
    routes = Routes.from_indices(idx, spec.num_experts)
    seen, handles = _capture(_moe_blocks(model, rr))
    try:
        with rr.replay(routes, track_agreement=True) as state:
            logp = token_logprobs(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert torch.isfinite(logp).all()
    for layer in range(spec.num_layers):
        assert torch.equal(seen["ids"][layer], idx[:, layer])
        router = _moe_blocks(model, rr)[layer][0]
        expected = _expected_weights(family, router, seen["hidden"][layer], idx[:, layer])
        torch.testing.assert_close(seen["weights"][layer].float(), expected.float(), rtol=1e-5, atol=1e-6)
    # random routes mostly disagree with what the model would pick; the helper must see that
    agreement = state.agreement()
    assert agreement.tokens.tolist() == [float(batch.numel())] * spec.num_layers
    assert (agreement.agreement < 0.9).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_router_gets_gradient_under_replay(family, batch):
    model = tiny_model(family).train()
    rr = RoutingReplay(model)
    spec = rr.spec
    idx = random_routes_idx(batch.numel(), spec.num_layers, spec.num_experts, spec.top_k)
    with rr.replay(Routes.from_indices(idx, spec.num_experts)):
        token_logprobs(model, batch).sum().backward()
    for router, _ in _moe_blocks(model, rr):
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_config_mapping_matches_model(family):
    config = tiny_config(family)
    model = tiny_model(family)
    rr = RoutingReplay(model)
    assert moe_layers_from_config(config) == rr.moe_layers
    assert spec_from_config(config) == rr.spec


def test_dense_layers_do_not_shift_mapping():
    # qwen3 (mlp_only_layers=[1]) -> MoE at 0,2,3; qwen2 (decoder_sparse_step=2) -> 1,3; dsv3 (first_k_dense=1) -> 1,2
    assert RoutingReplay(tiny_model("qwen3_moe")).moe_layers == (0, 2, 3)
    assert RoutingReplay(tiny_model("qwen2_moe")).moe_layers == (1, 3)
    assert RoutingReplay(tiny_model("deepseek_v3")).moe_layers == (1, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_replay_own_routes_bit_identical(family, batch):
    model = tiny_model(family, dtype=torch.bfloat16)
    rr = RoutingReplay(model)
    ref = token_logprobs(model, batch)
    with rr.record() as rec:
        token_logprobs(model, batch)
    with rr.replay(rec.routes[0]):
        assert torch.equal(token_logprobs(model, batch), ref)


def test_dense_model_is_rejected():
    from transformers import AutoModelForCausalLM, Qwen2Config

    dense = AutoModelForCausalLM.from_config(
        Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="no MoE router"):
        RoutingReplay(dense)


# The family each adapter was written and run against; every other listed class must be the same code.
_REFERENCE = {
    "qwen-softmax-topk": ("qwen3_moe", "Qwen3MoeTopKRouter", "forward"),
    "qwen-softmax-topk-renorm": ("qwen3_5_moe", "Qwen3_5MoeTopKRouter", "forward"),
    "mixtral": ("mixtral", "MixtralTopKRouter", "forward"),
    "gpt-oss": ("gpt_oss", "GptOssTopKRouter", "forward"),
    "deepseek-v3": ("deepseek_v3", "DeepseekV3MoE", "route_tokens_to_experts"),
}


def _normalised_source(module_name, class_name, method):
    import importlib
    import inspect
    import re

    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    src = inspect.getsource(getattr(module, class_name).__dict__[method]).replace(class_name, "CLS")
    return re.sub(r"#[^\n]*|\s+", "", src)


# transformers module of each adapted class (explicit: scanning every model package is slow; not measured here)
_MODULE = {
    "Qwen3MoeTopKRouter": "qwen3_moe", "Qwen2MoeTopKRouter": "qwen2_moe", "OlmoeTopKRouter": "olmoe",
    "Qwen3NextTopKRouter": "qwen3_next", "Qwen3OmniMoeThinkerTextTopKRouter": "qwen3_omni_moe",
    "Qwen3OmniMoeTalkerTextTopKRouter": "qwen3_omni_moe", "FlexOlmoTopKRouter": "flex_olmo",
    "MellumTopKRouter": "mellum", "Qwen3_5MoeTopKRouter": "qwen3_5_moe", "Qwen3VLMoeTextTopKRouter": "qwen3_vl_moe",
    "Qwen3OmniMoeTextTopKRouter": "qwen3_omni_moe", "MixtralTopKRouter": "mixtral", "MiniMaxTopKRouter": "minimax",
    "GptOssTopKRouter": "gpt_oss", "DeepseekV3MoE": "deepseek_v3", "Glm4MoeMoE": "glm4_moe",
    "Glm4MoeLiteMoE": "glm4_moe_lite", "Glm4vMoeTextMoE": "glm4v_moe", "GlmMoeDsaMoE": "glm_moe_dsa",
    "Dots1MoE": "dots1", "ExaoneMoeSparseMoEBlock": "exaone_moe", "NemotronHMoE": "nemotron_h",
    "SolarOpenMoE": "solar_open",
}


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.family)
def test_adapter_classes_share_the_reference_arithmetic(adapter):
    """The adapter's weight formula is only valid where the stock code is the reference family's, token for
    token; a transformers upgrade that changes a router makes this fail instead of silently mis-weighting."""
    import importlib.util

    ref_module, ref_class, method = _REFERENCE[adapter.family]
    reference = _normalised_source(ref_module, ref_class, method)
    for class_name in adapter.class_names:
        if importlib.util.find_spec(f"transformers.models.{_MODULE[class_name]}") is None:
            continue  # a model this transformers release does not have (e.g. mellum before 5.10): nothing to weight
        assert _normalised_source(_MODULE[class_name], class_name, method) == reference, class_name


def test_aux_loss_and_router_logits_still_work_under_replay(batch):
    """transformers' load-balancing loss reads router logits through its own output hooks: replay keeps them."""
    model = tiny_model("qwen3_moe")
    model.config.output_router_logits = True
    rr = RoutingReplay(model)
    stock = model(input_ids=batch, labels=batch)
    with rr.record() as rec:
        model(input_ids=batch, labels=batch)
    with rr.replay(rec.routes[0]):
        replayed = model(input_ids=batch, labels=batch)
    assert len(replayed.router_logits) == len(rr.moe_layers)
    assert torch.equal(replayed.aux_loss, stock.aux_loss) and torch.equal(replayed.loss, stock.loss)
