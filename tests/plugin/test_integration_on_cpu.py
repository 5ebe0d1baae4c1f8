"""The plugin's one table of process-wide changes (``verl_stable.integration.SHIMS``): every row installed where it
applies, installing twice changes nothing, a version mismatch is one error type handled by each row's declared
policy, and ``verl-stable doctor`` prints the table with the states a fresh process has. Fresh interpreters:
verl's registries are process-global."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from verl_stable import integration
from verl_stable.integration import SHIMS, OnMismatch, UnsupportedVersion, VersionGate

from tests.plugin.processes import run_python

#: the packages whose absence makes a row not applicable on this machine (the CPU rows apply: VERL_PLATFORM=cpu)
_ABSENT = {name for name in ("vllm", "sglang") if importlib.util.find_spec(name) is None}

_STATES = """
import json
from verl_stable import integration
print(json.dumps({shim.name: integration.state(shim) for shim in integration.SHIMS}))
"""


@pytest.fixture(scope="module")
def cpu_process():
    """One fresh interpreter with VERL_PLATFORM=cpu: the states after ``import verl``, after verl's agent loop
    module (the last lazy row's trigger) is imported, and after ``install_all()`` twice."""
    from textwrap import dedent

    snapshot = dedent(
        """
        print(json.dumps({shim.name: shim.is_installed() for shim in integration.SHIMS}))

        def snapshot():
            from verl.experimental.agent_loop import agent_loop
            from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
            from verl.plugin.platform import PlatformRegistry
            from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
            from verl.utils.distributed import initialize_global_process_group_ray
            from verl.workers.engine.base import EngineRegistry
            from verl.workers.rollout.base import _ROLLOUT_REGISTRY
            from verl.workers.rollout.replica import RolloutReplicaRegistry

            engines = {(m, b, k): c for m, by in EngineRegistry._engines.items() for b, keys in by.items()
                       for k, c in keys.items()}
            return (dict(PlatformRegistry._platforms), engines, dict(RolloutReplicaRegistry._registry),
                    dict(_ROLLOUT_REGISTRY), initialize_global_process_group_ray.__defaults__,
                    dict(POLICY_LOSS_REGISTRY), agent_loop.AgentLoopOutput.as_dict,
                    agent_loop.AgentLoopWorker._agent_loop_postprocess, dict(_agent_loop_registry),
                    list(sys.meta_path))

        before = snapshot()
        integration.install_all()
        integration.install_all()
        after = snapshot()
        print(json.dumps([b == a for b, a in zip(before, after)]))
        """
    )
    proc = run_python(
        "import sys, json\nimport verl\n" + _STATES + "import verl.experimental.agent_loop.agent_loop\n" + _STATES
        + snapshot,
        platform="cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after_import_verl, after_agent_loop, installed, unchanged = (
        json.loads(line) for line in proc.stdout.strip().splitlines()[-4:]
    )
    return after_import_verl, after_agent_loop, installed, unchanged


def test_every_row_is_installed_with_the_cpu_platform_unless_its_package_is_absent(cpu_process):
    _, states, installed, _ = cpu_process
    assert list(states) == [shim.name for shim in SHIMS]
    for shim in SHIMS:
        state, detail = states[shim.name]
        if state == "not applicable":
            assert any(package in detail for package in _ABSENT), (shim.name, detail)
            continue
        assert state == "installed", (shim.name, state, detail)
        assert installed[shim.name], shim.name
    for row in ("policy-losses", "cpu-platform", "cpu-gloo-backend", "cpu-engine", "cpu-rollout-replica",
                "cpu-rollout-adapter", "fsdp-routing-replay", "compact-routes-on-the-wire",
                "multi-turn-routes"):  # fmt: skip
        assert installed[row], row


def test_installing_twice_changes_nothing(cpu_process):
    *_, unchanged = cpu_process
    names = ["platforms", "engines", "replicas", "rollout adapters", "process-group defaults", "losses",
             "as_dict", "_agent_loop_postprocess", "agent loops", "sys.meta_path"]  # fmt: skip
    assert dict(zip(names, unchanged)) == dict.fromkeys(names, True)


def _mismatched(shim):
    """The row as if it had been written against a release that is not installed."""
    return dataclasses.replace(shim, gate=VersionGate(shim.gate.package, ("0.0.0",)))


@pytest.mark.parametrize("shim", [s for s in SHIMS if s.gate], ids=lambda s: s.name)
def test_a_version_mismatch_is_one_error_type_handled_by_the_declared_policy(shim, caplog):
    with pytest.raises(UnsupportedVersion, match=rf"built for {shim.gate.package}==.*, found .*Install"):
        integration.check_version(shim, "0.0.1")
    mismatched = _mismatched(shim)
    message = integration.mismatch_message(mismatched, mismatched.gate.installed())
    if shim.on_mismatch is OnMismatch.RAISE:
        with pytest.raises(UnsupportedVersion, match=re.escape(message)):
            integration.version_gate(mismatched)
    elif shim.on_mismatch is OnMismatch.WARN:
        with pytest.warns(UserWarning, match=re.escape(message)):
            assert integration.version_gate(mismatched) is False
        assert shim.skipped in message
    else:
        with caplog.at_level(logging.INFO, logger="verl_stable.integration"):
            assert integration.version_gate(mismatched) is False
        assert message in caplog.messages and shim.skipped in message
    assert integration.state(mismatched)[0] in ("version mismatch", "not applicable")
    if shim.gate.installed() is not None:  # the installed release passes the real gate
        integration.check_version(shim)
        assert integration.version_gate(shim) is True


def test_the_cpu_rows_raise_and_the_others_warn_or_log_as_before():
    policies = {shim.name: shim.on_mismatch for shim in SHIMS}
    assert {name for name, p in policies.items() if p is OnMismatch.RAISE} == {
        "cpu-platform", "cpu-gloo-backend", "cpu-engine", "cpu-rollout-replica", "cpu-rollout-adapter"}  # fmt: skip
    assert policies["fsdp-routing-replay"] is policies["rollout-route-decoding"] is OnMismatch.WARN
    assert policies["compact-routes-on-the-wire"] is policies["multi-turn-routes"] is OnMismatch.WARN
    assert policies["vllm-monolithic-route-capture"] is OnMismatch.LOG
    assert policies["policy-losses"] is None  # a registry use with no version gate


_ROW = re.compile(r"^\s+(\d+)\. (\S+) \[(registry|patch)\]: ([A-Za-z ]+?)(?: \((.*)\))?$")


def test_doctor_prints_the_table_with_the_states_of_a_fresh_process(cpu_process):
    after_import_verl, *_ = cpu_process
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    doctor = subprocess.run([sys.executable, "-m", "verl_stable.cli", "doctor", "--no-ray"], capture_output=True,
                            text=True, timeout=600, env=env)  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    rows = [m.groups() for m in map(_ROW.match, doctor.stdout.splitlines()) if m]
    assert [(int(i), name, kind) for i, name, kind, _, _ in rows] == [
        (i, shim.name, shim.kind) for i, shim in enumerate(SHIMS, 1)
    ]
    # doctor's process has imported verl (loading the plugin) and nothing else of verl's: the states of a fresh
    # `import verl`
    assert {name: [state, detail or ""] for _, name, _, state, detail in rows} == after_import_verl
    for shim in SHIMS:
        assert f"target:   {shim.target}" in doctor.stdout and f"upstream: {shim.upstream}" in doctor.stdout
    assert re.search(rf"\[ok  \] {len(SHIMS)} process-wide changes", doctor.stdout)
    assert "Ray" not in doctor.stdout  # --no-ray: no Ray check ran, none is claimed


def test_without_the_cpu_platform_the_cpu_rows_do_not_apply():
    proc = run_python("import verl\n" + _STATES, platform=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("cpu-platform", "cpu-gloo-backend", "cpu-engine", "cpu-rollout-replica", "cpu-rollout-adapter"):
        assert states[name] == ["not applicable", "VERL_PLATFORM is not cpu"]
    assert states["policy-losses"] == ["installed", ""]
    assert states["fsdp-routing-replay"][0] == "waiting"  # `import verl` alone does not import the engine


def test_the_upstreamable_cpu_backend_never_imports_the_plugin_only_integration():
    cpu = Path(integration.__file__).parents[1] / "cpu"
    for path in sorted(cpu.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            assert not any(n.startswith("verl_stable.integration") for n in names), path.name


def test_the_rollouts_name_matches_the_backends_constant():
    """cpu/rollout.py is copied as is into verl by the patch series, so it keeps the name itself."""
    from verl_stable.cpu import ROLLOUT_NAME
    from verl_stable.cpu import rollout

    assert rollout.ROLLOUT_NAME == ROLLOUT_NAME
