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
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[cpu,test,lab]"
.venv/bin/python -c "import torch, verl, verl_stable; print(f'[setup] ok: torch {torch.__version__}, verl {verl.__version__}, verl-stable {verl_stable.__version__}')"
