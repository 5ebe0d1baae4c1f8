"""scripts/slurm/verl_stable.sbatch on a real (single-node, localhost) Slurm: the CPU recipe (tiny MoE,
VERL_PLATFORM=cpu) through sbatch -> Ray head -> doctor on the running cluster -> verl's trainer; a requeued
job that resumes from its checkpoint; and a GPU job on this GPU-less node, refused before Ray. Skipped, with the
reason, where Slurm or root is missing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.localslurm import LocalSlurm, _free_port, missing

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "verl_stable.sbatch"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def _submit(slurm, run_dir: Path, *overrides, platform: str = "cpu", **extra_env) -> int:
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "VERL_PLATFORM": platform, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
        "PATH": f"{venv_bin}:/usr/bin:/bin:/usr/sbin:/sbin", "RUN_DIR": str(run_dir), "VERL_STABLE_RUN_DIR": str(run_dir),
        "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"),
        "PREPARE": f"{sys.executable} -m verl_stable.tasks.addition {run_dir}", "CPUS_PER_NODE": "8",
        "JOIN_TIMEOUT": "180", "RAY_PORT": str(_free_port()), "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1", "VERL_STABLE_ROOT": str(ROOT),
    }
    # the script asks for 8 GPUs a node; this node has none, and sbatch's own flag wins over the #SBATCH line
    return slurm.sbatch([f"--output={run_dir}/slurm-%j.out", "--chdir", str(run_dir), "--gpus-per-node=0", str(SBATCH),
                         "recipes/cpu/tiny_moe", *overrides], {**env, **extra_env})


def _steps(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]


def _why(run_dir: Path, slurm) -> str:
    parts = [f.read_text(errors="replace")[-3000:] for f in sorted(run_dir.glob("slurm-*.out"))]
    parts += [f.read_text(errors="replace")[-3000:] for f in sorted((run_dir / "logs").glob("train-*.log"))]
    return "\n".join(parts) + slurm.logs()[-2000:]


def test_cpu_recipe_runs_through_sbatch_with_doctor_on_the_ray_cluster(slurm, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _submit(slurm, run_dir, "trainer.total_training_steps=2")
    state = slurm.wait_done(job, timeout=900)
    assert state == "COMPLETED", _why(run_dir, slurm)
    assert _steps(run_dir / "metrics.jsonl") == [1, 2], _why(run_dir, slurm)
    doctor = (run_dir / "logs" / "doctor.txt").read_text()
    assert "[ok  ] 1 node(s) of the Ray cluster" in doctor and "[FAIL]" not in doctor, doctor
    out = next(run_dir.glob("slurm-*.out")).read_text()
    assert "Ray cluster up: 1 node(s), 1 GPU(s)" in out, out


def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _submit(slurm, run_dir, "trainer.total_training_steps=3", "trainer.save_freq=1")
    ckpt = run_dir / "checkpoints"
    deadline = time.monotonic() + 900
    while not (ckpt / "global_step_1").exists():
        assert time.monotonic() < deadline and slurm.state(job) in ("PENDING", "RUNNING"), _why(run_dir, slurm)
        time.sleep(2)
    time.sleep(5)  # let the checkpoint finish writing (verl writes latest_checkpointed_iteration.txt last)
    subprocess.run(["scontrol", "requeue", str(job)], env=slurm.env, check=True)
    state = slurm.wait_done(job, timeout=900)
    if state != "COMPLETED":  # a requeued job goes PENDING first; wait_done returns only at a final state
        pytest.fail(_why(run_dir, slurm))
    assert (run_dir / "logs" / "train-1.log").exists(), _why(run_dir, slurm)
    resumed = (run_dir / "logs" / "train-1.log").read_text()
    # verl's v1 trainer: "Resuming from <dir>/global_step_k, ..."; its legacy loop: "Load from checkpoint folder: ..."
    loaded = re.search(r"(?:Resuming from|Load from checkpoint folder:) (\S*global_step_(\d+))", resumed)
    assert loaded and Path(loaded.group(1)).parent == ckpt, resumed[-3000:]
    k = int(loaded.group(2))
    # the second run continued after step k (verl's logger restarts its file: the launcher kept the first one)
    assert _steps(run_dir / "metrics.jsonl") == list(range(k + 1, 4)), _why(run_dir, slurm)
    assert _steps(run_dir / "metrics.restart-0.jsonl")[:k] == list(range(1, k + 1))
    assert (ckpt / "global_step_3").exists()


def test_a_gpu_job_on_a_node_without_gpus_is_refused_before_ray(slurm, tmp_path):
    # outside VERL_PLATFORM=cpu: the head counts no GPU (no SLURM_GPUS_ON_NODE, no nvidia-smi) ...
    run_dir = tmp_path / "head"
    run_dir.mkdir()
    job = _submit(slurm, run_dir, platform="gpu")
    assert slurm.wait_done(job, timeout=300) == "FAILED", _why(run_dir, slurm)
    out = next(run_dir.glob("slurm-*.out")).read_text()
    assert "[slurm] error: no GPU on" in out and "ray start" not in out, out
    # ... and with a GPU count forced, the per-node check (nvidia-smi inside the job, via srun) finds none
    run_dir = tmp_path / "node"
    run_dir.mkdir()
    job = _submit(slurm, run_dir, platform="gpu", GPUS_PER_NODE="1")
    assert slurm.wait_done(job, timeout=300) == "FAILED", _why(run_dir, slurm)
    out = next(run_dir.glob("slurm-*.out")).read_text()
    assert f"[slurm] error: node {slurm.host} shows no GPU" in out and "ray start" not in out, out
    assert not (run_dir / "logs").exists()  # refused before anything was written
