"""VERL_PLATFORM=cpu: what activation registers in verl, checked in fresh interpreters (registries are
process-global, so each check gets its own process, exactly like a Ray worker importing verl)."""

from __future__ import annotations

import pytest

from verl_stable.integration import UnsupportedVersion, check_version

from tests.plugin.processes import run_python as _run


def test_import_verl_with_verl_platform_cpu_registers_the_backend():
    proc = _run(
        """
        import torch, verl  # the verl.plugins entry point activates the backend here
        from verl.plugin.platform import get_platform
        from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_device_id
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import get_rollout_replica_class
        from verl.utils.distributed import initialize_global_process_group_ray
        p = get_platform()
        assert type(p).__name__ == "PlatformCPU", p
        assert get_device_name() == "cpu" and get_nccl_backend() == "gloo"
        assert get_device_id() == torch.device("cpu")
        assert torch.ones(2).to(get_device_id()).device.type == "cpu"
        dev = get_torch_device()
        dev.empty_cache(); dev.synchronize(); dev.set_device(0)
        assert dev.memory_allocated() == 0 and dev.is_available()
        # (verl_stable.routing may hand out a routing-replay subclass of the registered class)
        assert issubclass(EngineRegistry.get_engine_cls("language_model", "fsdp2"), FSDPEngineWithLMHead)
        assert EngineRegistry._engines["language_model"]["fsdp2"]["cpu"] is FSDPEngineWithLMHead
        assert get_rollout_replica_class("hf_cpu").__name__ == "HFCPUReplica"
        assert get_rollout_class("hf_cpu", "async").__name__ == "HFCPUServerAdapter"
        # the process group verl builds on CPU: gloo only
        import os, socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
        initialize_global_process_group_ray()
        t = torch.ones(3); torch.distributed.all_reduce(t)
        assert torch.distributed.get_backend() == "gloo"
        torch.distributed.destroy_process_group()
        print("OK")
        """,
        platform="cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_without_the_setting_nothing_is_registered():
    proc = _run(
        """
        import verl
        from verl.plugin.platform import PlatformRegistry
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from verl.utils.distributed import initialize_global_process_group_ray
        assert PlatformRegistry.get("cpu") is None
        assert "hf_cpu" not in RolloutReplicaRegistry._registry
        assert initialize_global_process_group_ray.__defaults__ == (None, None)
        print("OK")
        """,
        platform=None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_verl_version_it_was_not_built_for_is_a_clear_error():
    with pytest.raises(UnsupportedVersion, match=r"verl==0\.9\.1.*found verl==0\.8\.0.*VERL_PLATFORM"):
        check_version("cpu-platform", "0.8.0")
    check_version("cpu-platform")  # the installed, pinned verl passes


def test_the_cpu_settings_reach_ray_workers_through_runtime_env():
    from verl_stable.apps.cpu_overrides import cpu_overrides

    overrides = cpu_overrides("/tmp/run")
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=cpu" in overrides
    assert "actor_rollout_ref.rollout.name=hf_cpu" in overrides
    assert "actor_rollout_ref.actor.strategy=fsdp2" in overrides
