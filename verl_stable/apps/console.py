"""A readable console for verl runs: verl's full output to a log file, one compact line per step on screen.

verl prints its whole config (hundreds of lines), a metrics dict per step and the output of every Ray process;
that belongs in the log. :func:`run_logged` runs a launch command with its output in a log file, follows
verl's file logger (one JSON line per step) and hands each new step to a callback; :func:`step_line`
and :func:`summary_table` format the metrics that matter for MiniRL. ``verbose=True`` also streams the
full output to the console.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from verl_stable.losses import METRICS as LOSS_METRICS
from verl_stable.routing.agreement import METRICS as ROUTING_METRICS

# verl's own step metrics that the console and the lab read (verl logs them; nothing here produces them).
REWARD = "critic/score/mean"
PG_LOSS = "actor/pg_loss"
ENTROPY = "actor/entropy"
TRAIN_INFER_KL_K3 = "rollout_corr/k3_kl"
TRAIN_INFER_KL_K1 = "rollout_corr/kl"
STEP_TIME = "timing_s/step"
#: Stands for the held-out accuracy in a column's keys: the caller's :func:`val_keys`, else any task's.
HELD_OUT = "<held-out>"

#: (column title, metric keys tried in order, format). The compact step line and the final table.
COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", (REWARD,), "{:.3f}"),
    ("val_acc", (HELD_OUT,), "{:.3f}"),
    ("pg_loss", (PG_LOSS,), "{:+.4f}"),
    ("clipfrac", (LOSS_METRICS.CLIPFRAC,), "{:.3f}"),
    # k3 (non-negative, low variance) rather than verl's k1 rollout_corr/kl, which is negative on small batches
    ("train_infer_kl", (TRAIN_INFER_KL_K3, TRAIN_INFER_KL_K1), "{:.2e}"),
    (
        "route_mismatch",
        (ROUTING_METRICS.logged(ROUTING_METRICS.TOKENS_MISMATCH_ANY_LAYER, ROUTING_METRICS.OLD_PASS),),
        "{:.2%}",
    ),
    ("entropy", (ENTROPY,), "{:.3f}"),
    ("step_s", (STEP_TIME,), "{:.1f}"),
)

_VAL_ACC = re.compile(r"^val-core/.*/(acc|reward)/mean@\d+$")


def val_keys(data_source: str, n: int = 1) -> tuple[str, str]:
    """verl's held-out metrics for one data source (``val-core/{data_source}/{var}/mean@{n}``, n samples per
    prompt): accuracy when the scorer reports one, else the reward."""
    return (f"val-core/{data_source}/acc/mean@{n}", f"val-core/{data_source}/reward/mean@{n}")


def read_metrics(path: str | Path) -> list[dict]:
    """verl's file-logger rows (``{"step": n, "data": {...}}``); a half-written last line is skipped."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # still being written
    return rows


def _value(data: dict, keys: Sequence[str], held_out: Sequence[str] = ()):
    for key in keys:
        if key == HELD_OUT:
            for exact in held_out:
                if exact in data:
                    return data[exact]
            for name, value in data.items():  # any task's validation accuracy
                if _VAL_ACC.match(name):
                    return value
        elif key in data:
            return data[key]
    return None


def _cell(value, fmt: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value) if math.isfinite(value) else str(value)
    return "-"


def step_line(row: dict, total_steps: Optional[int] = None, held_out: Sequence[str] = ()) -> str:
    """``step 2/3  reward 0.094  pg_loss -0.0123  clipfrac 0.000  train_infer_kl 1.2e-05  step_s 2.4``.
    ``held_out``: the task's :func:`val_keys` (without, the first ``val-core/.../mean@k`` the row has)."""
    data = row.get("data", row)
    step = row.get("step", "?")
    parts = [f"step {step}/{total_steps}" if total_steps else f"step {step}"]
    for title, keys, fmt in COLUMNS:
        value = _value(data, keys, held_out)
        if value is not None:
            parts.append(f"{title} {_cell(value, fmt)}")
    return "  ".join(parts)


