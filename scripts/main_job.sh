#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, check the plugin loads (driver + Ray worker), then run
# the demo of verl-stable's losses inside verl (the end-to-end CPU run once it is available).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/verl-stable doctor
.venv/bin/python benchmarks/bench_loss.py --repeats 10
