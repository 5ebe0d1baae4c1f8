"""scripts/slurm/verl_stable.sbatch without Slurm: DRY_RUN=1 prints every command (multi-node layout included),
refuses an unknown recipe, and the scripts are shellcheck-clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "verl_stable.sbatch"


def _dry(*args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(SBATCH), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, "DRY_RUN": "1", "VERL_STABLE_ROOT": str(ROOT), **env})


def test_dry_run_prints_every_command_for_a_multi_node_recipe(tmp_path):
    p = _dry("recipes/qwen3_30b_a3b/qwen3_30b_a3b.yaml", "backend=megatron", "offpolicy=n4",
             RUN_DIR=str(tmp_path / "run"), GPUS_PER_NODE="8", CONTAINER="apptainer:/img/verl.sif")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "+ on node-1: ray start --head" in out and "--num-gpus=8" in out
    assert "+ on node-2: ray start --address=node-1:6379" in out
    assert "2 node(s) and 16 GPU(s)" in out
    assert "verl_stable.cli doctor --address node-1:6379 --every-node" in out
    assert "apptainer exec --nv /img/verl.sif" in out
    train = next(line for line in out.splitlines() if "verl_stable.main" in line)
    assert f"--config-path={ROOT}/recipes/qwen3_30b_a3b --config-name=qwen3_30b_a3b" in train
    assert f"trainer.default_local_dir={tmp_path}/run/checkpoints trainer.resume_mode=auto" in train
    assert train.rstrip().endswith(f"backend=megatron offpolicy=n4  > {tmp_path}/run/logs/train-0.log")
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_unknown_recipe_and_container_are_refused():
    p = _dry("recipes/nope")
    assert p.returncode == 1 and "recipe" in p.stderr and "nope.yaml not found" in p.stderr
    p = _dry("recipes/smoke/smoke", CONTAINER="docker:x")
    assert p.returncode == 1 and "CONTAINER=docker:x" in p.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/ci_system_deps.sh)")
def test_scripts_are_shellcheck_clean():
    scripts = [SBATCH, ROOT / "scripts" / "ci_system_deps.sh", ROOT / ".ci" / "run"]
    p = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
