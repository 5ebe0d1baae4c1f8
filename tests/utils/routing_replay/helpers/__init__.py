"""Test helpers shared by every test directory: tiny real transformers MoE models, random routes, log-probs,
an observer of the experts' inputs, and verl's FSDP engine on CPU. Import as ``from tests.helpers import ...``
(the repository root is on ``sys.path`` under pytest because ``tests`` is a package).

Nothing here re-implements product code: native routes come from ``RoutingReplay.record(native=True)``.
"""

from tests.helpers.logprobs import gather_logprobs, response_logprobs, token_logprobs
from tests.helpers.models import (
    FAMILIES,
    VOCAB,
    addition_prompt,
    save_tiny_deepseek_v3,
    save_tiny_moe,
    tiny_batch,
    tiny_config,
    tiny_model,
)
from tests.helpers.routes import random_expert_ids, random_routes_idx
from tests.helpers.taps import ExpertTap

__all__ = [
    "FAMILIES",
    "VOCAB",
    "ExpertTap",
    "addition_prompt",
    "gather_logprobs",
    "random_expert_ids",
    "random_routes_idx",
    "response_logprobs",
    "save_tiny_deepseek_v3",
    "save_tiny_moe",
    "tiny_batch",
    "tiny_config",
    "tiny_model",
    "token_logprobs",
]
