#!/usr/bin/env bash
# The CPU lab: set up .venv, check the plugin loads (driver + Ray worker), then run the CPU
# lab -- the paper's comparisons as runs of `python -m verl_stable.main` through verl's real trainer (tiny MoE,
# hf_cpu rollout, FSDP2 engine over gloo) -- and write plots and a Markdown report. Prints where the report is.
# Extra arguments go to `verl-stable lab`, e.g.
#   bash scripts/lab_cpu.sh --quick                       # CI size (one variant x 4 gradient steps, one seed)
#   bash scripts/lab_cpu.sh --full                        # the whole grid, longer runs
#   bash scripts/lab_cpu.sh --variants minirl,n4_r2 --steps 12
# scripts/main_job.sh runs this script.
# Env: OUT (default runs/lab). One run of the demo instead: bash scripts/demo_cpu.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/verl-stable doctor --quiet
export RAY_DEDUP_LOGS="${RAY_DEDUP_LOGS:-1}" TOKENIZERS_PARALLELISM=false
exec .venv/bin/verl-stable lab --out "${OUT:-runs/lab}" "$@"
