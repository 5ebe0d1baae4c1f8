"""A run's record: nothing an earlier run wrote is lost, the true cause of a failure is named, small console
promises hold. Fast checks only (no Ray); the end-to-end runs are in test_run_faults_on_cpu.py.

The log excerpts under tests/plugin/logs/ are real verl 0.9.1 output of the CPU demo (venv and run paths shortened).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path


from verl_stable.apps import console
from verl_stable.apps.demo import checkpointed_step
from verl_stable.lab.report import NULL_MEANS, finite_or_null

LOGS = Path(__file__).parent / "logs"


# ----------------------------------------------------------------------------------------------- the true cause
def test_reward_keyerror_is_named_not_the_replay_buffer_hint():
    """A data file without reward_model.ground_truth: every rollout's reward fails in the reward worker, and
    the trainer then fails with the replay buffer's "Enable ...sync_refill_failed_groups" -- wrong advice."""
    text = (LOGS / "reward_keyerror_v1.log").read_text()
    assert "sync_refill_failed_groups" in text  # the downstream symptom is in the excerpt
    cause = console.find_cause(text)
    assert cause.type == "KeyError" and cause.message == "'ground_truth'"
    assert cause.file.endswith("verl/experimental/reward_loop/reward_manager/naive.py") and cause.line == 43
    assert "ground_truth" in cause.hint and "data.train_files" in cause.hint
    assert "sync_refill" not in " ".join(cause.lines())


def test_top_k_above_the_expert_count_is_named():
    text = (LOGS / "topk_above_experts_v1.log").read_text()
    cause = console.find_cause(text)
    assert cause is not None and cause.file is not None and cause.line > 0
    assert cause.message == "selected index k out of range" and cause.file.endswith("modeling_qwen3_moe.py")
    assert "num_experts_per_tok" in cause.hint and "actor_rollout_ref.model.path" in cause.hint, cause
    assert "sync_refill" not in " ".join(cause.lines())


def test_the_first_real_exception_wins_over_later_ones_and_wrappers():
    log = "\n".join([
        "(TaskRunner pid=7) Traceback (most recent call last):",
        '(TaskRunner pid=7)   File "/x/reward.py", line 3, in compute_score',
        "(TaskRunner pid=7)     return gt[k]",
        "(TaskRunner pid=7) IndexError: list index out of range",
        "Traceback (most recent call last):",
        '  File "/x/main.py", line 9, in main',
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
        "Traceback (most recent call last):",
        '  File "/x/later.py", line 1, in f',
        "ValueError: later",
    ])
    cause = console.find_cause(log)
    assert (cause.type, cause.message, cause.file, cause.line) == ("IndexError", "list index out of range",
                                                                   "/x/reward.py", 3)
    assert "reward.custom_reward_function" in cause.hint


def test_only_symptoms_still_name_one_and_no_exception_names_none():
    died = "\n".join([
        "Traceback (most recent call last):",
        '  File "/x/worker.py", line 12, in get',
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. Worker exit type: "
        "SYSTEM_ERROR Worker exit detail: killed by SIGKILL",
    ])
    cause = console.find_cause(died)
    assert cause.type == "ray.exceptions.ActorDiedError" and "killed" in cause.hint
    bare = "Traceback (most recent call last):\n  File \"/x/base.py\", line 56, in get\n" \
           "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    assert "died or was killed" in console.find_cause(bare).hint
    assert console.find_cause("step 1 done\nall good\n") is None


def test_disk_full_says_disk_full():
    log = "\n".join([
        "Traceback (most recent call last):",
        '  File "/venv/torch/serialization.py", line 652, in save',
        "OSError: [Errno 28] No space left on device",
    ])
    assert "disk is full" in console.find_cause(log).hint


def test_torch_save_on_a_full_disk_is_named_and_the_full_disk_found(tmp_path):
    log = "\n".join([
        "Traceback (most recent call last):",
        '  File "/venv/torch/serialization.py", line 1312, in _save',
        "RuntimeError: basic_ios::clear: iostream error",
    ])
    assert "full disk" in console.find_cause(log).hint
    assert console.full_disks([tmp_path]) == []  # the test machine's disk has room
    assert console.full_disks([tmp_path / "not" / "yet"], min_free_bytes=1 << 62)[0].startswith(str(tmp_path))


def test_a_deleted_log_is_said_to_be_gone(tmp_path):
    lines = console.last_error(tmp_path / "gone" / "train.log")
    assert len(lines) == 1 and "no longer exists" in lines[0] and "deleted" in lines[0]


