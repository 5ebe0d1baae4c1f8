#!/usr/bin/env bash
# The first-node check: on one 8-GPU node, the smoke recipe for three steps each of minirl, minirl + R2 and
# minirl + R3 (vLLM), then one verdict line per check (PASS / FAIL / SKIP with the reason); exit 1 on any FAIL.
#
#   scripts/first_node_check.sh data.train_files=... data.val_files=... [--backend megatron] [hydra overrides]
#   VERL_PLATFORM=cpu scripts/first_node_check.sh      # the CPU recipe (tiny MoE, hf_cpu rollout): the GPU-only checks SKIP
#
# Options: --run-dir DIR (logs + metrics, default runs/first_node), --steps N (3), --backend fsdp|megatron, --verbose.
# The checks and how they read verl's metrics: verl_stable/apps/first_node.py. PYTHON: interpreter with verl-stable
# (default: the repo's .venv if there, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ "${VERL_PLATFORM:-}" != cpu ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "[first-node] error: no nvidia-smi on $(hostname): run on a GPU node, or VERL_PLATFORM=cpu for the CPU path" >&2
    exit 2
fi
cd "$ROOT"
exec "$PYTHON" -m verl_stable.apps.first_node "$@"
