#!/usr/bin/env bash
# Creates .venv at the repo root with CPU torch (pinned) and verl-stable installed editable.
# Usage: bash scripts/setup.sh            (idempotent; safe to re-run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
LOG=.venv/setup.log
pip_install() {
    # pip's build backends are chatty; keep the log, show it only when something fails.
    if ! .venv/bin/python -m pip install --progress-bar off "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "[setup] pip install $* failed; full log: $ROOT/$LOG" >&2
        exit 1
    fi
}
: >"$LOG"
echo "[setup] installing into .venv (log: $LOG)"
pip_install --upgrade pip
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install -e ".[cpu,test,lab]"
.venv/bin/python -c "import torch, verl, verl_stable; print(f'[setup] ok: torch {torch.__version__}, verl {verl.__version__}, verl-stable {verl_stable.__version__}')"