def summary_table(rows: list[dict], held_out: Sequence[str] = ()) -> str:
    """A per-step table of :data:`COLUMNS` (columns no step reported are left out); ``held_out`` as in
    :func:`step_line`."""
    present = [
        (t, k, f) for t, k, f in COLUMNS if any(_value(r.get("data", r), k, held_out) is not None for r in rows)
    ]
    widths = [max(len(t), 9) for t, _, _ in present]
    lines = ["step  " + "  ".join(f"{t:>{w}}" for (t, _, _), w in zip(present, widths))]
    for row in rows:
        data = row.get("data", row)
        cells = [f"{_cell(_value(data, k, held_out), f):>{w}}" for (_, k, f), w in zip(present, widths)]
        lines.append(f"{row.get('step', '?'):>4}  " + "  ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the cause
#: Ray's prefix on lines from its actors and workers: ``(TaskRunner pid=123)``, ``(WorkerDict pid=4, ip=1.2.3.4)``.
_RAY_PREFIX = re.compile(r"^\((?:raylet|[A-Za-z_][\w.]*)(?: pid=\d+)?(?:, ip=[\d.]+)?\)\s?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?$')
_EXC_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning|Full|Died|Failure)"
    r"(?:\([\w.]*\))?)(?::\s?(?P<msg>.*))?$"
)
#: Exceptions that report another one (Ray's wrappers, the trainer noticing that rollouts failed): never the cause
#: while a real exception is in the log.
_SYMPTOMS = (
    re.compile(r"^ray\.exceptions\.|^Ray(Task|Actor)Error|ActorDiedError|ActorUnavailableError|RaySystemError"),
    re.compile(r"^(SystemExit|KeyboardInterrupt)$"),
)
_SYMPTOM_MESSAGES = (
    re.compile(r"Sync replay buffer selected terminal groups with no materializable trajectories"),
    re.compile(r"The actor died|actor died unexpectedly|Worker exit type|The worker died"),
)


@dataclass(frozen=True)
class Cause:
    """The first real exception of a failed run: where it was raised, what it says, and where to look."""

    type: str
    message: str
    file: Optional[str] = None
    line: Optional[int] = None
    hint: Optional[str] = None

    def lines(self) -> list[str]:
        where = f" ({self.file}:{self.line})" if self.file else ""
        out = [f"{self.type}: {self.message}{where}"]
        if self.hint:
            out.append(f"look at: {self.hint}")
        return out


#: (pattern on "type: message" or the raising file, what to look at). First match wins.
_HINTS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"No space left on device|Disk quota exceeded|\[Errno 28\]|File too large|\[Errno 27\]"),
     "the disk is full: free space where the run writes (trainer.default_local_dir for checkpoints, the run dir)"),
    # torch.topk in a MoE gate asked for more experts than exist
    # torch.save on a full disk says only this (the C++ stream's error, no errno)
    (re.compile(r"basic_ios::clear|iostream error|PytorchStreamWriter failed writing"),
     "writing a file failed (torch.save): a full disk or a path that cannot be written "
     "(trainer.default_local_dir for checkpoints)"),
    (re.compile(r"num_experts_per_tok|num_experts|top_?k.*expert|expert.*top_?k|selected index k out of range",
                re.I),
     "the model's config.json (actor_rollout_ref.model.path): num_experts_per_tok must be <= num_experts"),
    (re.compile(r"KeyError: '(ground_truth|reward_model|data_source)'"),
     "the data's reward_model.ground_truth column (data.train_files / data.val_files) and the reward function "
     "(reward.custom_reward_function.path)"),
    (re.compile(r"KeyError: '(prompt|[\w]*prompt[\w]*)'"), "the data's prompt column (data.prompt_key, data.train_files)"),
    (re.compile(r"\[Errno 2\] No such file or directory"),
     "a path that does not exist (data.train_files, actor_rollout_ref.model.path, or a run dir deleted mid-run)"),
    (re.compile(r"(out of memory|OutOfMemory|MemoryError|OOM)", re.I),
     "memory: smaller data.train_batch_size / ppo_micro_batch_size_per_gpu, or fewer processes on this machine"),
    (re.compile(r"SIGKILL|killed|signal 9|exit code -9|SIGSEGV|ActorDiedError|died unexpectedly", re.I),
     "a process of the run died or was killed (out of memory, by hand, a crash): dmesg and the Ray worker "
     "logs say which"),
    (re.compile(r"reward|compute_score", re.I), "the reward function (reward.custom_reward_function.path / .name)"),
    (re.compile(r"/(datasets?|rl_dataset)\.py|parquet", re.I), "the data files (data.train_files / data.val_files)"),
    (re.compile(r"/transformers/models/|from_pretrained|config\.json"), "the model (actor_rollout_ref.model.path)"),
)


def _hint(text: str) -> Optional[str]:
    for pattern, hint in _HINTS:
        if pattern.search(text):
            return hint
    return None


def _is_symptom(exc_type: str, message: str) -> bool:
    return any(p.search(exc_type) for p in _SYMPTOMS) or any(p.search(message) for p in _SYMPTOM_MESSAGES)


