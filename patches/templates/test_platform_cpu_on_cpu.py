"""The CPU platform and what it enables; each check in a fresh process (verl resolves the platform once)."""

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def test_verl_platform_cpu_selects_cpu_engine_rollout_and_gloo():
    out = _run(
        """
        import os, socket
        import torch.distributed as dist
        from verl.plugin.platform import get_platform
        from verl.utils.device import get_device_name, get_nccl_backend
        from verl.utils.distributed import initialize_global_process_group_ray
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        assert type(get_platform()).__name__ == "PlatformCPU"
        assert get_device_name() == "cpu" and get_nccl_backend() == "gloo"
        assert EngineRegistry.get_engine_cls("language_model", "fsdp2") is FSDPEngineWithLMHead
        assert get_rollout_class("hf_cpu").__name__ == "HFCPUServerAdapter"
        assert RolloutReplicaRegistry.get("hf_cpu").__name__ == "HFCPUReplica"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
        initialize_global_process_group_ray()
        assert dist.get_backend() in ("gloo", "cpu:gloo")
        dist.destroy_process_group()
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_cpu_is_never_auto_detected():
    from verl.plugin.platform.platform_cpu import PlatformCPU

    assert not PlatformCPU().is_platform_available(use_smi_check=True)


def test_register_rollout_class_refuses_to_replace_another_class():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY, register_rollout_class

    fqdn = _ROLLOUT_REGISTRY[("hf_cpu", "async")]
    register_rollout_class("hf_cpu", fqdn)  # the same class again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_rollout_class("hf_cpu", "some.other.Adapter")
    assert _ROLLOUT_REGISTRY[("hf_cpu", "async")] == fqdn
