"""R3 with the real rollout engines: verl's vLLM / SGLang servers hand the agent loop routes it can use.

What verl 0.9.1 gets wrong, and what this package does about it (registration, no patch of verl's code):

* SGLang >= 0.5.11 (verl 0.9.1 pins 0.5.12) sends ``meta_info["routed_experts"]`` as a base64 string of
  int32 ``[seq_len - 1, num_hidden_layers, top_k]`` in both ``skip_tokenizer_init`` settings. verl's
  ``SGLangHttpServer.generate`` calls ``.numpy()`` on it (``skip_tokenizer_init=True``, verl's default:
  AttributeError) or imports ``sglang.srt.layers.moe.routed_experts_capturer`` (moved to
  ``sglang.srt.state_capturer.routed_experts`` in 0.5.12: ImportError). :mod:`.sglang_server` subclasses the
  server so that the payload reaches verl's code decoded (:func:`~verl_stable.routing.codecs.decode_sglang_routed_experts`).
* vLLM returns numpy int32 ``[n, num_hidden_layers, top_k]``; :mod:`.vllm_server` compacts it.

Both hand the agent loop numpy ``[n, num_hidden_layers, top_k]`` in ``compact_dtype(num_experts)`` (uint8 up to
256 experts, uint16 above): a quarter of the int32 bytes through Ray for a 128-expert model.

Registration (:func:`register_route_returning_replicas`): verl's ``RolloutReplicaRegistry`` maps a rollout name
to a *loader*; for ``sglang`` and ``vllm`` the loader is wrapped -- it runs verl's own loader first (its
environment setup and imports), then returns a replica subclass whose ``server_class`` is ``ray.remote(<server
subclass>)``. Nothing imports sglang or vllm until verl asks for the replica class, and a name is wrapped only where
the engine package is installed. Version gate: verl == 0.9.1, else nothing is registered (a warning; row
``rollout-route-decoding`` of :data:`verl_stable.integration.SHIMS`). Not covered: PD-disaggregated replicas
(``rollout.disaggregation.enabled``), which verl builds outside the registry. Upstream: the fix in verl's servers
(``patches/``: "SGLang fix") and this package disappears.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Optional

import numpy as np

__all__ = [
    "ENGINES",
    "RoutesDecodingTokenizerManager",
    "compact_token_output",
    "decode_sglang_output",
    "decoded_routes_config",
    "engines_installed",
    "register_route_returning_replicas",
    "route_returning_replicas_registered",
    "spec_for_server",
]

#: rollout name -> module with the replica subclass (``Replica``), imported only by the registry's loader.
ENGINES = {
    "sglang": "verl_stable.integration.rollout.sglang_server",
    "vllm": "verl_stable.integration.rollout.vllm_server",
}
#: the package each engine needs (registration is skipped where it is not installed)
_ENGINE_PACKAGES = {"sglang": "sglang", "vllm": "vllm"}


def spec_for_server(hf_config) -> Any:
    """The RouteSpec of the served model (verl's ``HFModelConfig.hf_config``)."""
    from verl_stable.routing.hf import spec_from_config

    return spec_from_config(hf_config)


# ------------------------------------------------------------------------------------------------ SGLang
def decode_sglang_output(output: dict, spec) -> dict:
    """One SGLang ``generate_request`` output with ``meta_info["routed_experts"]`` (base64 int32) replaced by
    the decoded routes as a torch tensor in the compact dtype, ``[n, num_hidden_layers, top_k]`` -- what
    verl's ``skip_tokenizer_init`` branch turns into numpy with ``.numpy()``. Outputs without routes are
    returned as they are. A new dict; the engine's output is not modified."""
    import torch

    from verl_stable.routing.codecs import decode_sglang_routed_experts

    meta = output.get("meta_info") or {}
    payload = meta.get("routed_experts")
    if payload is None or isinstance(payload, torch.Tensor) and payload.dtype in (torch.uint8, torch.uint16):
        return output
    routes = decode_sglang_routed_experts(payload, spec)
    return {**output, "meta_info": {**meta, "routed_experts": torch.from_numpy(np.ascontiguousarray(routes))}}


def decoded_routes_config(config):
    """verl's ``RolloutConfig`` as the SGLang server's ``generate`` should read it once routes arrive decoded:
    ``skip_tokenizer_init=True`` (its ``captured.numpy()`` branch; the other branch imports a module SGLang
    0.5.12 no longer has). Used after launch only: SGLang itself was launched with the user's setting."""
    import dataclasses

    return config if config.skip_tokenizer_init else dataclasses.replace(config, skip_tokenizer_init=True)


class RoutesDecodingTokenizerManager:
    """Wraps SGLang's ``TokenizerManager`` as seen by ONE verl server: ``generate_request`` streams outputs with
    the routes decoded (:func:`decode_sglang_output`); everything else (attributes, other methods, attribute
    writes) goes to the wrapped manager. SGLang's HTTP app keeps the unwrapped manager."""

    def __init__(self, manager: Any, spec):
        object.__setattr__(self, "_manager", manager)
        object.__setattr__(self, "_spec", spec)

    def generate_request(self, obj, request=None):
        return self._decoded(self._manager.generate_request(obj, request))

    async def _decoded(self, stream):
        async for output in stream:
            yield decode_sglang_output(output, self._spec)

    def __getattr__(self, name):
        return getattr(self._manager, name)

    def __setattr__(self, name, value):
        setattr(self._manager, name, value)


# ------------------------------------------------------------------------------------------------ registration
def _engine_installed(name: str) -> bool:
    return importlib.util.find_spec(_ENGINE_PACKAGES[name]) is not None


def _wrapped_loader(name: str, base_loader: Callable[[], type]) -> Callable[[], type]:
    def load() -> type:
        import importlib

        base_loader()  # verl's own loader: its environment setup and engine imports, in verl's order
        return importlib.import_module(ENGINES[name]).Replica

    load.verl_stable_engine = name  # marks our loader: registering twice never wraps twice
    load.wrapped_loader = base_loader
    return load


def register_route_returning_replicas(installed: Optional[Callable[[str], bool]] = None) -> dict[str, bool]:
    """Wrap verl's ``sglang`` / ``vllm`` replica loaders (see the module docstring); return ``{name: wrapped}``.

    ``installed(name)`` says whether an engine package is installed (default: ``importlib.util.find_spec``).
    Idempotent. On a verl other than the pinned release: a warning, nothing registered."""
    from verl_stable.integration import version_gate

    if not version_gate("rollout-route-decoding"):
        return {}
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    installed = installed or _engine_installed
    out = {}
    for name in ENGINES:
        loader = RolloutReplicaRegistry._registry.get(name)  # verl 0.9.1 has no public getter for the loader
        if loader is None or not installed(name):
            out[name] = False
            continue
        if getattr(loader, "verl_stable_engine", None) != name:
            RolloutReplicaRegistry.register(name, _wrapped_loader(name, loader))
        out[name] = True
    return out


def engines_installed() -> tuple[str, ...]:
    """The engines of :data:`ENGINES` whose package is installed here."""
    return tuple(name for name in ENGINES if _engine_installed(name))


def route_returning_replicas_registered() -> bool:
    """Whether verl's loader of every installed engine is wrapped in this process."""
    import sys

    if "verl.workers.rollout.replica" not in sys.modules:
        return False
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    names = engines_installed()
    return bool(names) and all(
        getattr(RolloutReplicaRegistry._registry.get(name), "verl_stable_engine", None) == name for name in names
    )


def compact_token_output(token_output, spec):
    """verl's ``TokenOutput`` with its ``routed_experts`` (numpy int32 from vLLM) in the compact dtype."""
    from verl_stable.routing.codecs import compact_engine_routes

    if token_output.routed_experts is not None:
        token_output.routed_experts = compact_engine_routes(token_output.routed_experts, spec, "vLLM routed_experts")
    return token_output
