#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, check the plugin loads (driver + Ray worker), then run the
# CPU lab's default grid -- the lab's most robust finding (docs/lab/search.md, entry 18): off-policy N=4 MiniRL + R3
# trains stably at the paper's sizing, beside on-policy MiniRL at the same gradient steps, two seeds each, every run
# one `python -m verl_stable.main` through verl's real trainer on a small Qwen3-MoE -- and write the report with its
# plots. Prints where the report is. Extra arguments go to `verl-stable lab`, e.g.
#   bash scripts/main_job.sh --full                        # the whole grid, longer runs
#   bash scripts/main_job.sh --variants minirl,n2_r2 --steps 24
# Env: OUT (default runs/lab). One verl run instead of the lab: bash scripts/demo_cpu.sh.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lab_cpu.sh" "$@"