def find_cause(log_text: str) -> Optional[Cause]:
    """The first real exception of a verl log: the first Python traceback whose exception is not a wrapper or a
    downstream symptom (Ray's ``RayTaskError``/``ActorDiedError``, the replay buffer finding no trajectories
    because every rollout failed), with the frame that raised it and a hint naming the key to look at.

    Tracebacks interleave with other processes' output and carry Ray's ``(Actor pid=N)`` prefix and colours. A
    traceback's frames are the ``File "...", line N`` lines after its header; it ends at the first unindented
    ``Type: message`` line -- except Ray's ``RayTaskError(KeyError): ray::Actor.method()`` line, after which the
    remote process's frames and its real exception follow. When only symptoms are found, the first symptom is
    the cause. None when the log has no exception at all.
    """
    lines = [_RAY_PREFIX.sub("", _ANSI.sub("", raw).rstrip("\r")) for raw in log_text.splitlines()]
    found: list[Cause] = []
    frame: Optional[tuple[str, int]] = None
    inside = False
    for n, text in enumerate(lines):
        if text.lstrip().startswith("Traceback (most recent call last):"):
            inside, frame = True, None
            continue
        if not inside:
            continue
        m = _FRAME.match(text)
        if m:
            frame = (m["file"], int(m["line"]))
            continue
        if frame is None or text[:1].isspace():
            continue
        e = _EXC_LINE.match(text.strip())
        if not e:
            continue
        exc_type, message = e["type"], (e["msg"] or "").strip()
        if exc_type.startswith("ray.exceptions.RayTaskError(") or exc_type.startswith("RayTaskError("):
            frame = None  # the remote traceback follows, headerless
            continue
        if not message and n + 1 < len(lines):  # a message that starts on the next line (Hydra's, pydantic's)
            message = lines[n + 1].strip()
        found.append(Cause(exc_type, message, frame[0], frame[1], _hint(f"{exc_type}: {message} {frame[0]}")))
        inside, frame = False, None
    if not found:
        # no traceback: a bare exception line (a worker's one-line error)
        for text in lines:
            e = _EXC_LINE.match(text.strip())
            if e and e["msg"]:
                return Cause(e["type"], e["msg"].strip(), hint=_hint(text))
        return None
    real = [c for c in found if not _is_symptom(c.type, c.message)]
    return real[0] if real else found[0]


def last_error(log_path: str | Path, max_lines: int = 12) -> list[str]:
    """The lines that say why a run failed: verl-stable's refusal, else the first real exception of the log
    (:func:`find_cause`), else the log's last lines. A log that no longer exists is said to be gone."""
    path = Path(log_path)
    if not path.exists():
        return [f"the log {path} no longer exists: the run directory {path.parent} was deleted or moved while "
                f"the run was going"]
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("verl-stable: refused before start-up"):
            return lines[i : i + max_lines]
    cause = find_cause("\n".join(lines))
    if cause is not None:
        return cause.lines()
    return lines[-max_lines:]


def full_disks(paths: Sequence[str | Path], min_free_bytes: int = 16 << 20) -> list[str]:
    """The filesystems among ``paths`` (or their nearest existing parent) with less than ``min_free_bytes`` free:
    a failure's message rarely says "disk full" itself (torch.save says "iostream error")."""
    import shutil

    full = []
    for path in paths:
        path = Path(path)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        if usage.free < min_free_bytes:
            full.append(f"{path}: {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB")
    return list(dict.fromkeys(full))


# ------------------------------------------------------------------------------------------- rotating, appending
def rotate(path: str | Path) -> Optional[Path]:
    """Keep an earlier run's file: ``train.log`` -> ``train.1.log``, ``train.1.log`` -> ``train.2.log`` ...
    (newest lowest). Returns where ``path`` went, None when there was nothing to keep."""
    path = Path(path)
    if not path.exists():
        return None
    stem, suffix = path.stem, path.suffix

    def numbered(n: int) -> Path:
        return path.with_name(f"{stem}.{n}{suffix}")

    n = 1
    while numbered(n).exists():
        n += 1
    for k in range(n, 1, -1):
        numbered(k - 1).rename(numbered(k))
    path.rename(numbered(1))
    return numbered(1)


def append_rows(path: str | Path, rows: Sequence[dict], **fields) -> None:
    """Append verl's rows to a metrics file that keeps every run's rows, each with ``fields`` added (when the run
    started, the step it resumed from): verl's file logger truncates its file at every start."""
    if not rows:
        return
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**row, **fields}) + "\n")


