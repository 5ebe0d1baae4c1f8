"""Multi-turn R3 in verl 0.9.1's tool agent loop: every turn's routes are kept, none replaced by a later turn.

What verl does. ``ToolAgentLoop._handle_generating_state`` (``verl/experimental/agent_loop/tool_agent_loop.py``)
sends the engine the whole accumulated sequence each turn and then sets ``agent_data.routed_experts =
output.routed_experts``. An engine returns one route per token it ran: the prompt it was sent (prefill) and every
sampled token but the last (decode; the last is never fed back) -- vLLM, SGLang and ``hf_cpu`` alike. So the last
turn's array holds that turn's *prefill* routes of every earlier token, and replaces the routes with which the
earlier turns sampled their tokens (what R3 must replay) whenever the later turn routes those tokens differently:
weights updated between turns (partial / fully async rollout), a prefix cache returning whatever it keeps for a
cached prefix, prefill and decode disagreeing in low precision. Reported upstream as verl-project/verl#6054
(open); verl's main branch still assigns the last turn's array.

The rule (:func:`merge_turn_routes`, arrays in, arrays out, no verl): the rows already held stay for the tokens
they were computed for, and the new output contributes only the rows past them -- the previous turn's last
sampled token (its first route is this turn's prefill), the tool / user tokens appended since, and this turn's
own tokens. Held rows are kept only while the held tokens are the sequence's tokens (a Continuous Token merge
that drops or rewrites routed tokens takes this turn's rows from there on), and an output whose row count does
not fit the sequence it was sent is an error (:class:`TurnRoutesError`), never a shifted array. The compact
dtype (uint8 / uint16) is kept.

How it gets into verl (registry, no patch of verl's code): :class:`TurnRoutesMixin` runs verl's own
``_handle_generating_state`` and then replaces its assignment by the rule. ``TurnRoutesToolAgentLoop`` (verl's
``ToolAgentLoop`` with the mixin in front) is registered under verl's own agent name ``tool_agent`` through
verl's ``register`` -- the agent-loop registry ``AgentLoopWorker`` instantiates from -- right after verl
registered its class there (row ``multi-turn-routes`` of :data:`verl_stable.integration.SHIMS`, lazy on
``verl.experimental.agent_loop.tool_agent_loop``). A ``tool_agent`` entry somebody else registered (another
plugin) is left alone, with a warning; a user's ``agent_loop_config_path`` entry, which verl reads later, wins.
Version gate: verl == 0.9.1 (the mixin relies on what that method does to ``agent_data``), else a warning and
nothing registered.

Not covered: other subclasses of verl's ``ToolAgentLoop`` registered under their own names keep verl's rule;
they can put :class:`TurnRoutesMixin` first in their bases.

Upstream change that removes this module: ``_handle_generating_state`` keeps the rows of tokens earlier turns
routed and appends only the new output's rows past them (:func:`merge_turn_routes`).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    "AGENT_NAME",
    "TurnRoutesError",
    "TurnRoutesMixin",
    "install",
    "is_installed",
    "merge_turn_routes",
    "ran_tokens",
    "turn_routes_tool_agent_loop",
]

# ------------------------------------------------------------------------------ the rule (no verl)


class TurnRoutesError(ValueError):
    """A turn's routes cannot be aligned with the trajectory's tokens."""


def _as_array(routes: Any, what: str) -> np.ndarray:
    if hasattr(routes, "detach"):  # a torch tensor
        routes = routes.detach().cpu().numpy()
    rows = np.asarray(routes)
    if rows.ndim != 3:
        raise TurnRoutesError(f"{what} must be [tokens, layers, top_k], got shape {tuple(rows.shape)}")
    if not np.issubdtype(rows.dtype, np.integer):
        raise TurnRoutesError(f"{what} must hold integer expert ids, got dtype {rows.dtype}")
    return rows


def ran_tokens(prompt_ids: Sequence[int], token_ids: Sequence[int]) -> list[int]:
    """The tokens an engine ran the model on for one request: the prompt and every sampled token but the last
    (vLLM's, SGLang's and ``hf_cpu``'s ``routed_experts`` have one row for each, in this order)."""
    return [*prompt_ids, *token_ids[:-1]]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def merge_turn_routes(
    held: Optional[Any],
    held_token_ids: Optional[Sequence[int]],
    prompt_ids: Sequence[int],
    token_ids: Sequence[int],
    routed_experts: Any,
) -> tuple[np.ndarray, list[int]]:
    """The trajectory's routes after one more turn, and the tokens they are the routes of.

    Args:
        held: ``[H, layers, top_k]`` routes of the trajectory so far (None before the first turn with routes).
        held_token_ids: the ``H`` tokens ``held`` routes, in order (what this function returned with it).
        prompt_ids: the sequence sent to the engine this turn (the accumulated trajectory).
        token_ids: the tokens the engine sampled this turn.
        routed_experts: this turn's routes, one row per token the engine ran
            (:func:`ran_tokens`: ``len(prompt_ids) + len(token_ids) - 1`` rows).

    Returns:
        ``(routes, tokens)``: ``routes[i]`` is ``held[i]`` for every ``i`` below the length of the common prefix
        of ``held_token_ids`` and ``prompt_ids``, and this turn's row ``i`` after it; ``tokens`` are the tokens
        ``routes`` covers (``ran_tokens(prompt_ids, token_ids)``). The dtype is the inputs' (uint8 / uint16 stay
        compact; differing dtypes take numpy's common type). Inputs are not modified.

    Raises:
        TurnRoutesError: this turn's row count does not match the tokens it ran (the rows cannot be placed on
            the sequence), the layer / top-k shapes differ from the held routes, or ``held`` and
            ``held_token_ids`` disagree in length.
    """
    new = _as_array(routed_experts, "this turn's routed_experts")
    tokens = ran_tokens(prompt_ids, token_ids) if token_ids else list(prompt_ids)
    if new.shape[0] != len(tokens):
        raise TurnRoutesError(
            f"this turn's routed_experts has {new.shape[0]} rows, but the engine ran {len(tokens)} tokens: a prompt "
            f"of {len(prompt_ids)} tokens (the trajectory so far) and {len(token_ids)} sampled tokens, the last "
            "never fed back. Its rows cannot be placed on the trajectory's tokens; the engine must return one "
            "route per token it ran, starting at the prompt's first token (no prompt offset)."
        )
    if held is None:
        return new, tokens
    old = _as_array(held, "the routes held from earlier turns")
    if held_token_ids is None or len(held_token_ids) != old.shape[0]:
        got = "no tokens" if held_token_ids is None else f"{len(held_token_ids)} tokens"
        raise TurnRoutesError(
            f"the routes held from earlier turns have {old.shape[0]} rows but {got} recorded for them"
        )
    if old.shape[1:] != new.shape[1:]:
        raise TurnRoutesError(
            f"this turn's routed_experts are [tokens, {', '.join(map(str, new.shape[1:]))}], the earlier turns' "
            f"[tokens, {', '.join(map(str, old.shape[1:]))}] ([tokens, layers, top_k] must agree across turns)"
        )
    keep = _common_prefix(held_token_ids, prompt_ids)
    return np.concatenate([old[:keep], new[keep:]]), tokens


# ------------------------------------------------------------------------------------------ verl 0.9.1
#: verl's agent name for its tool agent loop (``@register("tool_agent")``)
AGENT_NAME = "tool_agent"
_VERL_MODULE = "verl.experimental.agent_loop.tool_agent_loop"
_VERL_TARGET = f"{_VERL_MODULE}.ToolAgentLoop"
_CLASS_NAME = "TurnRoutesToolAgentLoop"
_TARGET = f"{__name__}.{_CLASS_NAME}"
#: the AgentData attribute holding the tokens ``agent_data.routed_experts`` are the routes of
TOKENS_ATTR = "_verl_stable_route_token_ids"


class TurnRoutesMixin:
    """Put in front of verl's ``ToolAgentLoop`` (or a subclass): each turn's routes are merged into the held ones
    (:func:`merge_turn_routes`) instead of replacing them."""

    async def _handle_generating_state(self, agent_data, sampling_params: dict[str, Any], *args, **kwargs):
        held = agent_data.routed_experts
        held_tokens = getattr(agent_data, TOKENS_ATTR, None)
        sent = list(agent_data.prompt_ids)
        state = await super()._handle_generating_state(agent_data, sampling_params, *args, **kwargs)
        got = agent_data.routed_experts
        if got is not None and got is not held:  # verl assigned this turn's output.routed_experts
            routes, tokens = merge_turn_routes(held, held_tokens, sent, agent_data.response_ids, got)
            agent_data.routed_experts = routes
            setattr(agent_data, TOKENS_ATTR, tokens)
        return state


_CLASS: Optional[type] = None


def turn_routes_tool_agent_loop() -> type:
    """verl's ``ToolAgentLoop`` with :class:`TurnRoutesMixin` in front, built once; importable as
    ``verl_stable.integration.tool_agent_loop.TurnRoutesToolAgentLoop`` (what verl's registry names), which is
    built on first access so that importing this module never imports verl's agent loop."""
    global _CLASS
    if _CLASS is None:
        from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop

        if _CLASS is None:  # (importing verl's loop may have installed the row, and built the class, meanwhile)
            _CLASS = type(
                _CLASS_NAME,
                (TurnRoutesMixin, ToolAgentLoop),
                {
                    "__module__": __name__,
                    "__qualname__": _CLASS_NAME,
                    "__doc__": "verl's ToolAgentLoop keeping every turn's routes (see its module).",
                },
            )
    return _CLASS


def __getattr__(name: str):
    if name == _CLASS_NAME:
        return turn_routes_tool_agent_loop()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry() -> dict:
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    return _agent_loop_registry


def install() -> bool:
    """Register ``TurnRoutesToolAgentLoop`` as ``tool_agent`` in verl's agent-loop registry, where verl's own
    ``ToolAgentLoop`` is registered (idempotent). False, with a warning, when another class holds the name or
    verl is not 0.9.1."""
    from verl_stable.integration import version_gate

    if not version_gate("multi-turn-routes"):
        return False
    from verl.experimental.agent_loop.agent_loop import register

    entry = dict(_registry().get(AGENT_NAME) or {})
    target = entry.get("_target_")
    if target == _TARGET:
        return True
    if target != _VERL_TARGET or set(entry) != {"_target_"}:
        warnings.warn(
            f"verl's agent loop registry holds {entry or 'nothing'} for {AGENT_NAME!r}, not verl's ToolAgentLoop: "
            f"left alone, that loop keeps its own multi-turn routes rule ({__name__})",
            stacklevel=2,
        )
        return False
    register(AGENT_NAME)(turn_routes_tool_agent_loop())
    return True


def is_installed() -> bool:
    """Whether verl's registry hands out ``TurnRoutesToolAgentLoop`` for ``tool_agent`` in this process (False
    before verl imported its tool agent loop)."""
    if _VERL_MODULE not in sys.modules:
        return False
    return (_registry().get(AGENT_NAME) or {}).get("_target_") == _TARGET
