#!/usr/bin/env bash
# Sets up .venv and .venv-verl-cpu (scripts/setup.sh) and runs the whole CPU test suite. Extra args go to pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --with-verl-cpu-pins  # verl's CPU CI pins: tests/patches reproduces verl's CPU job there
# verl and Ray print a lot; keep the run readable and bounded (no test may hang CI).
export RAY_DEDUP_LOGS=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest tests --timeout=1200 -q "$@"
