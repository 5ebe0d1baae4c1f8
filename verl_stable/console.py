"""A readable console for verl runs: verl's full output to a log file, one compact line per step on screen.

verl prints its whole config (~900 lines), a metrics dict per step and the output of every Ray process;
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
from pathlib import Path
from typing import Callable, Optional, Sequence

#: (column title, metric keys tried in order, format). The compact step line and the final table.
COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", ("critic/score/mean",), "{:.3f}"),
    ("val_acc", ("val-core/addition/acc/mean@1", "val-core/addition/reward/mean@1"), "{:.3f}"),
    ("pg_loss", ("actor/pg_loss",), "{:+.4f}"),
    ("clipfrac", ("actor/pg_clipfrac",), "{:.3f}"),
    # k3 (non-negative, low variance) rather than verl's k1 rollout_corr/kl, which is negative on small batches
    ("train_infer_kl", ("rollout_corr/k3_kl", "rollout_corr/kl"), "{:.2e}"),
    ("route_mismatch", ("actor/routing/old_pass/tokens_mismatch_any_layer",), "{:.2%}"),
    ("entropy", ("actor/entropy",), "{:.3f}"),
    ("step_s", ("timing_s/step",), "{:.1f}"),
)

_VAL_ACC = re.compile(r"^val-core/.*/(acc|reward)/mean@\d+$")


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


def _value(data: dict, keys: Sequence[str]):
    for key in keys:
        if key in data:
            return data[key]
    if keys and keys[0].startswith("val-core/"):  # any task's validation accuracy
        for key, value in data.items():
            if _VAL_ACC.match(key):
                return value
    return None


def _cell(value, fmt: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value) if math.isfinite(value) else str(value)
    return "-"


def step_line(row: dict, total_steps: Optional[int] = None) -> str:
    """``step 2/3  reward 0.094  pg_loss -0.0123  clipfrac 0.000  train_infer_kl 1.2e-05  step_s 2.4``."""
    data = row.get("data", row)
    step = row.get("step", "?")
    parts = [f"step {step}/{total_steps}" if total_steps else f"step {step}"]
    for title, keys, fmt in COLUMNS:
        value = _value(data, keys)
        if value is not None:
            parts.append(f"{title} {_cell(value, fmt)}")
    return "  ".join(parts)


def summary_table(rows: list[dict]) -> str:
    """A per-step table of :data:`COLUMNS` (columns no step reported are left out)."""
    present = [(t, k, f) for t, k, f in COLUMNS if any(_value(r.get("data", r), k) is not None for r in rows)]
    widths = [max(len(t), 9) for t, _, _ in present]
    lines = ["step  " + "  ".join(f"{t:>{w}}" for (t, _, _), w in zip(present, widths))]
    for row in rows:
        data = row.get("data", row)
        cells = [f"{_cell(_value(data, k), f):>{w}}" for (_, k, f), w in zip(present, widths)]
        lines.append(f"{row.get('step', '?'):>4}  " + "  ".join(cells))
    return "\n".join(lines)


def last_error(log_path: str | Path, max_lines: int = 12) -> list[str]:
    """The lines that say why a run failed: verl-stable's refusal, else the last exception of the log."""
    lines = Path(log_path).read_text(errors="replace").splitlines() if Path(log_path).exists() else []
    for i, line in enumerate(lines):
        if line.startswith("verl-stable: refused before start-up"):
            return lines[i : i + max_lines]
    exc = re.compile(r"^(?:\(\w+[^)]*\)\s*)?([A-Za-z_.]+(?:Error|Exception)|[A-Za-z_.]+Exit):")
    found = [line for line in lines if exc.match(line.strip())]
    if found:
        return found[-3:]
    return lines[-max_lines:]


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
) -> int:
    """Run ``cmd`` with stdout+stderr in ``log_path`` (and on the console if ``verbose``), calling
    ``on_row`` for every new row verl's file logger writes to ``metrics_path``. Returns the exit status.

    The command runs in its own session; Ctrl-C (or an error here) stops it with SIGINT, on which Ray's
    driver shuts down the local cluster it started.
    """
    seen = 0

    def pump(stream, log) -> None:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
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
        reader = threading.Thread(target=pump, args=(proc.stdout, log), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                new_rows()
                time.sleep(poll_s)
        except BaseException:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            reader.join(timeout=10)
        new_rows()
    return proc.returncode
