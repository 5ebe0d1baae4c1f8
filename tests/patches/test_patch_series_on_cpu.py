"""The upstream patch series (patches/verl-0.9.1/) is current, applies to pristine verl 0.9.1, and the
project's tests pass against the patched verl with verl-stable's plugin switched off.

The series is regenerated from this repository's code (``scripts/make_patches.py --check``); it needs the
verl sdist (downloaded once into ``.cache/``, sha256-checked), git and ruff 0.12.2 (the ``test`` extra). None
of them missing is a reason to skip: CI installs them, and a check that silently skips proves nothing.
The patched tree is the session fixture ``patched_tree`` (``conftest.py``), which verl's PR checks
(``test_verl_pr_checks_on_cpu.py``) share.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_patches.py"

#: run pytest with the plugin unimportable: what passes is verl's tree as the patches leave it
BLOCK_PLUGIN = "import sys; sys.modules['verl_stable'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def _patched_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tree), VERL_USE_EXTERNAL_PLUGINS="none", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """``make_patches.py --check``: regenerate into a temp dir and compare with what is committed."""
    generated_tree = tmp_path_factory.mktemp("generated") / "verl"
    res = subprocess.run([sys.executable, str(SCRIPT), "--check", "--tree", str(generated_tree)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return res, generated_tree


def test_series_is_generated_from_the_current_code(regenerated):
    res, _ = regenerated
    assert res.returncode == 0, (
        "patches/ differs from what scripts/make_patches.py generates from the current code; run\n"
        "    python scripts/make_patches.py\nand commit the result.\n\n" + res.stdout + res.stderr
    )


def test_committed_series_applies_and_matches_the_generated_tree(regenerated, patched_tree):
    res, generated_tree = regenerated
    assert res.returncode == 0, res.stderr
    for top in ("verl", "tests", "docs"):
        diff = subprocess.run(["git", "diff", "--no-index", "--stat", "--", str(generated_tree / top),
                               str(patched_tree / top)], capture_output=True, text=True)  # fmt: skip
        assert diff.returncode == 0, diff.stdout


def test_patched_verl_imports_and_registers_without_the_plugin(patched_tree):
    code = """
import sys
sys.modules["verl_stable"] = None
import verl
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine.fsdp.router_replay import RoutingReplayEngineMixin
from verl.workers.rollout.base import get_rollout_class, register_rollout_class
import verl.workers.engine_workers
for name in ("minirl", "minirl_no_is", "minirl_length_norm", "minirl_no_clip", "seq_is"):
    assert get_policy_loss_fn(name).__module__ == "verl.trainer.ppo.minirl_losses", name
assert issubclass(FSDPEngineWithLMHead, RoutingReplayEngineMixin)
assert callable(register_rollout_class)
from verl.plugin.platform import PlatformRegistry
assert PlatformRegistry.get("cpu") is None  # the CPU platform stays an external plugin, not part of the series
assert verl.__file__.startswith(sys.argv[1]), verl.__file__
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code, str(patched_tree)], env=_patched_env(patched_tree),
                         cwd=patched_tree, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-4000:]


def test_project_tests_pass_against_the_patched_verl(patched_tree):
    """The copied loss, routing-replay, engine and CPU tests (and verl's own tests of the patched files)."""
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list-tests"], capture_output=True, text=True, check=True)
    tests = listed.stdout.split()
    missing = [t for t in tests if not (patched_tree / t).exists()]
    assert not missing, f"tests named in PATCHES are not in the patched tree: {missing}"
    res = subprocess.run(
        [sys.executable, "-c", BLOCK_PLUGIN, "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", *tests],
        env=_patched_env(patched_tree), cwd=patched_tree, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-2000:]


def test_engine_tests_pass_on_the_patched_verl_with_the_plugin_as_cpu_platform(patched_tree):
    """The FSDP engine tests of the series need a device. The series adds no CPU platform (verl's route for new
    hardware is an external platform plugin): verl-stable supplies it here, as it would to a verl with the series
    merged, and the engine under test must be the patched tree's, not the plugin's."""
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list-cpu-platform-tests"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    tests = listed.stdout.split()
    assert tests, "no test in PATCHES needs the CPU platform; the FSDP engine tests should"
    env = {**_patched_env(patched_tree), "VERL_PLATFORM": "cpu"}
    del env["VERL_USE_EXTERNAL_PLUGINS"]  # verl loads verl-stable through its entry point
    probe = """
import verl
from verl.utils.device import get_device_name
from verl.workers.engine.base import EngineRegistry
cls = EngineRegistry.get_engine_cls("language_model", "fsdp2")
modules = [c.__module__ for c in cls.__mro__]
assert get_device_name() == "cpu", get_device_name()
assert "verl.workers.engine.fsdp.router_replay" in modules, modules
assert not any(m.startswith("verl_stable") for m in modules), modules
assert verl.__file__.startswith(sys.argv[1]), verl.__file__
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", "import sys\n" + probe, str(patched_tree)], env=env, cwd=patched_tree,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-4000:]
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", "-rs", *tests],
        env=env, cwd=patched_tree, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-4000:]
