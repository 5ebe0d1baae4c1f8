"""initialize_global_process_group_ray on a ``cpu`` device: gloo alone, not "cpu:gloo,cpu:gloo" (which torch rejects).

verl's device is ``cpu`` under a CPU platform plugin (verl's route for new hardware is external platform plugins).
The check runs in a fresh interpreter, so the process group and the stand-in device leave nothing behind.
"""

import os
import socket
import subprocess
import sys
import textwrap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(device: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import torch.distributed as dist
        import verl.utils.distributed as distributed

        # what a platform whose device is {device!r} answers
        distributed.get_device_name = lambda: {device!r}
        distributed.get_nccl_backend = lambda: "gloo"
        distributed.initialize_global_process_group_ray()
        print("backend", dist.get_backend())
        dist.destroy_process_group()
        """
    )
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_cpu_device_gets_a_gloo_only_process_group():
    res = _run("cpu")
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.split()[-1] in ("gloo", "cpu:gloo"), res.stdout


def test_other_devices_keep_the_cpu_gloo_pair():
    import inspect

    import verl.utils.distributed as distributed

    source = inspect.getsource(distributed.initialize_global_process_group_ray)
    assert 'f"cpu:gloo,{device}:{get_nccl_backend()}"' in source
