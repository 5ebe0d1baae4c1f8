"""Faults injected into real CPU demo runs (``python -m verl_stable.apps.demo``: verl's trainer, Ray, the tiny MoE).
Each test says what must survive the fault and checks it; every one checks that no process of the run is left.

The run's processes are found the way the demo finds them: its process tree, remembered while it runs (never
by name, so other Ray clusters on the machine are never looked at).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from verl_stable.apps.console import read_metrics

pytestmark = pytest.mark.slow


class Demo:
    """One demo run in the background, its process tree remembered until it ends."""

    def __init__(self, run: Path, *args: str, steps: int = 1):
        env = {**os.environ, "STEPS": str(steps), "PROMPTS": "2"}
        env.pop("VERBOSE", None)
        self.run = run
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(run), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.seen: dict[int, tuple[float, str]] = {}

    def snapshot(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, (p.create_time(), " ".join(p.cmdline())))
        except psutil.Error:
            pass

    def wait_for(self, ready, timeout: float = 400) -> None:
        end = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended before the fault: {self.proc.stdout.read()}"
            assert time.monotonic() < end, "timed out waiting for the run to get there"
            self.snapshot()
            time.sleep(0.2)
        self.snapshot()

    def log_has(self, text: str):
        log = self.run / "train.log"
        return lambda: log.exists() and text in log.read_text(errors="replace")

    def rows(self, n: int):
        return lambda: len(read_metrics(self.run / "metrics.jsonl")) >= n

    def finish(self, timeout: float = 400) -> tuple[int, str]:
        """Wait for the end, remembering the tree meanwhile (the console's output is short: the pipe never fills)."""
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.snapshot()
            time.sleep(0.2)
        out, _ = self.proc.communicate(timeout=max(1.0, end - time.monotonic()))
        return self.proc.returncode, out

    def left_running(self) -> list[str]:
        time.sleep(1)
        alive = []
        for pid, (created, cmd) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {cmd[:100]}")
            except psutil.NoSuchProcess:
                continue
        return alive


def _ray_actor(demo: Demo, name: str) -> psutil.Process:
    titles = []
    for pid, (created, _) in demo.seen.items():
        try:  # Ray renames a worker's process title to ray::<Actor> once the actor lives: read it now
            p = psutil.Process(pid)
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.create_time() == created and title.startswith(f"ray::{name}"):
            return p
        titles.append(title[:40])
    raise AssertionError(f"no ray::{name} process in the run's tree: {titles}")


@pytest.mark.parametrize("phase", ["setup", "ray start-up", "training"])
def test_ctrl_c_stops_cleanly_at_every_phase(tmp_path, phase):
    """Must survive: nothing of the run keeps running; one line, exit 130, no traceback, within a few seconds;
    mid-training, the steps already done stay in metrics.jsonl."""
    demo = Demo(tmp_path / "run", steps=2)
    if phase == "setup":
        demo.wait_for(lambda: (tmp_path / "run" / "data").exists(), timeout=120)
    elif phase == "ray start-up":
        demo.wait_for(demo.log_has("ray init kwargs"))
    else:
        demo.wait_for(demo.rows(1))
    sent = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    rc, out = demo.finish(timeout=60)
    stop_s = time.monotonic() - sent
    assert rc == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert [line for line in out.splitlines() if "interrupted (Ctrl-C)" in line], out
    assert stop_s < 15, f"stopping took {stop_s:.1f} s"
    assert demo.left_running() == []
    if phase == "training":
        assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_a_killed_worker_fails_the_run_with_the_cause_named(tmp_path):
    """Kill the training worker (verl's WorkerDict actor) during step 2. Must survive: step 1's metrics row;
    the console names a killed/dead worker (not a replay-buffer hint); no process of the run left."""
    demo = Demo(tmp_path / "run", steps=3)
    demo.wait_for(demo.rows(1))
    _ray_actor(demo, "WorkerDict").kill()
    rc, out = demo.finish()
    assert rc != 0, out
    assert "sync_refill_failed_groups" not in out, out
    assert "ActorDied" in out or "died" in out.lower() or "killed" in out.lower(), out
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert demo.left_running() == []


def test_a_run_dir_deleted_mid_run_is_said_and_its_log_not_pointed_at(tmp_path):
    """Delete the run dir once Ray is up. Must survive: the console's truth -- it says the dir was deleted
    and does not send the user to a train.log that no longer exists; no process of the run left."""
    run = tmp_path / "run"
    demo = Demo(run, steps=1)
    demo.wait_for(demo.log_has("ray init kwargs"))
    shutil.rmtree(run)
    rc, out = demo.finish()
    assert rc != 0, out
    assert "was deleted while the run was going" in out, out
    assert "full log:" not in out, out
    assert demo.left_running() == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MB tmpfs for checkpoints: one of the tiny model's (1.6 MB) fits, a second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_while_checkpointing_then_resume_then_rerun(tmp_path, small_disk):
    """Checkpoints every step on a disk with room for one. Must survive the full disk: step 1's checkpoint and
    metrics row, and the error says the disk is full. Then, with room, a resume trains step 2 only, reports it
    as a resume and exits 0 with step 1's row kept; a rerun at the checkpoint changes nothing and exits 0."""
    run = tmp_path / "run"
    ckpt = [f"trainer.default_local_dir={small_disk / 'ckpt'}", "trainer.save_freq=1"]
    demo = Demo(run, *ckpt, steps=2)
    rc, out = demo.finish(timeout=600)
    assert rc != 0, out
    # torch.save on a full disk says "iostream error": the console adds which disk is full
    assert f"the disk is full: {small_disk}" in out, out
    assert (small_disk / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    assert demo.left_running() == []

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    resume = Demo(run, *ckpt, steps=2)
    rc, out = resume.finish(timeout=600)
    assert rc == 0, out
    assert "resuming from the checkpoint at step 1" in out and "resumed at step 1, trained to step 2" in out, out
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert "resumed_from" not in rows[0] and rows[1]["resumed_from"] == 1
    assert "Traceback" in (run / "train.1.log").read_text()  # the failed run's log, kept

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    rc, out = Demo(run, *ckpt, steps=2).finish(timeout=120)
    assert rc == 0 and "nothing to do" in out, out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
