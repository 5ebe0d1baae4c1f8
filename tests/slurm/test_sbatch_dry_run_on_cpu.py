"""scripts/slurm/verl_stable.sbatch without Slurm: DRY_RUN=1 prints every command (multi-node layout included),
passes the allocation's world size to verl or refuses a conflicting override before Ray, refuses a node without
GPUs, refuses an unknown recipe, and the scripts are shellcheck-clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "verl_stable.sbatch"


def _dry(*args, **env):
    # no SLURM_* of an enclosing job, no VERL_PLATFORM of the caller: each test says what it pretends
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("VERL_PLATFORM", "GPUS_PER_NODE")}
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


def _train_line(out: str) -> str:
    return next(line for line in out.splitlines() if "verl_stable.main" in line)


def test_the_job_asks_slurm_for_gpus():
    directives = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=8" in directives, directives


def test_a_two_node_allocation_becomes_verls_world_size(tmp_path):
    p = _dry("recipes/smoke/smoke", RUN_DIR=str(tmp_path / "run"), GPUS_PER_NODE="8")
    assert p.returncode == 0, p.stderr
    train = _train_line(p.stdout)
    assert "--config-name=smoke trainer.nnodes=2 trainer.n_gpus_per_node=8 " in train, train
    # every node's GPUs are checked before any Ray process starts
    out = p.stdout
    assert out.index("+ on node-2: nvidia-smi -L (expect 8 GPU(s))") < out.index("ray start --head")


def test_the_allocation_not_the_recipe_sets_nodes_and_gpus(tmp_path):
    # four nodes with four GPUs each (sbatch -N 4 --gpus-per-node=4): Slurm's SLURM_GPUS_ON_NODE is the count
    p = _dry("recipes/qwen3_30b_a3b/qwen3_30b_a3b", RUN_DIR=str(tmp_path / "run"), DRY_RUN_NODES="a b c d",
             SLURM_GPUS_ON_NODE="4")
    assert p.returncode == 0, p.stderr
    assert "trainer.nnodes=4 trainer.n_gpus_per_node=4 " in _train_line(p.stdout)
    assert "4 node(s) and 16 GPU(s)" in p.stdout
    # an override that agrees with the allocation is kept
    p = _dry("recipes/smoke/smoke", "trainer.nnodes=2", "++trainer.n_gpus_per_node=8", GPUS_PER_NODE="8",
             RUN_DIR=str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("override, named", [
    ("trainer.nnodes=8", "trainer.nnodes=8 in the overrides, but the allocation has 2 node(s)"),
    ("+trainer.nnodes=1", "trainer.nnodes=1 in the overrides, but the allocation has 2 node(s)"),
    ("trainer.n_gpus_per_node=4", "trainer.n_gpus_per_node=4 in the overrides, but the allocation has 8 GPU(s) per node"),
])
def test_an_override_that_disagrees_with_the_allocation_is_refused_before_ray(override, named):
    p = _dry("recipes/smoke/smoke", "backend=fsdp", override, GPUS_PER_NODE="8")
    assert p.returncode == 1
    assert named in p.stderr, p.stderr
    assert "ray start" not in p.stdout and "verl_stable.main" not in p.stdout


def test_no_gpu_is_refused_outside_cpu_platform(tmp_path):
    # this machine has no nvidia-smi and no Slurm GPU variables: the head counts 0 GPUs
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    env = {"PATH": f"{bare_path}:/usr/bin:/bin"}
    assert shutil.which("nvidia-smi", path=env["PATH"]) is None
    p = _dry("recipes/smoke/smoke", **env)
    assert p.returncode == 1
    assert "no GPU on" in p.stderr and "--gpus-per-node" in p.stderr and "VERL_PLATFORM=cpu" in p.stderr, p.stderr
    assert "ray start" not in p.stdout
    p = _dry("recipes/smoke/smoke", GPUS_PER_NODE="eight")
    assert p.returncode == 1 and "GPUS_PER_NODE=eight is not a number" in p.stderr
    # on CPU, one logical GPU slot per node (verl's placement groups ask for GPUs), and no nvidia-smi check
    p = _dry("recipes/cpu/tiny_moe", VERL_PLATFORM="cpu", RUN_DIR=str(tmp_path / "run"), **env)
    assert p.returncode == 0, p.stderr
    assert "trainer.nnodes=2 trainer.n_gpus_per_node=1 " in _train_line(p.stdout)
    assert "nvidia-smi" not in p.stdout


def test_unknown_recipe_and_container_are_refused():
    p = _dry("recipes/nope")
    assert p.returncode == 1 and "recipe" in p.stderr and "nope.yaml not found" in p.stderr
    p = _dry("recipes/smoke/smoke", CONTAINER="docker:x")
    assert p.returncode == 1 and "CONTAINER=docker:x" in p.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/ci_system_deps.sh)")
def test_scripts_are_shellcheck_clean():
    scripts = [SBATCH, ROOT / "scripts" / "ci_system_deps.sh", ROOT / "scripts" / "first_node_check.sh", ROOT / ".ci" / "run"]
    p = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