class _RunTree:
    """The processes a launch started (the command, Ray's GCS and raylet, its workers), remembered while they run
    so that none outlives the run: Ray's processes leave the command's process group and some are reparented
    when their parent dies. Each is known by (pid, create time), so a reused pid is never touched."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.known: dict[int, float] = {}

    def snapshot(self) -> None:
        try:
            import psutil

            root = psutil.Process(self.root_pid)
            for p in [root, *root.children(recursive=True)]:
                self.known.setdefault(p.pid, p.create_time())
        except Exception:  # the root just exited, or psutil is missing: what was seen stays known
            pass

    def alive(self) -> list:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ray[default]
            return []
        procs = []
        for pid, created in self.known.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    procs.append(p)
            except Exception:
                continue
        return procs

    def kill(self, sig: int = signal.SIGKILL) -> int:
        procs = self.alive()
        for p in procs:
            try:
                p.send_signal(sig)
            except Exception:
                pass
        return len(procs)


def _stop(proc: subprocess.Popen, tree: _RunTree, grace_s: float) -> None:
    """SIGINT to the command's group (Ray's driver shuts its cluster down), SIGTERM after ``grace_s``, then
    SIGKILL for everything of the run still alive. A second Ctrl-C skips to SIGKILL."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    tree.snapshot()  # what started since the last poll
    try:
        signal_group(signal.SIGINT)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            # ray.init ignores SIGINT while it waits for its GCS (up to 30 s): ask harder
            tree.snapshot()
            signal_group(signal.SIGTERM)
            proc.wait(timeout=1)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        tree.snapshot()
        signal_group(signal.SIGKILL)
        tree.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass


def run_logged(
    cmd: Sequence[str],
    *,
    log_path: str | Path,
    metrics_path: str | Path,
    on_row: Callable[[dict], None],
    env: Optional[dict] = None,
    cwd: Optional[str | Path] = None,
    verbose: bool = False,
    poll_s: float = 0.5,
    stop_grace_s: float = 3.0,
) -> int:
    """Run ``cmd`` with stdout+stderr in ``log_path`` (and on the console if ``verbose``), calling
    ``on_row`` for every new row verl's file logger writes to ``metrics_path``. Returns the exit status.

    The command runs in its own session; Ctrl-C (or an error here) stops it with SIGINT, on which Ray's
    driver shuts down the local cluster it started, and within a few seconds harder (:func:`_stop`). However
    it ends, no process it started is left running.
    """
    seen = 0

    def pump(stream, log) -> None:
        for raw in iter(stream.readline, b""):
            try:
                log.write(raw)
                log.flush()
            except OSError:  # disk full: keep draining so the run is not blocked on a full pipe
                pass
            if verbose:
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()

    def new_rows() -> None:
        nonlocal seen
        rows = read_metrics(metrics_path)
        for row in rows[seen:]:
            on_row(row)
        seen = max(seen, len(rows))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        tree = _RunTree(proc.pid)
        reader = threading.Thread(target=pump, args=(proc.stdout, log), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                tree.snapshot()
                new_rows()
                time.sleep(poll_s)
        except BaseException:
            _stop(proc, tree, stop_grace_s)
            raise
        finally:
            reader.join(timeout=10)
            # a failed run's Ray workers can outlive the driver by seconds to minutes: none of them survives it
            tree.kill()
        new_rows()
    return proc.returncode


# ------------------------------------------------------------------------------------- running verl's trainer
def trainer_env(metrics_path: str | Path) -> dict:
    """The environment of a ``python -m verl_stable.main`` run on CPU: this one, plus verl-stable's CPU
    platform, verl's file logger pointed at ``metrics_path`` and quiet tokenizers."""
    from verl_stable.cpu import CPU_RAY_ENV

    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil comes with ray[default]
        cores = os.cpu_count() or 1
    env = {
        **os.environ,
        **CPU_RAY_ENV,
        "VERL_FILE_LOGGER_PATH": str(metrics_path),
        "TOKENIZERS_PARALLELISM": "false",
    }
    # TransferQueue asks torch for 8 threads and warns many times a step when the machine has fewer physical
    # cores; asking for what exists silences it at the source.
    env.setdefault("TQ_NUM_THREADS", str(min(8, cores)))
    env.setdefault("RAY_DEDUP_LOGS", "1")
    return env


def run_trainer(
    overrides: Sequence[str],
    *,
    cwd: str | Path,
    log_path: str | Path,
    metrics_path: str | Path,
    on_row: Callable[[dict], None],
    verbose: bool = False,
    env: Mapping[str, str] | None = None,
) -> int:
    """``python -m verl_stable.main <overrides>`` in ``cwd`` through :func:`run_logged`, in
    :func:`trainer_env` plus ``env``; ``on_row`` gets each step's metrics row. Returns the exit status."""
    return run_logged(
        [sys.executable, "-m", "verl_stable.main", *overrides],
        log_path=log_path,
        metrics_path=metrics_path,
        on_row=on_row,
        env={**trainer_env(metrics_path), **(env or {})},
        cwd=cwd,
        verbose=verbose,
    )


def print_failure(log_path: str | Path, *, indent: str = "  ", disks: Sequence[str | Path] = ()) -> None:
    """After a failed run, to stderr: the cause read from its log (:func:`last_error`), then each of ``disks``
    that is full."""
    for line in last_error(log_path):
        print(f"{indent}{line}", file=sys.stderr)
    for disk in full_disks(disks) if disks else ():
        print(f"{indent}the disk is full: {disk}", file=sys.stderr)
