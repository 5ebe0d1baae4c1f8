"""Fixtures for the FSDP engine tests: one gloo process group and one tiny Qwen3-MoE per session
(the engine harness is ``tests.workers.engine.fsdp.harness``)."""

from __future__ import annotations

import os

import pytest
from tests.workers.engine.fsdp.harness import free_port
from tests.utils.routing_replay.helpers.models import save_tiny_moe


@pytest.fixture(scope="module")
def process_group():
    """A world of one over gloo: what the FSDP engine's device mesh is built on.

    The engine needs verl's device to be ``cpu``: a CPU platform plugin (verl-stable's, ``VERL_PLATFORM=cpu``)
    selected before verl resolves its platform. These tests never set it themselves: the platform is resolved
    once per process, so setting it here would change the device of every test after them."""
    import torch.distributed as dist

    # plugin-only: begin
    import verl  # noqa: F401  (loads verl_stable.plugin: the CPU platform)
    from verl_stable.integration.cpu import activate_if_requested
    from verl_stable.integration.fsdp_engine import register_replay_engines

    activate_if_requested()
    register_replay_engines()  # idempotent: the plugin did it when the CPU backend imported verl's FSDP engine
    # plugin-only: end
    from verl.utils.device import get_device_name

    if get_device_name() != "cpu":
        pytest.skip(f"verl's device is {get_device_name()!r}: these tests run on a CPU platform plugin "
                    "(e.g. pip install verl-stable; VERL_PLATFORM=cpu)")  # fmt: skip
    if dist.is_initialized():
        yield
        return
    world = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    saved = {key: os.environ.get(key) for key in world}
    os.environ.update(world)
    dist.init_process_group(backend="gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():  # the tests after these see the environment they had
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_moe_path(tmp_path_factory):
    return save_tiny_moe(str(tmp_path_factory.mktemp("tiny_qwen3_moe")))


