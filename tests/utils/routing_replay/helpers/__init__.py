"""Test helpers shared by every test directory: tiny real transformers MoE models, random routes, log-probs and
an observer of the experts' inputs. Import as ``from tests.utils.routing_replay.helpers import ...`` (the
repository root is on ``sys.path`` under pytest because ``tests`` is a package). Importing them changes no
global state: the test environment is set once, in ``tests/conftest.py``.

Nothing here re-implements product code: native routes come from ``RoutingReplay.record(native=True)``.
"""

from tests.utils.routing_replay.helpers.logprobs import gather_logprobs, response_logprobs, token_logprobs
from tests.utils.routing_replay.helpers.models import (
    FAMILIES,
    VOCAB,
    addition_prompt,
    save_tiny_deepseek_v3,
    save_tiny_moe,
    tiny_batch,
    tiny_config,
    tiny_model,
)
from tests.utils.routing_replay.helpers.routes import random_expert_ids, random_routes_idx
from tests.utils.routing_replay.helpers.taps import ExpertTap

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
