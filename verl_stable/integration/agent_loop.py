"""Routes stay compact on the wire: from the rollout server's output, through verl's agent loop, Ray,
TransferQueue (v1 trainer) or DataProto (legacy trainer), to the training engine.

A rollout server returns ``TokenOutput.routed_experts`` as ``[tokens, layers, top_k]`` ids; verl-stable's
``hf_cpu`` server returns them in the compact route dtype (:func:`~verl_stable.routing.routes.compact_dtype`:
uint8 up to 256 experts, uint16 above). verl 0.9.1 widens them to int16 in exactly two places, one per
trainer path, both in ``verl/experimental/agent_loop/agent_loop.py``:

* ``AgentLoopOutput.as_dict`` (``torch.tensor(routed_experts, dtype=torch.int16)``): the v1 trainer's path --
  ``AgentLoopWorkerTQ._agent_loop_postprocess`` puts ``as_dict()`` of every output into TransferQueue.
* ``AgentLoopWorker._agent_loop_postprocess`` (``experts_tensor.to(torch.int16)`` before padding into
  ``[1, total_length, layers, top_k]``): the legacy trainer's path (``AgentLoopWorker`` -> ``_postprocess``
  -> DataProto).

Everything after them keeps the dtype it receives: ``_postprocess``'s ``torch.cat``, TensorDict / DataProto
(concat, chunk, union, re-ordering), TransferQueue, ``trainer/ppo/padding_utils.build_padding_routed_experts``,
``workers/utils/padding.left_right_2_no_padding`` (``index_first_axis`` + nested tensor), the rollout MoE
load-balance metrics (which count on a ``long`` copy), and the engine (:func:`~verl_stable.routing.codecs.from_nested` takes
any integer dtype). So the fix is those two functions: :func:`install` wraps them (verl == 0.9.1 only,
version-gated) so that routes arriving in a compact dtype are padded exactly as verl pads them
(:func:`align_routes`) but in their own dtype. Routes of any other dtype (e.g. an engine's int32) take
verl's own int16 path unchanged.

Upstream change that removes this module: keep the received integer dtype in both places --
``torch.as_tensor(routed_experts)`` in ``AgentLoopOutput.as_dict`` and no ``.to(torch.int16)`` in
``AgentLoopWorker._agent_loop_postprocess`` (a server that wants int16 still sends int16).

Qwen3-30B-A3B: half of verl's int16 bytes per token on the wire (docs/method.md §6); measured by
``benchmarks/bench_routes.py --wire``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

__all__ = ["COMPACT_DTYPES", "align_routes", "install", "is_compact", "is_installed"]

COMPACT_DTYPES = (torch.uint8, torch.uint16)
_WRAPPED = "__verl_stable_compact_routes__"


def _as_tensor(routes: Any) -> torch.Tensor:
    if isinstance(routes, np.ndarray):
        if not routes.flags.writeable:  # an engine payload from np.frombuffer
            routes = routes.copy()
        return torch.from_numpy(np.ascontiguousarray(routes))
    if isinstance(routes, torch.Tensor):
        return routes
    return torch.as_tensor(np.asarray(routes))


def is_compact(routes: Any) -> bool:
    """Routes a server returned in a compact route dtype (uint8 / uint16, numpy or torch)."""
    if isinstance(routes, np.ndarray):
        return routes.dtype in (np.uint8, np.uint16)
    return isinstance(routes, torch.Tensor) and routes.dtype in COMPACT_DTYPES


def align_routes(routes: Any, total_length: int, start: int = 0) -> torch.Tensor:
    """``[total_length, layers, top_k]`` in the routes' own dtype: row ``start + i`` holds route row ``i``,
    every other row is zero (no route: the engine counts it in ``tokens_without_route``); rows past
    ``total_length`` are dropped. verl's rule for both trainer paths (``as_dict``: ``start=0``;
    ``_agent_loop_postprocess``: ``start`` = the prompt's left padding), without the int16 widening."""
    rows = _as_tensor(routes)
    if rows.dim() != 3:
        raise ValueError(
            f"routed_experts must be [tokens, layers, top_k], got shape {tuple(rows.shape)}"
        )
    if not 0 <= start <= total_length:
        raise ValueError(
            f"routes start at row {start}, outside a sequence of {total_length} tokens"
        )
    n = min(rows.shape[0], total_length - start)
    aligned = rows.new_zeros((total_length, *rows.shape[1:]))
    aligned[start : start + n] = rows[:n]
    return aligned


# ------------------------------------------------------------------------------------------ verl 0.9.1
def _wrap_as_dict(original):
    @functools.wraps(original)
    def as_dict(self) -> dict[str, Any]:
        routes = self.routed_experts
        if routes is None or not is_compact(routes):
            return original(self)
        output = original(self.model_copy(update={"routed_experts": None}))
        total_length = output["prompts"].size(0) + output["responses"].size(0)
        output["routed_experts"] = align_routes(routes, total_length)
        return output

    setattr(as_dict, _WRAPPED, original)
    return as_dict


def _wrap_postprocess(original):
    @functools.wraps(original)
    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        routes = output.routed_experts
        if routes is None or not is_compact(routes):
            return await original(self, output, validate, **kwargs)
        # verl's own postprocessing without the routes (it reads nothing else from them), then the routes
        # padded like verl pads them: the prompt is left-padded to the batch's prompt width.
        result = await original(
            self, output.model_copy(update={"routed_experts": None}), validate, **kwargs
        )
        start = result.prompt_ids.shape[1] - len(output.prompt_ids)
        result.routed_experts = align_routes(
            routes, result.input_ids.shape[1], start
        ).unsqueeze(0)
        return result

    setattr(_agent_loop_postprocess, _WRAPPED, original)
    return _agent_loop_postprocess


def install(module=None) -> bool:
    """Wrap verl 0.9.1's ``AgentLoopOutput.as_dict`` and ``AgentLoopWorker._agent_loop_postprocess`` (see the
    module docstring). Idempotent. On another verl version: a warning, nothing wrapped, False (routes then
    travel as whatever that verl does; row ``compact-routes-on-the-wire`` of
    :data:`verl_stable.integration.SHIMS`)."""
    from verl_stable.integration import version_gate

    if not version_gate("compact-routes-on-the-wire"):
        return False
    if module is None:  # (also while verl is still executing it: the after-import hook runs inside that import)
        import importlib

        module = importlib.import_module("verl.experimental.agent_loop.agent_loop")
    out_cls, worker_cls = module.AgentLoopOutput, module.AgentLoopWorker
    if not hasattr(out_cls.as_dict, _WRAPPED):
        out_cls.as_dict = _wrap_as_dict(out_cls.as_dict)
    if not hasattr(worker_cls._agent_loop_postprocess, _WRAPPED):
        worker_cls._agent_loop_postprocess = _wrap_postprocess(
            worker_cls._agent_loop_postprocess
        )
    return True


def is_installed() -> bool:
    """Whether both functions are wrapped in this process (False before verl imported its agent loop)."""
    import sys

    module = sys.modules.get("verl.experimental.agent_loop.agent_loop")
    return module is not None and all(
        hasattr(fn, _WRAPPED)
        for fn in (module.AgentLoopOutput.as_dict, module.AgentLoopWorker._agent_loop_postprocess)
    )