def test_a_refusal_in_the_log_is_shown_as_is(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("noise\nverl-stable: refused before start-up, 1 setting to fix:\n  a.b: bad\n")
    assert console.last_error(log) == ["verl-stable: refused before start-up, 1 setting to fix:", "  a.b: bad"]


# --------------------------------------------------------------------------------------------------- lose nothing
def test_rotate_keeps_every_earlier_file(tmp_path):
    log = tmp_path / "train.log"
    for run in range(3):
        console.rotate(log)
        log.write_text(f"run {run}")
    assert console.rotate(tmp_path / "missing.log") is None
    assert log.read_text() == "run 2"
    assert (tmp_path / "train.1.log").read_text() == "run 1"
    assert (tmp_path / "train.2.log").read_text() == "run 0"
    hydra = tmp_path / "hydra"
    hydra.mkdir()
    assert console.rotate(hydra) == tmp_path / "hydra.1" and (tmp_path / "hydra.1").is_dir()


def test_append_rows_keeps_earlier_rows_and_marks_the_resume(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    console.append_rows(metrics, [{"step": 1, "data": {"x": 1.0}}], run_started="a")
    console.append_rows(metrics, [{"step": 2, "data": {"x": 2.0}}], run_started="b", resumed_from=1)
    rows = console.read_metrics(metrics)
    assert [r["step"] for r in rows] == [1, 2]
    assert "resumed_from" not in rows[0] and rows[1]["resumed_from"] == 1 and rows[1]["run_started"] == "b"


def test_checkpointed_step_reads_verls_layout(tmp_path):
    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

    ckpt = tmp_path / "ckpt"
    base = [f"trainer.default_local_dir={ckpt}"]
    assert checkpointed_step(base, tmp_path) == (None, None)  # no tracker: from scratch
    ckpt.mkdir()
    Path(get_checkpoint_tracker_filename(str(ckpt))).write_text("3")
    assert checkpointed_step(base, tmp_path) == (None, None)  # tracker without its folder: verl starts over
    (ckpt / "global_step_3").mkdir()
    assert checkpointed_step(base, tmp_path) == (3, ckpt / "global_step_3")
    assert checkpointed_step([*base, "trainer.resume_mode=disable"], tmp_path) == (None, None)
    path = [*base, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={ckpt / 'global_step_2'}"]
    assert checkpointed_step(path, tmp_path)[0] == 2
    # a relative default_local_dir is relative to where verl runs (the run dir)
    assert checkpointed_step(["trainer.default_local_dir=ckpt"], tmp_path)[0] == 3


def test_a_rerun_at_the_checkpoint_says_so_and_touches_nothing(tmp_path):
    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    (ckpt / "global_step_2").mkdir(parents=True)
    Path(get_checkpoint_tracker_filename(str(ckpt))).write_text("2")
    (run / "metrics.jsonl").write_text('{"step": 1, "data": {}}\n{"step": 2, "data": {}}\n')
    (run / "train.log").write_text("the earlier run\n")
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")}
    proc = subprocess.run([sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(run), "--steps", "2"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "VERBOSE": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to do" in proc.stdout and "step 2" in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")} == before


# -------------------------------------------------------------------------------------------------- small things
def test_a_hydra_error_in_the_demo_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "verl_stable.apps.demo", "--run-dir", str(tmp_path / "run"), "trainer.no_such_key=1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "VERBOSE": ""},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "trainer.no_such_key" in errors[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_summary_json_holds_null_not_nan():
    summary = finite_or_null({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": (float("-inf"), 2)}})
    assert summary == {"a": None, "b": [1.0, None], "c": {"d": [None, 2]}}
    text = json.dumps({"null": NULL_MEANS, **summary}, allow_nan=False)

    def refuse(token):
        raise ValueError(token)

    assert json.loads(text, parse_constant=refuse)["a"] is None  # strict JSON: no NaN token anywhere
    assert math.isfinite(summary["b"][0])


def test_help_is_whole_and_quiet_doctor_claims_only_what_it_checked():
    from verl_stable import cli

    help_text = subprocess.run([sys.executable, "-m", "verl_stable.cli", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "lab --help)." in " ".join(help_text.split()), help_text
    proc = subprocess.run([sys.executable, "-m", "verl_stable.cli", "doctor", "--no-ray", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Ray" not in proc.stdout and "fresh interpreter" in proc.stdout, proc.stdout
    assert "Ray worker" in cli._ray_checked(type("A", (), {"address": None, "no_ray": False, "every_node": False}))


def test_a_lab_summary_with_unmeasured_metrics_is_strict_json(tmp_path):
    """A variant whose run reported only a reward: its held-out and KL summaries are NaN in memory, null on disk."""
    from verl_stable.lab import report
    from verl_stable.lab import variants as vt
    from verl_stable.lab.setup import default_setup

    variant = vt.grid(default_setup().cold_starts)[vt.QUICK_VARIANTS[0]]
    report.write(tmp_path, [variant], {variant.name: [{"step": 1, "data": {"critic/score/mean": 0.5}}]},
                 {"runs": [variant.name]})

    def refuse(token):
        raise ValueError(f"{token} in summary.json")

    saved = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert saved["null"] == NULL_MEANS and saved["variants"][variant.name]["heldout_last"] is None
    json.loads((tmp_path / "plots" / "data.json").read_text(), parse_constant=refuse)
