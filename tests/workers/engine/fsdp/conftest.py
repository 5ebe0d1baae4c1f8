"""Fixtures for the FSDP engine tests: one gloo process group and one tiny Qwen3-MoE per session
(the engine harness is ``tests.workers.engine.fsdp.harness``)."""

from __future__ import annotations

import os

import pytest
from tests.workers.engine.fsdp.harness import free_port
from tests.utils.routing_replay.helpers.models import save_tiny_moe


def pytest_configure(config):
    """The engine runs on verl's CPU platform, chosen before verl resolves its platform (on first use). verl-stable's
    tests/conftest.py sets it for the whole suite; verl's tree has no suite-wide conftest, so these tests say it too."""
    os.environ.setdefault("VERL_PLATFORM", "cpu")


@pytest.fixture(scope="session")
def process_group():
    """A world of one over gloo: what the FSDP engine's device mesh is built on."""
    import torch.distributed as dist

    # plugin-only: begin
    import verl  # noqa: F401  (loads verl_stable.plugin: the CPU platform)
    from verl_stable.integration.cpu import activate_if_requested
    from verl_stable.integration.fsdp_engine import register_replay_engines

    activate_if_requested()
    register_replay_engines()  # idempotent: the plugin did it when the CPU backend imported verl's FSDP engine
    # plugin-only: end
    created = False
    if not dist.is_initialized():
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        dist.init_process_group(backend="gloo", rank=0, world_size=1)
        created = True
    yield
    if created:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_moe_path(tmp_path_factory):
    return save_tiny_moe(str(tmp_path_factory.mktemp("tiny_qwen3_moe")))


