"""verl's CPU unit-test job, reproduced on the patched tree with verl's CPU pins.

verl's ``cpu_unit_tests.yml`` writes a ``pytest.ini`` collecting ``*_on_cpu.py`` and runs
``pytest -s -x --asyncio-mode=auto tests/`` in ONE process, in 20 minutes, under ``uv run --extra cpu`` (torch
2.11.0, transformers 5.9.0). Here: the same command in ``.venv-verl-cpu`` (``bash scripts/setup.sh
--with-verl-cpu-pins``; pins read from verl's metadata), on a clone of the patched tree, with verl-stable absent from
that venv and external plugins off. Every ``*_on_cpu.py`` of the tree runs: verl's own and the series'.

``process_state_guard`` (a pytest plugin beside this file) fails any test module of the series that leaves process
state changed for the tests after it (environment, cwd, torch switches, process group, verl's registries and
platform); verl's own modules are not held to it (its Ray tests leave Ray's variables in ``os.environ``). The
guard is shown to fail on a leaking module below.

The venv missing is a failure, not a skip: CI builds it (``scripts/test.sh``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_patches.py"
PINS_PYTHON = Path(os.environ.get("VERL_CPU_PINS_PYTHON") or ROOT / ".venv-verl-cpu" / "bin" / "python")
WORKFLOW = Path(os.environ.get("VERL_UPSTREAM_CHECKS") or ROOT.parent / "shared" / "verl-upstream") / "workflows"
#: the job's command and environment, as cpu_unit_tests.yml has them
PYTEST_INI = "[pytest]\npython_files = *_on_cpu.py\n"
COMMAND = ["pytest", "-s", "-x", "--asyncio-mode=auto", "tests/"]
JOB_ENV = {"TORCH_COMPILE_DISABLE": "1", "TORCHINDUCTOR_DISABLE": "1", "HF_HUB_ENABLE_HF_TRANSFER": "0"}
#: verl's timeout-minutes for the job
LIMIT_S = 20 * 60


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "PYTHONPATH")}
    env.update(JOB_ENV, TOKENIZERS_PARALLELISM="false", VERL_USE_EXTERNAL_PLUGINS="none", **extra)
    return env


def _series_tests() -> list[str]:
    out = []
    for flag in ("--list-tests", "--list-cpu-platform-tests"):
        listed = subprocess.run([sys.executable, str(SCRIPT), flag], capture_output=True, text=True, check=True)
        out += listed.stdout.split()
    return out


def test_the_command_is_the_workflows():
    workflow = WORKFLOW / "cpu_unit_tests.yml"
    if not workflow.is_file():
        pytest.skip(f"verl's workflows are not beside this repository ({WORKFLOW})")
    text = workflow.read_text()
    assert "echo 'python_files = *_on_cpu.py' >> pytest.ini" in text
    assert "pytest -s -x --asyncio-mode=auto tests/" in text
    assert f"timeout-minutes: {LIMIT_S // 60}" in text
    for key, value in JOB_ENV.items():
        assert f"{key}: {value}" in text or f'{key}: "{value}"' in text, key


def test_verl_cpu_job_passes_on_the_patched_tree_with_verls_pins(patched_tree, tmp_path):
    assert PINS_PYTHON.is_file(), (
        f"{PINS_PYTHON} is missing: run `bash scripts/setup.sh --with-verl-cpu-pins` (scripts/test.sh does)"
    )
    versions = subprocess.run(
        [str(PINS_PYTHON), "-c", "import importlib.metadata as m, importlib.util as u; "
         "print(m.version('torch'), m.version('transformers'), u.find_spec('verl_stable') is None)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=_env(),
    ).stdout.split()  # fmt: skip
    pins = subprocess.run(
        [sys.executable, "-c", "from importlib.metadata import requires; from packaging.requirements import "
         "Requirement; r = [Requirement(x) for x in requires('verl')]; print(*[str(x.specifier)[2:] for x in r if "
         "x.name in ('torch', 'transformers') and x.marker and x.marker.evaluate({'extra': 'cpu'})])"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert versions == [*pins, "True"], f"{PINS_PYTHON}: torch, transformers, no verl-stable = {versions}; pins {pins}"

    tree = tmp_path / "verl"
    subprocess.run(["git", "clone", "-q", str(patched_tree), str(tree)], check=True)
    (tree / "pytest.ini").write_text(PYTEST_INI)
    series = [t for t in _series_tests() if (tree / t).exists()]
    env = _env(PYTHONPATH=f"{tree}{os.pathsep}{Path(__file__).parent}", STATE_GUARD_PATHS=os.pathsep.join(series))
    start = time.monotonic()
    res = subprocess.run(
        [str(PINS_PYTHON), "-m", *COMMAND, "-p", "process_state_guard", "-p", "no:cacheprovider", "-q"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=LIMIT_S,
    )  # fmt: skip
    took = time.monotonic() - start
    tail = res.stdout[-12000:] + res.stderr[-3000:]
    assert res.returncode == 0, f"verl's CPU job failed after {took:.0f} s:\n{tail}"
    summary = res.stdout.strip().splitlines()[-1]
    print(f"verl's CPU job on the patched tree: {summary} (wall {took:.0f} s of verl's {LIMIT_S} s)")
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


def test_the_guard_fails_a_module_that_leaks_state(tmp_path):
    (tmp_path / "test_leaks_on_cpu.py").write_text(textwrap.dedent("""
        import os
        def test_sets_a_variable():
            os.environ["LEAKED_BY_A_TEST"] = "1"
        def test_next_in_the_same_module():
            pass
    """))
    (tmp_path / "test_clean_on_cpu.py").write_text("def test_clean():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "STATE_GUARD_PATHS": "test_leaks_on_cpu.py"}
    env.pop("LEAKED_BY_A_TEST", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "process_state_guard", "-p", "no:cacheprovider", "-q",
                          "-x", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1, res.stdout
    assert "changed process state" in res.stdout and "LEAKED_BY_A_TEST" in res.stdout, res.stdout
    # the leaking module's last test errors at teardown; the clean module is not blamed
    assert "ERROR test_leaks_on_cpu.py::test_next_in_the_same_module" in res.stdout, res.stdout
    assert "3 passed" in res.stdout and "1 error" in res.stdout and "test_clean_on_cpu.py::" not in res.stdout
