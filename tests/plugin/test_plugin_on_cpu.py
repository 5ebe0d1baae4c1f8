"""Registration through verl's plugin entry point: fresh interpreter, Ray worker, no silent overwrite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from verl_stable.losses import LOSS_MODES


def test_fresh_interpreter_importing_only_verl_gets_the_losses():
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        f"for name in {sorted(LOSS_MODES)!r}:\n"
        "    assert get_policy_loss_fn(name).__module__ == 'verl_stable.losses', name\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_ray_worker_registers_the_losses():
    ray = pytest.importorskip("ray")
    from verl_stable.cli import _registration_report

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        report = ray.get(ray.remote(num_cpus=0)(_registration_report).remote(), timeout=300)
    finally:
        ray.shutdown()
    assert report["plugin_loaded"]
    assert set(LOSS_MODES) <= set(report["losses"])


def test_registration_refuses_to_overwrite_a_foreign_loss():
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from verl_stable.losses import register_all

    ours = POLICY_LOSS_REGISTRY["minirl"]

    def impostor(*args, **kwargs):
        raise AssertionError

    POLICY_LOSS_REGISTRY["minirl"] = impostor
    try:
        with pytest.raises(RuntimeError, match="already registered by .*impostor"):
            register_all()
    finally:
        POLICY_LOSS_REGISTRY["minirl"] = ours
    register_all()  # re-registering our own functions is a no-op
    assert POLICY_LOSS_REGISTRY["minirl"] is ours


def test_doctor_passes_and_fails_loudly(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "verl_stable.cli", "doctor"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Ray worker" in ok.stdout and "all checks passed" in ok.stdout
    # A plugin that cannot import (a broken install) must fail doctor, not be swallowed as verl does.
    (tmp_path / "verl_stable").mkdir()
    (tmp_path / "verl_stable" / "__init__.py").write_text("__version__ = 'broken'\nVERL_VERSION = '0.9.1'\n")
    (tmp_path / "verl_stable" / "losses.py").write_text("LOSS_MODES = {'minirl': None}\n")
    (tmp_path / "verl_stable" / "plugin.py").write_text("raise ImportError('simulated broken install')\n")
    cli = __import__("verl_stable.cli", fromlist=["__file__"]).__file__
    (tmp_path / "verl_stable" / "cli.py").write_text(open(cli).read())
    broken = subprocess.run(
        [sys.executable, "-m", "verl_stable.cli", "doctor", "--no-ray"], capture_output=True, text=True,
        timeout=600, cwd=tmp_path,
    )
    assert broken.returncode != 0
    assert "simulated broken install" in broken.stdout


def test_doctor_checks_in_its_own_ray_instance_even_where_a_cluster_is_named():
    # `ray start` on the machine (or RAY_ADDRESS in the environment) made a plain ray.init() join that cluster and
    # refuse doctor's num_cpus with a traceback; without --address, doctor starts an instance of its own.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    run = subprocess.run(
        [sys.executable, "-m", "verl_stable.cli", "doctor"], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Ray worker" in run.stdout and "all checks passed" in run.stdout


def test_doctor_hint_names_verls_plugin_switch():
    from verl_stable.cli import plugin_policy_hint

    assert plugin_policy_hint({}) is None
    assert plugin_policy_hint({"VERL_USE_EXTERNAL_PLUGINS": "auto"}) is None
    assert plugin_policy_hint({"VERL_USE_EXTERNAL_PLUGINS": "other,verl_stable"}) is None
    for policy in ("none", "other_plugin"):
        hint = plugin_policy_hint({"VERL_USE_EXTERNAL_PLUGINS": policy})
        assert f"VERL_USE_EXTERNAL_PLUGINS={policy}" in hint and "verl_stable" in hint


def test_registration_keeps_a_patched_verls_own_copy():
    """On a verl carrying patches/ (the losses live in verl.trainer.ppo.minirl_losses), the plugin keeps verl's."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from verl_stable.losses import PATCHED_VERL_MODULE, register_all

    ours = POLICY_LOSS_REGISTRY["minirl"]

    def verls_copy(*args, **kwargs):
        raise AssertionError

    verls_copy.__module__, verls_copy.__qualname__ = PATCHED_VERL_MODULE, ours.__qualname__
    POLICY_LOSS_REGISTRY["minirl"] = verls_copy
    try:
        register_all()
        assert POLICY_LOSS_REGISTRY["minirl"] is verls_copy
    finally:
        POLICY_LOSS_REGISTRY["minirl"] = ours
