#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, check the plugin loads (driver + Ray worker), then run
# `python -m verl_stable.main algorithm=minirl` end to end on CPU through verl's real trainer (tiny MoE,
# hf_cpu rollout, FSDP2 engine over gloo). Extra arguments are Hydra overrides passed to the run, e.g.
#   bash scripts/main_job.sh routing_replay=R3
# Env: STEPS (default 3), ROLLOUT_QUANT=fp8, RUN_DIR (default runs/cpu_demo), VERBOSE=1 -- see scripts/demo_cpu.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/verl-stable doctor --quiet
bash scripts/demo_cpu.sh "$@"
