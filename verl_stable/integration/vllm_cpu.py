"""vLLM's CPU fused-MoE fallback on machines without its grouped-GEMM kernels (a ``vllm.general_plugins`` entry
point; row ``vllm-cpu-moe-silu`` of :data:`verl_stable.integration.SHIMS`).

vLLM 0.24's CPU MoE uses a pure-torch path (``CPUFusedMOE.forward_torch``) where its build lacks
``prepack_moe_weight`` (the AVX2 wheels: no AVX-512 here). That path looks the activation up in
``cpu_fused_moe._CPU_MOE_ACT_FN``, whose SILU entry builds ``SiluAndMul(...)`` at forward time; a ``CustomOp``
built outside vLLM's config context raises "Current vLLM config is not set", so the engine dies in its first
profiling forward. The table's own comment says the entries should be static functions: SILU becomes
``SiluAndMul.forward_native`` (a static method, the same arithmetic: ``silu(x[..., :d]) * x[..., d:]``).
Upstream fix: that one entry in vLLM. Checked against vLLM 0.24.x; other versions are left alone with a log line.
"""

from __future__ import annotations

import sys

_MODULE = "vllm.model_executor.layers.fused_moe.cpu_fused_moe"


def register() -> None:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return
    if not current_platform.is_cpu():  # GPU builds use fused kernels; their kernels load in their own time
        return
    try:
        from vllm.model_executor.layers.activation import SiluAndMul
        from vllm.model_executor.layers.fused_moe import cpu_fused_moe
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    except ImportError:  # another vLLM layout: nothing of ours applies
        return
    from verl_stable.integration import version_gate

    if not version_gate("vllm-cpu-moe-silu"):
        return
    table = cpu_fused_moe._CPU_MOE_ACT_FN
    if table.get(MoEActivation.SILU) is SiluAndMul.forward_native:
        return
    if getattr(table.get(MoEActivation.SILU), "__name__", None) != "<lambda>":
        raise RuntimeError(f"vLLM's CPU MoE SILU entry changed ({table.get(MoEActivation.SILU)!r}); "
                           "verl-stable's fix for it needs updating")  # fmt: skip
    table[MoEActivation.SILU] = SiluAndMul.forward_native


def is_installed() -> bool:
    module = sys.modules.get(_MODULE)
    if module is None:
        return False
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    return module._CPU_MOE_ACT_FN.get(MoEActivation.SILU) is SiluAndMul.forward_native
