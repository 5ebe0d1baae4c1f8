"""vLLM 0.24 on CPU inside verl's trainer (a ``vllm.general_plugins`` entry point): two fixes, each a row of
:data:`verl_stable.integration.SHIMS`.

**vllm-cpu-moe-silu** -- vLLM's CPU fused-MoE fallback on machines without its grouped-GEMM kernels.

vLLM 0.24's CPU MoE uses a pure-torch path (``CPUFusedMOE.forward_torch``) where its build lacks
``prepack_moe_weight`` (the AVX2 wheels: no AVX-512 here). That path looks the activation up in
``cpu_fused_moe._CPU_MOE_ACT_FN``, whose SILU entry builds ``SiluAndMul(...)`` at forward time; a ``CustomOp``
built outside vLLM's config context raises "Current vLLM config is not set", so the engine dies in its first
profiling forward. The table's own comment says the entries should be static functions: SILU becomes
``SiluAndMul.forward_native`` (a static method, the same arithmetic: ``silu(x[..., :d]) * x[..., d:]``).
Upstream fix: that one entry in vLLM. Checked against vLLM 0.24.x; other versions are left alone with a log line.

**vllm-cpu-reloadable-weights** -- weights that verl's checkpoint engine can update after start-up. After
loading, vLLM's CPU linear layers hand their weight to a prepacked oneDNN (or sgl-kernel) matmul and replace the
parameter with an empty tensor (``dispatch_cpu_unquantized_gemm(remove_weight=True)``); the embedding / LM head
keeps the parameter but computes from the prepacked copy; the fused MoE prepacks expert weights on AVX-512 builds
(``CPUFusedMOE.init_moe_grouped_gemm``). verl then syncs the trainer's weights with ``model.load_weights``: into
an empty parameter it fails ("Attempted to load weight (torch.Size([256, 256])) into parameter
(torch.Size([0]))", and verl's trainer waits forever on the failed sync), and where a prepacked copy is kept the
rollout silently samples from the start-up weights. Seen with vllm-cpu 0.24.0 at fp32 here, where oneDNN packs
fp32 (bf16 falls back to ``torch.nn.functional.linear`` on this AVX2 machine, so bf16 ran). The fix, only under
verl-stable's CPU platform (``VERL_PLATFORM=cpu``, which the CPU backend exports to every Ray worker, so plain vLLM
use is untouched): linear layers keep their parameter and compute with ``torch.nn.functional.linear`` on it, and
the fused MoE takes its pure-torch path (``F.linear`` on views of the expert parameters); ``load_weights`` then
writes into the tensors the forward reads. Not covered: the Arm (ACL) oneDNN MoE path. Cost: vLLM's CPU GEMM
kernels are not used for the rollout (not measured on an AVX-512 machine). Upstream fix: vLLM re-running
``process_weights_after_loading`` after ``load_weights`` on CPU (or keeping the unpacked weight), or verl's
vLLM weight update doing so.
"""

from __future__ import annotations

import sys

_MODULE = "vllm.model_executor.layers.fused_moe.cpu_fused_moe"


def register() -> None:
    """The ``vllm.general_plugins`` hook: both rows, on CPU only."""
    fix_moe_silu()
    keep_weights_reloadable()


def fix_moe_silu() -> None:
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


_RELOADABLE = "_verl_stable_keeps_weights_reloadable"


def keep_weights_reloadable() -> None:
    """Row ``vllm-cpu-reloadable-weights``: under verl-stable's CPU platform, vLLM's CPU linear and MoE layers
    compute from their parameters, so that verl's weight sync reaches the forward."""
    from verl_stable.cpu import requested

    if not requested():
        return
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return
    if not current_platform.is_cpu():
        return
    try:
        import torch
        from vllm.model_executor.layers import utils as layer_utils
        from vllm.model_executor.layers.fused_moe import cpu_fused_moe
    except ImportError:
        return
    from verl_stable.integration import version_gate

    if not version_gate("vllm-cpu-reloadable-weights"):
        return
    if getattr(layer_utils.dispatch_cpu_unquantized_gemm, _RELOADABLE, False):
        return
    original = layer_utils.dispatch_cpu_unquantized_gemm

    def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool) -> None:
        if getattr(layer, "weight", None) is None or layer.weight.is_meta or layer.weight.ndim != 2:
            return original(layer, remove_weight)  # not a loaded linear layer: vLLM's own handling
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    setattr(dispatch_cpu_unquantized_gemm, _RELOADABLE, True)
    # linear.py and vocab_parallel_embedding.py import it from the module at call time
    layer_utils.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
    cpu_fused_moe.CPUFusedMOE.check_grouped_gemm = lambda self, layer: (False, "none")


def weights_reloadable() -> bool:
    module = sys.modules.get("vllm.model_executor.layers.utils")
    return module is not None and bool(getattr(module.dispatch_cpu_unquantized_gemm, _RELOADABLE, False))
